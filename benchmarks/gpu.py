"""Device benchmark: what one accelerator (or, small, the CPU) does with this platform.

    python benchmarks/gpu.py [--products 100000] [--ladder-products 2000]
        [--config fast] [--device auto] [--image-size 224] [--work-dir DIR] [--compile]

On a GPU machine (``--device auto`` picks CUDA), in one run:

1. generates a synthetic catalog of ``--products`` products with photos;
2. times the parts of feeding the image encoder: JPEG decode + resize per process
   (``decode``), a host-to-device copy of the decoded pixels from pinned memory
   (``copy``; CUDA only) and the image encoder alone on random pixels (``kernels``;
   ``--compile`` adds a ``torch.compile``d row on CUDA);
3. image feature extraction into an empty feature cache (images/s) and end-to-end catalog
   embedding from files (products/s), sampling GPU utilisation while it embeds;
4. stage 1 and stage 2 epoch times of the config on a ``--ladder-products`` catalog,
   and the total of the 7-model synthetic ladder (``fusion-model benchmark``, core).

Each end-to-end row says what bounds it: the slowest of its parts (decode across the
decode workers, copies, kernels), or ``Python`` when it runs at under half of that part's
rate (the time goes to what is not measured as a part). On the CPU it runs the same code
at small sizes (``--products 200 --ladder-products 300 --config tiny``: the e2e suite
runs it so that it keeps working); its numbers are not GPU numbers.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from fusion_model.config import load_config
from fusion_model.data.catalog import load_catalog
from fusion_model.data.synthetic import generate_synthetic_catalog
from fusion_model.engines import resolve_runtime
from fusion_model.features import image_bottom_features, load_images
from fusion_model.inference import embed_catalog
from fusion_model.models.towers import TwoTower

log = logging.getLogger("gpu_bench")


def decode_rate(uris: list[str], size: int, seconds: float = 3.0) -> float:
    """Photos/s one process decodes and resizes (one thread: a decode worker's rate)."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        load_images(uris[:64], size, workers=1)
        done += len(uris[:64])
    return done / (time.perf_counter() - started)


def copy_rate(size: int, device: str, batch: int = 256) -> float | None:
    """Decoded images/s a pinned host-to-device copy moves (None on the CPU)."""
    if torch.device(device).type != "cuda":
        return None
    pixels = torch.zeros(batch, size, size, 3, dtype=torch.uint8).pin_memory()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(20):
        pixels.to(device, non_blocking=True)
    torch.cuda.synchronize()
    return 20 * batch / (time.perf_counter() - started)


def kernel_rate(model: TwoTower, runtime, batch: int, compiled: bool = False) -> float:
    """Images/s of the image encoder alone on random pixels already on the device."""
    encoder = model.image.to(runtime.device).eval()
    size = encoder.image_size
    pixels = torch.randn(batch, 3, size, size, device=runtime.device).contiguous(
        memory_format=torch.channels_last)
    run = torch.compile(lambda x: encoder.top(encoder.bottom(x))) if compiled \
        else (lambda x: encoder.top(encoder.bottom(x)))
    with torch.no_grad(), runtime.autocast():
        run(pixels)  # warm (and compile)
        synchronize(runtime.device)
        started, count = time.perf_counter(), 0
        while time.perf_counter() - started < 3.0:
            run(pixels)
            count += batch
        synchronize(runtime.device)
    return count / (time.perf_counter() - started)


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Utilisation:
    """GPU utilisation sampled every 0.2 s in a thread (NVML through torch); None on CPU."""

    def __init__(self, device: str):
        self.device, self.samples = device, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.samples.append(torch.cuda.utilization(torch.device(self.device)))
            except Exception:  # noqa: BLE001 - no NVML: no samples
                return

    def __enter__(self):
        if torch.device(self.device).type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def bound(rate: float, parts: dict[str, float | None]) -> str:
    """The slowest measured part, or Python when the rate is under half of it."""
    known = {name: value for name, value in parts.items() if value}
    slowest = min(known, key=known.get)
    return "Python" if rate < 0.5 * known[slowest] else slowest


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def train_epochs(catalog_uri: str, config_name: str, device: str, work: Path) -> dict:
    """Seconds per epoch of stage 1 and stage 2 (one epoch each, evaluation included)."""
    from fusion_model.training.trainer import train

    config = load_config(config_name, [f"train.cache_dir={work / 'cache'}",
                                       f"runtime.device={device}", "train.stage1.epochs=1",
                                       "train.stage2.epochs=1"])
    catalog = load_catalog(catalog_uri)
    train(catalog, config, work / "epochs", progress=False)  # fills the feature cache
    result = train(catalog, config, work / "epochs-timed", progress=False)
    return {"stage1": result.seconds.get("stage1", 0.0),
            "stage2": result.seconds.get("stage2", 0.0)}


def ladder_seconds(catalog_uri: str, config_name: str, device: str, work: Path) -> float:
    from fusion_model.benchmark import run_benchmark

    seconds, _ = timed(lambda: run_benchmark(
        catalog_uri, models=("core",), config_name=config_name,
        overrides=(f"train.cache_dir={work / 'cache'}", f"runtime.device={device}"),
        work_dir=str(work / "ladder"), progress=False))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--ladder-products", type=int, default=2000)
    parser.add_argument("--config", default="fast")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--work-dir")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu-bench-"))
    config = load_config(args.config, [f"train.cache_dir={work / 'cache'}",
                                       f"runtime.device={args.device}",
                                       "runtime.engine=torch"])
    runtime = resolve_runtime(config)
    cuda = runtime.device_type == "cuda"
    log.info("device %s (%s), precision %s", runtime.device,
             torch.cuda.get_device_name(runtime.device) if cuda else "CPU", runtime.precision)

    catalog_uri = str(work / "catalog")
    ladder_uri = str(work / "ladder-catalog")
    generated, _ = timed(lambda: generate_synthetic_catalog(
        catalog_uri, n_products=args.products, seed=1, progress=False,
        image_size=args.image_size))
    generate_synthetic_catalog(ladder_uri, n_products=args.ladder_products, seed=2,
                               progress=False)
    catalog = load_catalog(catalog_uri)
    uris = [u for u in catalog.products["image_uri"].tolist() if u]
    model = TwoTower(config).eval()
    size = model.image.image_size
    workers = os.cpu_count() or 1
    decode = decode_rate(uris, size)
    parts = {"decode": decode * workers, "copy": copy_rate(size, runtime.device),
             "kernels": kernel_rate(model, runtime, 256 if cuda else 16)}
    rows = [("generate the catalog", f"{args.products / generated:,.0f} products/s", "", "")]
    rows += [(f"decode + resize, 1 process (x{workers} workers)",
              f"{decode:,.0f} photos/s ({decode * workers:,.0f})", "", ""),
             ("host-to-device copy, pinned", f"{parts['copy']:,.0f} images/s"
              if parts["copy"] else "n/a (CPU)", "", ""),
             ("image encoder alone (kernels)", f"{parts['kernels']:,.0f} images/s", "", "")]
    if args.compile and cuda:
        rows.append(("image encoder, torch.compile",
                     f"{kernel_rate(model, runtime, 256, compiled=True):,.0f} images/s", "", ""))

    features_s, _ = timed(lambda: image_bottom_features(model.image, uris, str(work / "fill"),
                                                       runtime, batch_size=256 if cuda else 16,
                                                       progress=False))
    rate = len(uris) / features_s
    rows.append(("image features into an empty cache", f"{rate:,.0f} images/s", "",
                 bound(rate, parts)))
    with Utilisation(runtime.device) as busy:
        embedded_s, _ = timed(lambda: embed_catalog(model, catalog, cache_dir=None,
                                                    batch_size=512 if cuda else 64,
                                                    progress=False, engine="torch"))
    rate = args.products / embedded_s
    utilisation = busy.median()
    rows.append(("catalog embedding from files", f"{rate:,.0f} products/s",
                 f"{utilisation:.0f}%" if utilisation is not None else "n/a",
                 bound(rate, parts)))
    epochs = train_epochs(ladder_uri, args.config, args.device, work)
    rows.append(("stage 1 epoch (evaluation included)", f"{epochs['stage1']:.1f} s", "", ""))
    rows.append(("stage 2 epoch (evaluation included)", f"{epochs['stage2']:.1f} s", "", ""))
    ladder = ladder_seconds(ladder_uri, args.config, args.device, work)
    rows.append((f"7-model ladder, {args.ladder_products:,} products",
                 f"{ladder:.0f} s", "", ""))

    print(f"\n| {runtime.device} ({args.config}, {runtime.precision}, {args.products:,} "
          "products) | rate | GPU utilisation (median) | bound by |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
