"""Scale benchmark: the lifecycle on synthetic catalogs of growing size, a step per process.

    python benchmarks/scale.py [--sizes 10000,40000,160000] [--config tiny]
        [--image-size 64] [--judged-per-query 50] [--queries 2000] [--work-dir DIR]
        [--steps generate,validate,train,register,index,gate,promote]
        [--index-server none|lite] [--force-promote]

Each size gets a synthetic catalog (small photos; a judged pool of ``--judged-per-query``
products per query, so that judgments do not grow with the catalog, as a shop's do not)
and runs the pipeline steps that the Airflow DAG runs as tasks (``fusion_model.pipelines
.steps``): validate, train (both stages, feature cache fill included), register, index
(embed and write to Milvus Lite), gate and promote. Each step runs in a fresh process, as
a task does on a worker, and reports its wall time, products per second and peak resident
memory (``wait4``'s ``ru_maxrss`` of that process alone). The table puts the sizes side by
side with the ratio of the largest to the smallest per step: flat memory reads 1.0x, and
a time per product that does not grow reads 1.0x too. Each step's resident memory is
also sampled once a second into ``<work>/<size>/<step>.rss.tsv`` beside its log, to see
which phase holds the peak.

``--index-server lite`` runs the index in a ``milvus-lite server`` process beside the steps
(as a Milvus server is in production), so the index, gate and promote steps' peak RSS is
their own and not the collection's; the server's own peak is reported as ``milvus``.
Without it (``none``), Milvus Lite runs inside each step's process.

The ``tiny`` config (random-init encoders, fusion_model/models/tiny.py) stands in for the
real encoders: this measures the platform's overhead (tables, caches, indexes, registry),
not encoder FLOPs, which grow linearly by construction (benchmarks/throughput.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("scale")
STEPS = ("generate", "validate", "train", "register", "index", "gate", "promote")


def overrides_for(work: Path, index_uri: str | None = None) -> list[str]:
    """Everything a lifecycle writes, kept under one work directory."""
    return [f"train.cache_dir={work / 'cache'}", f"index.uri={index_uri or work / 'milvus.db'}",
            f"registry.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            f"registry.artifact_location={work / 'artifacts'}"]


def run_step(step: str, work: Path, args: argparse.Namespace) -> dict:
    """One step in this process (the child side); returns what later steps need."""
    from fusion_model.pipelines import steps

    state_file = work / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    catalog, config = str(work / "catalog"), args.config
    overrides = overrides_for(work, args.index_uri)
    if step == "generate":
        from fusion_model.data.synthetic import generate_synthetic_catalog

        generate_synthetic_catalog(catalog, n_products=args.size, n_queries=args.queries,
                                   judged_per_query=args.judged_per_query,
                                   image_size=args.image_size, progress=False)
    elif step == "validate":
        state["validate"] = steps.validate(catalog, str(work / "validation"))
    elif step == "train":
        state["train"] = steps.train(catalog, str(work / "run"), config, overrides)
    elif step == "register":
        state["register"] = steps.register(str(work / "run"), catalog, config, overrides)
    elif step == "index":
        state["index"] = steps.index(state["register"]["version"], catalog, config, overrides)
    elif step == "gate":
        state["gate"] = steps.gate(state["register"]["version"], catalog, config, overrides,
                                   force_promote=args.force_promote)
    elif step == "promote":
        state["promote"] = steps.promote_or_reject(state["register"]["version"],
                                                   state["gate"], config, overrides)
    state_file.write_text(json.dumps(state, default=str))
    return state


def measure(step: str, work: Path, args: argparse.Namespace) -> dict:
    """Run ``step`` in a child process: wall seconds and its own peak RSS (MB)."""
    command = [sys.executable, __file__, "--child", step, "--work-dir", str(work),
               "--size", str(args.size), "--config", args.config,
               "--queries", str(args.queries), "--image-size", str(args.image_size),
               "--judged-per-query", str(args.judged_per_query)]
    if args.force_promote:
        command.append("--force-promote")
    if args.index_uri:
        command += ["--index-uri", args.index_uri]
    started = time.perf_counter()
    with open(work / f"{step}.log", "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        sampler = RssTimeline(child.pid, work / f"{step}.rss.tsv")
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
        sampler.stop()
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"step {step} at {args.size} products failed (exit {code}); see "
                         f"{work / f'{step}.log'}")
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024,
            "per_second": args.size / seconds, "peak_at": sampler.peak_at()}


class RssTimeline(threading.Thread):
    """Samples a child's resident memory once a second into ``<step>.rss.tsv`` (UTC time,
    seconds since start, MB), so that a step's peak can be matched to its log lines."""

    def __init__(self, pid: int, path: Path, every: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.path, self.every = pid, path, every
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()

    def run(self) -> None:
        started = time.time()
        with open(self.path, "w") as out:
            while not self._done.wait(self.every):
                try:
                    status = Path(f"/proc/{self.pid}/status").read_text()
                    mb = int(status.split("VmRSS:")[1].split()[0]) / 1024
                except (OSError, IndexError, ValueError):
                    continue
                now = time.time()
                self.samples.append((now - started, mb))
                out.write(f"{time.strftime('%H:%M:%S', time.gmtime(now))}\t"
                          f"{now - started:.0f}\t{mb:.0f}\n")
                out.flush()

    def stop(self) -> None:
        self._done.set()
        self.join()

    def peak_at(self) -> float | None:
        """Seconds from the start to the highest sampled RSS (None if never sampled)."""
        return max(self.samples, key=lambda s: s[1])[0] if self.samples else None


def table(results: dict[int, dict[str, dict]], steps: list[str]) -> str:
    """Markdown: per step, per size time, products/s and peak RSS; ratios last/first."""
    sizes = sorted(results)
    head = ["step", *(f"{s:,}: s / prod/s / MB" for s in sizes),
            f"time/product {sizes[-1]:,} vs {sizes[0]:,}", f"peak RSS {sizes[-1]:,} vs "
            f"{sizes[0]:,}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in steps:
        cells = []
        for size in sizes:
            r = results[size].get(step)
            if r and not r["seconds"]:  # the index server: its peak only
                cells.append(f"- / - / {r['peak_mb']:,.0f}")
            else:
                cells.append(f"{r['seconds']:.1f} / {r['per_second']:,.0f} / "
                             f"{r['peak_mb']:,.0f}" if r else "-")
        first, last = results[sizes[0]].get(step), results[sizes[-1]].get(step)
        if first and last and len(sizes) > 1:
            per_product = (f"{(last['seconds'] / sizes[-1]) / (first['seconds'] / sizes[0]):.2f}x"
                           if first["seconds"] else "-")
            cells += [per_product, f"{last['peak_mb'] / first['peak_mb']:.2f}x"]
        else:
            cells += ["-", "-"]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_size(work: Path, steps: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Every step at one size, each in its own process."""
    measured = {}
    for step in steps:
        if step == "generate" and (work / "catalog" / "catalog.json").exists():
            log.info("%d products: catalog already generated", args.size)
            continue
        measured[step] = measure(step, work, args)
        log.info("%d products, %s: %s", args.size, step, measured[step])
    return measured


@contextlib.contextmanager
def index_server(kind: str, work: Path):
    """(URI, peak RSS reader) of a ``milvus-lite server`` for ``lite``; (None, None)
    for ``none`` (Milvus Lite in each step's process)."""
    if kind == "none":
        yield None, None
        return
    from fusion_model.index.standalone import lite_server

    with lite_server(work / "milvus-lite") as uri:
        port = uri.rsplit(":", 1)[1]
        yield uri, lambda: _peak_mb_of(f"--port {port}")


def _peak_mb_of(command_part: str) -> float:
    """VmHWM (peak RSS) of the process whose command line holds ``command_part``."""
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if command_part in command and "server" in command:
                status = (proc / "status").read_text()
                return int(status.split("VmHWM:")[1].split()[0]) / 1024
        except (OSError, IndexError, ValueError):
            continue
    return float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,40000,160000")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--judged-per-query", type=int, default=50)
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--work-dir", default="runs/scale")
    parser.add_argument("--index-server", choices=("none", "lite"), default="none",
                        help="lite: a milvus-lite server process holds the collections")
    parser.add_argument("--output", help="write the results as JSON here too")
    parser.add_argument("--force-promote", action="store_true",
                        help="promote whatever the gate finds (the tiny encoders learn "
                             "little on large synthetic catalogs; this measures the promotion "
                             "path itself)")
    parser.add_argument("--index-uri", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.child:
        run_step(args.child, Path(args.work_dir), args)
        return 0
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    results: dict[int, dict[str, dict]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        work = Path(args.work_dir) / f"{size}"
        work.mkdir(parents=True, exist_ok=True)
        args.size = size
        with index_server(args.index_server, work) as (uri, server_peak_mb):
            args.index_uri = uri
            results[size] = run_size(work, steps, args)
            if uri:
                results[size]["milvus"] = {"seconds": 0.0, "per_second": 0.0,
                                           "peak_mb": server_peak_mb()}
    if args.index_server != "none":
        steps.append("milvus")
    print(table(results, steps))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
