"""Catalog embedding throughput: naive per-product loop vs the batched path, side by side.

    python benchmarks/throughput.py --catalog CATALOG_DIR [--products 512] [--batch 128]

Both paths embed the same products end to end from files (read + decode the photo,
tokenize, text encoder, image encoder, fusion head) with the default fusion model:

- naive:   one product at a time, fp32, NCHW (what a first implementation does)
- batched: batches of products, photos decoded in threads and prefetched, bf16 autocast,
           channels_last CNN chunks of 16 (fusion_model.inference.embed_catalog)

It also measures the machine's matmul FLOP/s (fp32 and bf16) and reports the share of it
that the image encoder reaches in the batched path.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from fusion_model.config import load_config
from fusion_model.data.catalog import load_catalog
from fusion_model.features import decode_image, product_text
from fusion_model.inference import embed_catalog
from fusion_model.models.towers import TwoTower
from fusion_model.storage import read_bytes


def matmul_flops(dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return 2 * size ** 3 * done / (time.perf_counter() - start)


def image_encoder_flops(model: TwoTower) -> float:
    """FLOPs of one 224x224 image through the whole CNN (bottom + top)."""
    pixels = torch.zeros(1, 3, model.image.image_size, model.image.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.image.top(model.image.bottom(pixels))
    return float(counter.get_total_flops())


def naive(model: TwoTower, catalog) -> float:
    """Per-product loop, fp32, NCHW; returns products/s."""
    products = catalog.products
    start = time.perf_counter()
    for row in products.itertuples():
        image = None
        if row.image_uri is not None:
            image = decode_image(read_bytes(row.image_uri), model.image.image_size)
        text = product_text(row.title, row.description)
        with torch.no_grad():
            hidden, mask = model.text.bottom([text])
            tokens = model.text.top(hidden, mask)
            features = None
            if image is not None:
                pixels = model.image.preprocess([image]).contiguous()
                features = model.image.bottom(pixels)
            else:
                features = torch.zeros(1, 192, 7, 7)
            model.products_from_features(tokens, mask, features,
                                         torch.tensor([image is not None]))
    return len(products) / (time.perf_counter() - start)


def batched(model: TwoTower, catalog, batch_size: int) -> float:
    start = time.perf_counter()
    embed_catalog(model, catalog, cache_dir=None, batch_size=batch_size, progress=False)
    return len(catalog.products) / (time.perf_counter() - start)


def image_only_rate(model: TwoTower, count: int = 64, chunk: int = 16) -> float:
    """Images/s of the CNN alone in the batched configuration (bf16, channels_last)."""
    pixels = torch.randn(chunk, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.image.top(model.image.bottom(pixels))
        start = time.perf_counter()
        for _ in range(count // chunk):
            model.image.top(model.image.bottom(pixels))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--products", type=int, default=512)
    parser.add_argument("--naive-products", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    catalog = load_catalog(args.catalog)
    subset = dataclasses.replace(catalog, products=catalog.products.head(args.products))
    small = dataclasses.replace(catalog, products=catalog.products.head(args.naive_products))
    fp32 = TwoTower(load_config("default", ["train.precision=fp32"])).eval()
    bf16 = TwoTower(load_config("default")).eval()
    bf16.load_state_dict(fp32.state_dict())
    rows = {
        "naive (1 product, fp32, NCHW)": naive(fp32, small),
        f"batched ({args.batch}/batch, bf16, channels_last, prefetch)":
            batched(bf16, subset, args.batch),
    }
    flops_per_image = image_encoder_flops(bf16)
    peak = {"fp32": matmul_flops(torch.float32), "bf16": matmul_flops(torch.bfloat16)}
    cnn_rate = image_only_rate(bf16)
    base = next(iter(rows.values()))
    print(f"threads={torch.get_num_threads()}  catalog={args.catalog}")
    print(f"{'path':<58}{'products/s':>12}{'speed-up':>10}")
    for name, rate in rows.items():
        print(f"{name:<58}{rate:>12.1f}{rate / base:>9.1f}x")
    achieved = flops_per_image * cnn_rate
    print(f"\nimage encoder: {flops_per_image / 1e9:.2f} GFLOP/image, {cnn_rate:.1f} images/s "
          f"-> {achieved / 1e9:.1f} GFLOP/s")
    print(f"matmul peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} "
          f"GFLOP/s -> image encoder reaches {achieved / peak['bf16']:.1%} of bf16 matmul, "
          f"{achieved / peak['fp32']:.1%} of fp32 matmul")


if __name__ == "__main__":
    main()
