"""Catalog embedding throughput: naive loop, PyTorch batched and OpenVINO batched, side by side.

    python benchmarks/throughput.py --catalog CATALOG_DIR [--products 512] [--batch 128]
        [--repeats 3] [--allow-busy]

Every path embeds the same products end to end from files (read + decode the photo,
tokenize, text encoder, image encoder, fusion head) with the default fusion model:

- naive:    one product at a time, fp32, NCHW (what a first implementation does)
- torch:    batches of products, photos decoded in threads and prefetched, the config's
            autocast (bf16 where native), channels_last CNN chunks of 16
            (fusion_model.inference.embed_catalog with runtime.engine=torch)
- openvino: the same batches through the product tower converted with OpenVINO
            (runtime.engine=openvino; converted before timing, as a registered model is),
            run as a pipeline of throughput streams while one thread decodes and prepares
            the next batches (FrozenTowers.embed_product_batches)

A second table times filling an empty feature cache (text and image bottoms, what the
first training run over a catalog does) on each engine. Each path runs in a process of
its own (``IsolatedRun``), warmed by one untimed round, as a job that embeds a catalog
does: in one shared process every OpenVINO round followed a PyTorch round and ran 20-28%
slower for it. The paths run interleaved, ``--repeats`` rounds, and the tables give min
and median. It also reports single-query encoding latency (p50, p95) of the query tower
on each engine, the machine's matmul FLOP/s and the share of it the image encoder
reaches. The benchmark refuses to start when other processes keep the CPU busy, and
marks its tables INVALID (exit status 3) when they used more than 10% of it during the
run (``fusion_model.timing.CpuShare``): contention slows the naive loop and the batched
path differently, so a ratio taken beside another job is not a property of the code.
``--allow-busy`` runs and prints anyway.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fusion_model.config import load_config
from fusion_model.data.catalog import load_catalog
from fusion_model.engines import (
    engine_cache_root,
    image_bottom,
    resolve_runtime,
    text_bottom,
    towers_for,
)
from fusion_model.features import (
    decode_image,
    image_bottom_features,
    product_text,
    text_bottom_features,
)
from fusion_model.inference import embed_catalog
from fusion_model.models.towers import TwoTower
from fusion_model.runtime import autocast, native_bf16
from fusion_model.storage import read_bytes
from fusion_model.timing import CpuShare, IsolatedRun, interleaved, latencies, summary

log = logging.getLogger("throughput")


def matmul_flops(dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return 2 * size ** 3 * done / (time.perf_counter() - start)


def image_encoder_flops(encoder: nn.Module) -> float:
    """FLOPs of one image at the encoder's size through the whole CNN (bottom + top)."""
    pixels = torch.zeros(1, 3, encoder.image_size, encoder.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder.top(encoder.bottom(pixels))
    return float(counter.get_total_flops())


def naive(model: TwoTower, catalog) -> float:
    """Per-product loop, fp32, NCHW; returns products/s."""
    products = catalog.products
    size = model.image.image_size
    with torch.no_grad():  # a product without a photo: zeros of the encoder's own shape
        no_photo = torch.zeros_like(model.image.bottom(model.image.preprocess(
            [np.zeros((size, size, 3), np.uint8)])))
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
                features = no_photo
            model.products_from_features(tokens, mask, features,
                                         torch.tensor([image is not None]))
    return len(products) / (time.perf_counter() - start)


def batched(model: TwoTower, catalog, batch_size: int, engine: str) -> float:
    start = time.perf_counter()
    embed_catalog(model, catalog, cache_dir=None, batch_size=batch_size, progress=False,
                  engine=engine)
    return len(catalog.products) / (time.perf_counter() - start)


def cache_fill(model: TwoTower, catalog, engine: str) -> float:
    """Products/s filling an empty feature cache (text and image bottoms), as training's
    first run over a catalog does."""
    texts = [product_text(t, d) for t, d in zip(catalog.products["title"],
                                                catalog.products["description"])]
    uris = catalog.products["image_uri"].tolist()
    with tempfile.TemporaryDirectory() as cache:
        # converted engines persist across runs (keyed by weights): only features are new
        engines_dir = engine_cache_root(model.config.train.cache_dir)
        engines_dir.mkdir(parents=True, exist_ok=True)
        engine_cache_root(cache).symlink_to(engines_dir, target_is_directory=True)
        start = time.perf_counter()
        runtime = resolve_runtime(model.config, engine)
        text_bottom_features(model.text, texts, model.config.text.max_length, cache, runtime,
                             progress=False)
        image_bottom_features(model.image, uris, cache, runtime, progress=False)
        return len(texts) / (time.perf_counter() - start)


def image_only_rate(encoder: nn.Module, precision: str, count: int = 64,
                    chunk: int = 16) -> float:
    """Images/s of the CNN alone in the batched configuration (``precision``'s autocast:
    bf16 where native, else fp32; channels_last)."""
    size = encoder.image_size
    pixels = torch.randn(chunk, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(precision):
        encoder.top(encoder.bottom(pixels))
        start = time.perf_counter()
        for _ in range(count // chunk):
            encoder.top(encoder.bottom(pixels))
    return count / (time.perf_counter() - start)


def refuse_if_busy(allow_busy: bool, seconds: float = 3.0) -> None:
    """Exit 2 when other processes use the CPU right now (unless ``allow_busy``)."""
    with CpuShare() as idle:
        time.sleep(seconds)
    if idle.others is not None and idle.others > 0.10 and not allow_busy:
        sys.exit(f"the machine is busy: other processes used {idle.others:.0%} of the CPU "
                 f"over {seconds:.0f} s (load average {idle.load_after:.2f}); run on an "
                 "idle machine, or pass --allow-busy to run and mark the results")


def exit_on_invalid(share: CpuShare, allow_busy: bool) -> None:
    """Print the run's verdict; exit 3 when other processes made it INVALID."""
    verdict = share.verdict()
    print(f"\n{verdict}")
    if verdict.startswith("INVALID") and not allow_busy:
        sys.exit(3)


def query_latency_ms(model: TwoTower, queries: list[str], engine: str
                     ) -> tuple[float, float]:
    """p50 and p95 of encoding one query at a time on ``engine``, in milliseconds."""
    texts = iter(queries * 3)
    towers = towers_for(model, engine)
    with torch.no_grad():
        samples = latencies(lambda: towers.embed_queries([next(texts)]), len(queries))
    p50, p95 = np.percentile(np.array(samples) * 1000, [50, 95])
    return float(p50), float(p95)


def print_rates(rates: dict[str, list[float]]) -> None:
    base = summary(next(iter(rates.values())))[1]
    print(f"{'path':<64}{'min/s':>9}{'median/s':>10}{'speed-up':>10}")
    for name, values in rates.items():
        low, median = summary(values)
        print(f"{name:<64}{low:>9.1f}{median:>10.1f}{median / base:>9.1f}x")
    print("products/s over interleaved rounds; speed-up = median / the first row's median")


def path_setup(kind: str, engine: str, catalog_dir: str, products: int,
               batch: int) -> Callable[[], float]:
    """Build one path in its worker process (``IsolatedRun``): the model, its conversions
    (as a registered model carries them) and one untimed round; returns the round."""
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    catalog = load_catalog(catalog_dir)
    subset = dataclasses.replace(catalog, products=catalog.products.head(products))
    if kind == "naive":
        model = TwoTower(load_config("default", ["train.precision=fp32"])).eval()
        run = functools.partial(naive, model, subset)
    else:
        model = TwoTower(load_config("default")).eval()
        if engine == "openvino":
            towers_for(model, engine).product_pipeline()
            settings = (resolve_runtime(model.config, engine), model.config.train.cache_dir)
            text_bottom(model.text, *settings), image_bottom(model.image, *settings)
        run = functools.partial(batched, model, subset, batch, engine) if kind == "batched" \
            else functools.partial(cache_fill, model, subset, engine)
    run()  # warm: a catalog job's first batches, not what it runs at
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--products", type=int, default=512)
    parser.add_argument("--naive-products", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--allow-busy", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    refuse_if_busy(args.allow_busy)
    torch.manual_seed(0)
    catalog = load_catalog(args.catalog)
    fp32 = TwoTower(load_config("default", ["train.precision=fp32"])).eval()
    bf16 = TwoTower(load_config("default")).eval()
    bf16.load_state_dict(fp32.state_dict())
    queries = catalog.queries["text"].head(args.queries).tolist()
    towers_for(bf16, "openvino").query_tower()  # what a registered model carries
    embeds = {
        "naive (1 product, fp32, NCHW)": ("naive", "torch", args.naive_products),
        f"torch batched ({args.batch}/batch, autocast, channels_last, prefetch)":
            ("batched", "torch", args.products),
        f"openvino batched ({args.batch}/batch, prefetch, streams)":
            ("batched", "openvino", args.products),
    }
    fills = {f"feature cache fill, {engine}": ("fill", engine, args.products)
             for engine in ("torch", "openvino")}
    paths = embeds | fills
    with contextlib.ExitStack() as workers:
        log.warning("starting %d worker processes (one per path, warmed by one round)",
                    len(paths))
        runs = {name: workers.enter_context(IsolatedRun(
            path_setup, kind, engine, args.catalog, count, args.batch))
            for name, (kind, engine, count) in paths.items()}
        with CpuShare() as share:
            for run in runs.values():
                run.share = share
            rates = interleaved({name: runs[name] for name in embeds}, args.repeats)
            fill_rates = interleaved({name: runs[name] for name in fills}, args.repeats)
            latency = {"torch fp32": query_latency_ms(fp32, queries, "torch"),
                       "torch autocast": query_latency_ms(bf16, queries, "torch"),
                       "openvino": query_latency_ms(bf16, queries, "openvino")}
            flops_per_image = image_encoder_flops(bf16.image)
            peak = {"fp32": matmul_flops(torch.float32)}
            if native_bf16():  # emulated bf16 matmul takes minutes on AVX2 and means nothing
                peak["bf16"] = matmul_flops(torch.bfloat16)
            cnn_rate = image_only_rate(bf16.image, bf16.config.train.precision)
    print(f"threads={torch.get_num_threads()}  catalog={args.catalog}  "
          f"repeats={args.repeats}  load average {share.load_before:.2f} -> "
          f"{share.load_after:.2f}")
    print_rates(rates)
    print()
    print_rates(fill_rates)
    for name, (p50, p95) in latency.items():
        print(f"query tower, one query ({name}): p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    achieved = flops_per_image * cnn_rate
    print(f"\nimage encoder: {flops_per_image / 1e9:.2f} GFLOP/image, {cnn_rate:.1f} images/s "
          f"-> {achieved / 1e9:.1f} GFLOP/s")
    for dtype, rate in peak.items():
        print(f"matmul peak {dtype}: {rate / 1e9:.0f} GFLOP/s -> the image encoder reaches "
              f"{achieved / rate:.1%} of it")
    exit_on_invalid(share, args.allow_busy)


if __name__ == "__main__":
    main()
