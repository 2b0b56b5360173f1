"""What a Milvus server does after a bulk write into a new collection, per write mode.

    python benchmarks/milvus_settle.py [--products 100000] [--watch 150] [--modes insert,upsert]
        [--repeats 1]

For each mode a fresh ``milvus-server`` (the real standalone server) gets a new HNSW
collection of ``--products`` random unit vectors (256-d, five text fields, batches of 512
as ``index.batch_size``), written through ``MilvusIndex.write_rows`` as inserts
(``overwrite=False``, what a build does for products the collection does not hold) or as
upserts (``overwrite=True``, what every build did before). Once the index covers every
row, i.e. when the platform would move the serving alias to the collection, one client
searches it (k=10 with the five fields, 50 searches/s at most) for ``--watch`` seconds while
the server's CPU is sampled: a table per 10 s window, then a summary row per run with the
server's CPU seconds from the first write to the end of the watch.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from fusion_model.index import milvus
from fusion_model.index.standalone import standalone_server

log = logging.getLogger("milvus_settle")
DIM, BATCH = 256, 512
FIELDS = ["category", "colour", "gender", "title", "image_uri"]


def server_processes() -> list[psutil.Process]:
    """The running Milvus server processes (the wrapper and ``milvus run standalone``)."""
    return [p for p in psutil.process_iter(["cmdline"]) if p.pid != os.getpid()
            and any(Path(arg).name in ("milvus", "milvus-server")
                    for arg in (p.info["cmdline"] or [])[:2])]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def write(index: milvus.MilvusIndex, name: str, products: int, overwrite: bool,
          rng: np.random.Generator) -> np.ndarray:
    """Write the collection in batches; returns its vectors."""
    vectors = rng.standard_normal((products, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"P{i:07d}" for i in range(products)]
    index.create_collection(name, DIM, FIELDS, "HNSW", "IP")
    for start in range(0, products, BATCH):
        rows = slice(start, start + BATCH)
        index.write_rows(name, ids[rows], vectors[rows], ["h"] * len(ids[rows]),
                         {f: [f"{f}{i % 17}" for i in range(start, start + len(ids[rows]))]
                          for f in FIELDS}, overwrite=overwrite)
    index.count(name)
    return vectors


def watch(index: milvus.MilvusIndex, name: str, queries: np.ndarray, seconds: float,
          window: float) -> list[dict]:
    """Per window: the server's cores, the searches done and their p50/p95 ms."""
    processes, windows, done = server_processes(), [], 0
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        opened, cpu_before, latencies = time.monotonic(), cpu_seconds(processes), []
        while time.monotonic() - opened < window:
            started = time.perf_counter()
            index.search(name, queries[done % len(queries)][None], 10, output_fields=FIELDS)
            latencies.append((time.perf_counter() - started) * 1000)
            done += 1
            time.sleep(0.02)
        latencies.sort()
        windows.append({"start": opened - began,
                        "cores": (cpu_seconds(processes) - cpu_before)
                        / (time.monotonic() - opened),
                        "searches": len(latencies), "p50": statistics.median(latencies),
                        "p95": latencies[int(0.95 * len(latencies))]})
    return windows


def run_mode(mode: str, products: int, seconds: float, window: float, work: Path) -> dict:
    rng = np.random.default_rng(0)
    shutil.rmtree(work / mode, ignore_errors=True)
    with standalone_server(work / mode) as uri, milvus.MilvusIndex.open(uri) as index:
        processes = server_processes()
        started, cpu_before = time.monotonic(), cpu_seconds(processes)
        vectors = write(index, f"settle_{mode}", products, mode == "upsert", rng)
        written = time.monotonic() - started
        index.wait_until_indexed(f"settle_{mode}", timeout=900)
        indexed = time.monotonic() - started
        log.info("%s: written in %.1f s, indexed after %.1f s", mode, written, indexed)
        queries = vectors[rng.choice(len(vectors), 2000)]
        windows = watch(index, f"settle_{mode}", queries, seconds, window)
        server_cpu = cpu_seconds(processes) - cpu_before
    return {"mode": mode, "written_s": written, "indexed_s": indexed, "windows": windows,
            "server_cpu_s": server_cpu}


def print_result(result: dict) -> None:
    print(f"\n{result['mode']}: written in {result['written_s']:.1f} s, index complete after "
          f"{result['indexed_s']:.1f} s; then, from that moment:")
    print("| from s | server cores | searches | p50 ms | p95 ms |\n|---|---|---|---|---|")
    for w in result["windows"]:
        print(f"| {w['start']:.0f} | {w['cores']:.2f} | {w['searches']} | {w['p50']:.2f} | "
              f"{w['p95']:.2f} |")


def print_summary(results: list[dict], window: float) -> None:
    print("\n| mode | written s | indexed s | server CPU s, from the first write | after "
          "indexing: server cores, mean (max) | seconds over 1 core | search p95 ms, median "
          "window (worst) |\n|---|---|---|---|---|---|---|")
    for r in results:
        cores = [w["cores"] for w in r["windows"]]
        p95 = [w["p95"] for w in r["windows"]]
        print(f"| {r['mode']} | {r['written_s']:.1f} | {r['indexed_s']:.1f} | "
              f"{r['server_cpu_s']:.0f} | {statistics.mean(cores):.2f} ({max(cores):.2f}) | "
              f"{window * sum(c > 1 for c in cores):.0f} | "
              f"{statistics.median(p95):.1f} ({max(p95):.1f}) |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--watch", type=float, default=150, help="seconds after indexing")
    parser.add_argument("--window", type=float, default=10)
    parser.add_argument("--modes", default="insert,upsert")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the modes, "
                        "interleaved")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="milvus-settle-"))
    results = [run_mode(mode, args.products, args.watch, args.window, work)
               for _ in range(args.repeats) for mode in args.modes.split(",")]
    for result in results:
        print_result(result)
    print_summary(results, args.window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
