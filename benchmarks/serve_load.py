"""Load test of ``fusion-model serve`` on loopback: concurrent clients, latency, errors,
and a forced promotion in the middle of the run.

    python benchmarks/serve_load.py [--products 100000] [--clients 32] [--seconds 30]
        [--backends lite,standalone] [--max-batch 1,32] [--query-cache 0,10000]
        [--sweep 2,4,8,16 [--sweep-seconds 10]] [--encoders real,zero-cost] [--work-dir DIR]
    python benchmarks/serve_load.py --rates 100,200 [--repeats 2 | --blocks 8] [--seconds 30] ...
    python benchmarks/serve_load.py --pool LOG [LOG ...]   # the paired blocks of runs, pooled

Set-up (cached in ``--work-dir``): a ``fast``-config champion v1 and a second version v2
trained on a small synthetic catalog (real MiniLM query tower, OpenVINO engine), so that
query encoding costs what it costs in production. For each backend, 100,000 products
(synthetic titles and attributes; vectors: the index benchmark's real MiniLM product
vectors through a fixed random projection to the model's 256 dimensions) are written into
one collection per version, recorded on the versions, and the serving alias points at
v1's. ``fusion-model serve`` then runs as its own process against the backend: Milvus Lite
through ``milvus-lite server`` (Milvus Lite allows one process per file) and the real
Milvus standalone server. Each backend and each ``--max-batch`` setting of the service (1:
every request searched alone; 32: concurrent searches merged, ``SearchBatcher``) gets a
fresh service, a 1-client run (latency without queueing), then ``--clients`` concurrent
clients (aiohttp on uvloop, one process) for ``--seconds``; halfway through, v2 is
promoted (serving alias, then the champion alias) and the service must follow it with 0
failed requests. Latency is measured at the client: HTTP, query encoding, ANN search and
the product metadata (title, attributes, photo URL). The service runs without its query
cache unless ``--query-cache`` says otherwise: the clients cycle through 1,000 queries, so
a cache would answer most of them. ``--sweep`` adds a run per number of clients between
the 1-client run and the loaded one (no promotion): the latency against concurrency curve,
which tells up to how many clients a latency goal holds. ``--encoders real,zero-cost`` adds,
per setting, a service whose query encoder costs nothing (random unit vectors,
``zero_cost_encoder_serve.py``): the ceiling of the HTTP service and the Milvus search
alone, which no cheaper query encoder could pass on the same machine.

``--rates`` measures what recording search events costs instead: open-loop runs at each
fixed arrival rate (a request is sent when due, whatever the answers; latency counts from
then), against a service with ``--events`` and one without, alternating, ``--repeats``
times (``--blocks N``: both services up at once, N pairs of blocks per rate, alternating,
so that a drifting machine moves both halves of a pair alike); 30% of the searches get a
click (``POST /events``; refused with logging off, so that both runs carry the same
requests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_bench import bench_data  # noqa: E402

from fusion_model.data.synthetic import (  # noqa: E402
    TextNoise,
    generate_synthetic_catalog,
    sample_products,
)
from fusion_model.index import milvus  # noqa: E402
from fusion_model.index.standalone import lite_server, standalone_server  # noqa: E402
from fusion_model.timing import machine_cpu_seconds, wait_until_quiet  # noqa: E402

log = logging.getLogger("serve_load")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
BATCH = 2000


def overrides(work: Path, uri: str) -> list[str]:
    return [f"train.cache_dir={work / 'cache'}", f"index.uri={uri}",
            f"registry.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            f"registry.artifact_location={work / 'artifacts'}", "index.keep_collections=20",
            "train.stage1.epochs=1", "train.stage2.epochs=1"]


def fusion_model(*argv: str, log_file: Path) -> None:
    with log_file.open("a") as out:
        subprocess.run([str(Path(sys.executable).with_name("fusion-model")), *argv],
                       stdout=out, stderr=subprocess.STDOUT, check=True)


def trained_versions(work: Path) -> None:
    """v1 (champion) and v2 on a 300-product catalog, once per work dir."""
    if (work / "versions.done").exists():
        return
    catalog = generate_synthetic_catalog(str(work / "catalog"), n_products=300,
                                         n_queries=60, seed=1, progress=False)
    lite = str(work / "setup-milvus.db")
    for version, seed in (("v1", 0), ("v2", 1)):
        log.info("training %s (fast config; a few minutes)", version)
        fusion_model("lifecycle", "--catalog", catalog, "--work-dir", str(work / version),
                     "--config", "fast", "--force-promote", *overrides(work, lite),
                     f"train.seed={seed}", log_file=work / "setup.log")
    (work / "versions.done").touch()


def load_collections(work: Path, uri: str, products: int, data: dict, tag: str) -> None:
    """100k-product collections for v1 and v2 on ``uri``, recorded on the versions (each
    measured run then starts from ``champion_back_to_v1``)."""
    from fusion_model.config import load_config
    from fusion_model.registry import registry
    from fusion_model.registry.tracking import configure

    config = load_config("fast", overrides(work, uri))
    configure(config.registry.resolved_tracking_uri())
    rng = np.random.default_rng(0)
    frame = sample_products(products, rng, TextNoise())
    photos = sorted(str(p) for p in (work / "catalog" / "images").glob("*.jpg"))
    projection = np.linalg.qr(rng.standard_normal((data["vectors"].shape[1], 256)))[0]
    vectors = data["vectors"] @ projection
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    fields = ["category", "colour", "gender", "title", "image_uri"]
    frame["image_uri"] = [photos[i % len(photos)] for i in range(products)]
    with milvus.MilvusIndex.open(uri) as index:
        for version in ("1", "2"):
            name = f"products_m{version}_load{products}_{tag}"
            if not index.has_collection(name) or index.count(name) != products:
                log.info("writing %s (%d products)", name, products)
                if index.has_collection(name):  # partly written: start again (inserts)
                    index.drop_collection(name)
                index.create_collection(name, 256, fields, "HNSW", "IP")
                for start in range(0, products, BATCH):
                    rows = slice(start, start + BATCH)
                    index.write_rows(name, frame["product_id"][rows].tolist(),
                                     vectors[rows], ["load"] * len(frame[rows]),
                                     {f: frame[f][rows].tolist() for f in fields},
                                     overwrite=False)
                index.count(name)
                compact(index, name)
            index.wait_until_indexed(name, timeout=900)
            candidate, _ = registry.candidate_for(config.registry.model_name, version)
            registry.tag_version(candidate, {"milvus_collection": name})


def champion_back_to_v1(work: Path, uri: str, products: int, tag: str) -> None:
    """The serving alias and the champion at v1 (each measured run promotes v2)."""
    from fusion_model.config import load_config
    from fusion_model.registry import registry

    config = load_config("fast", overrides(work, uri))
    with milvus.MilvusIndex.open(uri) as index:
        index.point_alias(config.index.alias, f"products_m1_load{products}_{tag}")
    registry.set_alias(registry.candidate_for(config.registry.model_name, "1")[0],
                       registry.CHAMPION)


def compact(index: milvus.MilvusIndex, name: str, timeout: float = 600) -> None:
    """Merge the bulk write's small segments now (the server would do it later, in the
    middle of the measurement, and then index the merged segment again)."""
    from pymilvus.exceptions import MilvusException

    try:
        job = index.compact(name)
    except MilvusException as exc:  # Milvus Lite has no compaction to wait for
        log.info("%s: no compaction (%s)", name, exc)
        return
    deadline = time.monotonic() + timeout
    while not index.compaction_done(job):
        if time.monotonic() > deadline:
            log.warning("%s: compaction still running after %.0f s", name, timeout)
            return
        time.sleep(2)


def settle(kind: str) -> None:
    """Start measuring once the server is done with its own work: after bulk writes a
    Milvus server compacts and re-indexes segments for minutes (up to 2 cores here), which
    measured 1-client p95 87 ms instead of ~20 and slowed the first half of the
    32-client run. The quiet window spans more than the server's compaction trigger
    interval (60 s): after 15 quiet seconds it still started compacting in the middle of
    two runs (the 32-client rate fell from 555 to 129-184 requests/s, ``cpu others``
    1.4 cores)."""
    waited = wait_until_quiet(window=75, timeout=900)
    if waited is None:
        log.warning("%s: the server still uses the CPU after 900 s; measuring anyway", kind)
    else:
        log.info("%s: server quiet after %.0f s", kind, waited)


def backend(kind: str, work: Path):
    """A Milvus URI that several processes can share."""
    if kind == "standalone":  # fresh: milvus-server 2.3 restarted on old data lost its
        shutil.rmtree(work / "standalone", ignore_errors=True)  # data node (flush failed)
        return standalone_server(work / "standalone")
    if kind == "lite":
        return lite_server(work / "lite")
    raise SystemExit(f"unknown backend {kind!r}: lite or standalone")


@contextlib.contextmanager
def service(work: Path, uri: str, log_file: Path, setting: dict[str, int | str]):
    import httpx

    port = free_port()
    command = [str(Path(sys.executable).with_name("fusion-model"))] \
        if setting["encoder"] == "real" else \
        [sys.executable, str(Path(__file__).with_name("zero_cost_encoder_serve.py"))]
    with log_file.open("w") as out:
        process = subprocess.Popen(
            [*command, "serve", "--port", str(port),
             "--no-access-log", "--follow-interval", "1", "--config", "fast",
             "--query-cache", str(setting["query_cache"]),
             "--max-batch", str(setting["max_batch"]),
             "--encoder-streams", str(setting.get("encoder_streams", 1)),
             *(["--events", str(setting["events"])] if setting.get("events") else []),
             *overrides(work, uri)], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    deadline = time.monotonic() + 180
    try:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"fusion-model serve did not get ready; see {log_file}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


async def run_clients(url: str, queries: list[str], clients: int, seconds: float,
                      at_half=None) -> list[tuple[float, float, int, str]]:
    """(start, latency s, status, version) per request from ``clients`` closed loops.
    aiohttp, not httpx: at 215 requests/s an httpx client used 68% of a core here, CPU
    the service and Milvus need on a 2-core machine; aiohttp on uvloop uses about 1/10."""
    import aiohttp

    records: list[tuple[float, float, int, str]] = []
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(
            url, connector=aiohttp.TCPConnector(limit=clients),
            timeout=aiohttp.ClientTimeout(total=30)) as http:
        async def client(number: int) -> None:
            i = number
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    async with http.get("/search", params={"q": queries[i % len(queries)],
                                                           "k": "10"}) as response:
                        status = response.status
                        version = (await response.json()).get("version", "") \
                            if status == 200 else (await response.text())[:200]
                except (TimeoutError, aiohttp.ClientError) as error:
                    status, version = 0, f"{type(error).__name__}: {error}"
                records.append((started, time.perf_counter() - started, status, version))
                i += clients

        if at_half is not None:
            asyncio.get_running_loop().call_later(seconds / 2, lambda: threading.Thread(
                target=at_half, daemon=True).start())
        await asyncio.gather(*(client(n) for n in range(clients)))
    return records


async def open_loop(url: str, queries: list[str], rate: float, seconds: float,
                    click_share: float = 0.3) -> list[tuple[float, float, int, str]]:
    """(start, latency s, status, version) per search sent at a fixed ``rate`` whatever
    the answers (open loop: a slow answer delays no later request, and latency counts from
    when the request was due). With event logging on, ``click_share`` of the searches are
    followed by a click on their first result (``POST /events``, not timed; sent with
    logging off too, where it is refused, so that both carry the same requests)."""
    import aiohttp

    records: list[tuple[float, float, int, str]] = []
    rng = random.Random(0)
    async with aiohttp.ClientSession(
            url, connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=30)) as http:
        async def one(due: float, query: str, click: bool) -> None:
            try:
                async with http.get("/search", params={"q": query, "k": "10"}) as response:
                    status = response.status
                    body = await response.json() if status == 200 else {}
                latency = time.perf_counter() - due
                if click and body.get("hits"):  # logging off: the same request, a 404
                    async with http.post("/events", json={
                            "search_id": body.get("search_id") or "off", "kind": "click",
                            "product_id": body["hits"][0]["product_id"], "position": 1}):
                        pass
                records.append((due, latency, status, body.get("version", "")))
            except (TimeoutError, aiohttp.ClientError) as error:
                records.append((due, time.perf_counter() - due, 0, type(error).__name__))

        started = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due, queries[i % len(queries)],
                                                 rng.random() < click_share)))
        await asyncio.gather(*tasks)
    return records


def measure_logging(args: argparse.Namespace, uri: str, queries: list[str], kind: str,
                    encoder_streams: int = 1) -> dict[str, dict[str, float]]:
    """Open-loop runs at each of ``args.rates``, with event logging off and on, in
    alternating order, ``args.repeats`` times; a fresh service per setting and repeat."""
    found: dict[str, list[dict[str, float]]] = {}
    for repeat in range(args.repeats):
        for events in (("off", "on") if repeat % 2 == 0 else ("on", "off")):
            setting = open_loop_setting(
                encoder_streams=encoder_streams,
                events=args.work_dir / f"events-{repeat}" if events == "on" else None)
            log_file = args.work_dir / \
                f"serve-{kind}-streams{encoder_streams}-events-{events}-{repeat}.log"
            with service(args.work_dir, uri, log_file, setting) as url:
                uvloop.run(run_clients(url, queries, 4, 5))  # warm up
                for rate in args.rates:
                    row = open_loop_run(args, url, queries, rate)
                    found.setdefault(f"{rate}/s, events {events}", []).append(row)
                    log.info("%s %d/s events %s: p50 %.1f ms, p99 %.1f ms, %d errors; "
                             "service %.2f CPU ms and %.4f full GCs per search, %.1f "
                             "searches per batch", kind, rate, events, row["p50 ms"],
                             row["p99 ms"], row["errors"], row["cpu ms/search"],
                             row["gc2/search"], row["per batch"])
    return _over_repeats(found)


def measure_logging_blocks(args: argparse.Namespace, uri: str, queries: list[str], kind: str,
                           encoder_streams: int = 1) -> dict[str, dict[str, float]]:
    """Both services up at once, one with event logging and one without; per rate
    ``args.blocks`` pairs of ``args.seconds`` open-loop blocks, one on each service, the
    order alternating. A machine that drifts (a noisy neighbour, memory reclaim) moves
    both halves of a pair alike, where fresh services one after the other saw it as an
    effect. Adds, per rate, what logging adds to the p50: the median of the pairs' on/off
    ratios (one stalled block does not move it) with its bootstrap CI over pairs."""
    found = paired_blocks(args, uri, queries, kind, {
        "events off": open_loop_setting(encoder_streams=encoder_streams, events=None),
        "events on": open_loop_setting(encoder_streams=encoder_streams,
                                       events=args.work_dir / "events-blocks")})
    rows = _over_repeats(found)
    for rate in args.rates:
        rows[f"{rate}/s, events on"] |= _added(found[f"{rate}/s, events off"],
                                               found[f"{rate}/s, events on"])
    return rows


def compare_streams_blocks(args: argparse.Namespace, uri: str, queries: list[str],
                           kind: str) -> None:
    """Paired blocks of a 1-stream and a 2-stream service, both logging: prints per rate
    the p50 and p99 of each and what 2 streams change in the p50."""
    events = args.work_dir / "events-blocks"
    found = paired_blocks(args, uri, queries, kind, {
        "1 stream": open_loop_setting(encoder_streams=1, events=events),
        "2 streams": open_loop_setting(encoder_streams=2, events=events)})
    rows = _over_repeats(found)
    print("| requests/s | encoder streams | p50 ms (min, median) | p99 ms (median) | service "
          "CPU ms/search | errors |\n|---|---|---|---|---|---|")
    for label, row in rows.items():
        rate, side = label.split(", ")
        print(f"| {rate} | {side} | {row['p50 ms min']:.1f}, {row['p50 ms median']:.1f} | "
              f"{row['p99 ms median']:.1f} | {row['cpu ms/search median']:.2f} | "
              f"{row['errors']} |")
    for rate in args.rates:
        change = _added(found[f"{rate}/s, 1 stream"], found[f"{rate}/s, 2 streams"])
        print(f"{kind} {rate}/s: 2 streams change the p50 by {change['added']:+.1%} "
              f"[{change['added low']:+.1%}, {change['added high']:+.1%}] (median of "
              f"{args.blocks} pairs' ratios, 95% CI)")


def paired_blocks(args: argparse.Namespace, uri: str, queries: list[str], kind: str,
                  sides: dict[str, dict]) -> dict[str, list[dict[str, float]]]:
    """Two services up at once (``sides``: name -> service setting); per rate
    ``args.blocks`` pairs of ``args.seconds`` open-loop blocks, one on each, the order
    alternating. Per "rate/s, side": one row per block."""
    found: dict[str, list[dict[str, float]]] = {}
    names = list(sides)
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, setting in sides.items():
            log_file = args.work_dir / f"serve-{kind}-blocks-{name.replace(' ', '-')}.log"
            urls[name] = stack.enter_context(service(args.work_dir, uri, log_file, setting))
            uvloop.run(run_clients(urls[name], queries, 4, 5))  # warm up
        for rate in args.rates:
            for block in range(args.blocks):
                for name in (names if block % 2 == 0 else names[::-1]):
                    row = open_loop_run(args, urls[name], queries, rate)
                    found.setdefault(f"{rate}/s, {name}", []).append(row)
                log.info("%s %d/s block %d: p50 %s", kind, rate, block, ", ".join(
                    f"{name} {found[f'{rate}/s, {name}'][-1]['p50 ms']:.1f} ms"
                    for name in names))
    return found


def open_loop_setting(encoder_streams: int, events: Path | None) -> dict:
    """The service setting of the open-loop runs: merged searches, no query cache, the
    real query encoder."""
    return {"max_batch": 32, "query_cache": 0, "encoder": "real",
            "encoder_streams": encoder_streams, "events": events}


def open_loop_run(args: argparse.Namespace, url: str, queries: list[str], rate: int
                  ) -> dict[str, float]:
    """One open-loop run at ``rate``: its latencies and the service's work per search."""
    before = metric_values(url)
    records = uvloop.run(open_loop(url, queries, rate, args.seconds, args.click_share))
    return summary(records, args.seconds) | service_work(before, metric_values(url),
                                                         len(records))


def _added(first: list[dict[str, float]], second: list[dict[str, float]]) -> dict[str, float]:
    """The median over pairs of second/first p50 - 1, with its bootstrap 95% CI."""
    ratios = np.array([b["p50 ms"] / a["p50 ms"] - 1 for a, b in zip(first, second)])
    low, high = bootstrap_median(ratios)
    return {"added": float(np.median(ratios)), "added low": low, "added high": high}


def bootstrap_median(values: np.ndarray, samples: int = 2000, seed: int = 0
                     ) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the median."""
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, len(values), (samples, len(values)))], axis=1)
    return float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))


BLOCK_LINE = re.compile(r"(\S+) (\d+)/s block \d+: p50 (.+?) ([\d.]+) ms, (.+?) ([\d.]+) ms$")
OLD_SIDE_NAMES = {"off": "events off", "on": "events on"}  # logs written before ae07c1f


def pooled_block_ratios(paths: list[Path]) -> dict[tuple, np.ndarray]:
    """The paired blocks logged in ``paths`` (their "block" lines), pooled: per (backend,
    rate, first side, second side) the pairs' second/first p50 - 1."""
    pooled: dict[tuple, list[float]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            found = BLOCK_LINE.search(line)
            if found:
                kind, rate, first, a, second, b = found.groups()
                key = (kind, int(rate), OLD_SIDE_NAMES.get(first, first),
                       OLD_SIDE_NAMES.get(second, second))
                pooled.setdefault(key, []).append(float(b) / float(a) - 1)
    return {key: np.array(ratios) for key, ratios in pooled.items()}


def print_pooled(paths: list[Path]) -> None:
    """Per backend, rate and pair of sides over every log: the median of the pairs' ratios
    with its bootstrap 95% CI."""
    pooled = pooled_block_ratios(paths)
    if not pooled:
        raise SystemExit(f"no paired-block lines in {', '.join(map(str, paths))}")
    for (kind, rate, first, second), ratios in sorted(pooled.items()):
        low, high = bootstrap_median(ratios)
        print(f"{kind} {rate}/s: {second} against {first}: {float(np.median(ratios)):+.1%} "
              f"[{low:+.1%}, {high:+.1%}] to the p50 (median of {len(ratios)} pairs' ratios, "
              f"95% CI; slower in {int((ratios > 0).sum())})")


def _over_repeats(found: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per label: min and median of each measure over the runs, errors summed."""
    return {label: {f"{m} {stat}": fn([r[m] for r in runs])
                    for m in ("p50 ms", "p99 ms", *SERVICE_WORK)
                    for stat, fn in (("min", min), ("median", np.median))}
            | {"errors": sum(r["errors"] for r in runs), "repeats": len(runs)}
            for label, runs in found.items()}


SERVICE_WORK = ("cpu ms/search", "gc0/search", "gc2/search", "per batch")


def service_work(before: dict[tuple, float], after: dict[tuple, float], searches: int
                 ) -> dict[str, float]:
    """What the service did during one open-loop run, per search: its CPU milliseconds,
    young and full garbage collections (prometheus_client's GC collector), and the searches
    merged per batch (``SearchBatcher``)."""
    def grew(*key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    per = max(searches, 1)
    return {"cpu ms/search": 1000 * grew("process_cpu_seconds_total") / per,
            "gc0/search": grew("python_gc_collections_total", "0") / per,
            "gc2/search": grew("python_gc_collections_total", "2") / per,
            "per batch": grew("fusion_search_batching", "searches")
            / max(grew("fusion_search_batching", "batches"), 1.0)}


def promote_v2(work: Path, uri: str, when: list) -> None:
    from fusion_model.pipelines import steps

    when.append(time.perf_counter())
    steps.promote_or_reject("2", {"decision": "promote", "reasons": ["load test"],
                                  "metrics": {}}, "fast", overrides(work, uri))
    when.append(time.perf_counter())


def metric_values(url: str) -> dict[tuple, float]:
    """The service's /metrics samples by (name, *label values)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(sample.name, *sample.labels.values()): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def cpu_split(values: dict[tuple, float]) -> tuple[float, float, float, float]:
    """(wall, machine busy, service, this process incl. its clients) CPU seconds so far."""
    busy, _ = machine_cpu_seconds() or (0.0, 0.0)
    return (time.monotonic(), busy, values[("process_cpu_seconds_total",)],
            time.process_time())


def cpu_cores(before: tuple, after: tuple) -> dict[str, float]:
    """Cores used during the loaded run by the service, the load generator and everything
    else (the Milvus server, or a server busy compacting: a run to read with care)."""
    wall, busy, service, own = (b - a for a, b in zip(before, after))
    return {"cpu service": service / wall, "cpu clients": own / wall,
            "cpu others": max(0.0, busy - service - own) / wall}


def service_counts(value: dict[tuple, float]) -> dict[str, float]:
    """From the service's /metrics, over the whole run: query-cache hits and misses, and
    the searches per batch (``SearchBatcher``)."""
    batches = value.get(("fusion_search_batching", "batches"), 0.0)
    return {"cache hits": value.get(("fusion_query_cache", "hit"), 0.0),
            "cache misses": value.get(("fusion_query_cache", "miss"), 0.0),
            "batches": batches,
            "per batch": value.get(("fusion_search_batching", "searches"), 0.0)
            / max(batches, 1)}


def summary(records: list, seconds: float) -> dict[str, float]:
    latencies = np.array([r[1] for r in records]) * 1000
    ok = [r for r in records if r[2] == 200]
    return {"requests": len(records), "requests/s": len(records) / seconds,
            "p50 ms": float(np.percentile(latencies, 50)),
            "p95 ms": float(np.percentile(latencies, 95)),
            "p99 ms": float(np.percentile(latencies, 99)),
            "errors": len(records) - len(ok)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--backends", default="lite,standalone")
    parser.add_argument("--query-cache", type=_int_list, default=[0],
                        help="the service's --query-cache, one run each with every "
                             "--max-batch (default 0: every query encoded; the 1,000 test "
                             "queries repeat, so a cache answers most)")
    parser.add_argument("--max-batch", type=_int_list,
                        default=[1, 32], help="the service's --max-batch, one run each "
                        "(default 1,32: without and with merged searches)")
    parser.add_argument("--sweep", type=_int_list, default=[],
                        help="also run with each of these numbers of clients, "
                             "--sweep-seconds each, before the loaded run")
    parser.add_argument("--sweep-seconds", type=float, default=10)
    parser.add_argument("--encoders", type=_encoder_list, default=["real"],
                        help="real (the champion's query encoder), zero-cost (random "
                             "vectors: the ceiling without encoding), or both, one run each")
    parser.add_argument("--rates", type=_int_list, default=[],
                        help="instead of the closed-loop runs: open-loop runs at these "
                             "requests/s, with event logging off and on (--repeats each)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compare-streams", action="store_true",
                        help="with --rates and --blocks: pair a 1-stream and a 2-stream "
                             "service (both logging) instead of logging off and on")
    parser.add_argument("--blocks", type=int, default=0,
                        help="with --rates: instead of --repeats fresh services, both "
                             "services up at once and this many pairs of --seconds blocks "
                             "per rate, alternating (drift cancels within a pair)")
    parser.add_argument("--encoder-streams", type=_int_list, default=[2],
                        help="with --rates: the service's --encoder-streams, one set of "
                             "runs each (default 2, the service's; 1: every query encoding "
                             "uses every core)")
    parser.add_argument("--click-share", type=float, default=0.3,
                        help="with --rates: the share of searches followed by a click")
    parser.add_argument("--work-dir", type=Path,
                        default=Path.home() / ".cache" / "fusion-model" / "serve-load")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="LOG",
                        help="measure nothing: pool the paired blocks of these logs of "
                             "--blocks runs of one setting (per backend, rate and pair of "
                             "services; the block lines do not name the encoder streams)")
    args = parser.parse_args()
    if args.pool:
        print_pooled(args.pool)
        return
    if args.compare_streams and not (args.rates and args.blocks):
        parser.error("--compare-streams needs --rates and --blocks")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    trained_versions(args.work_dir)
    data = bench_data(args.products, 1000, Path.home() / ".cache" / "fusion-model" /
                      "index-bench")
    queries = [q["text"] for q in _query_texts(args.products)]
    rows: dict[str, dict[str, dict[str, float]]] = {}
    load_before = os.getloadavg()[0]
    for kind in args.backends.split(","):
        with backend(kind, args.work_dir / "run") as uri:
            load_collections(args.work_dir, uri, args.products, data, kind)
            settle(kind)
            if args.rates:
                champion_back_to_v1(args.work_dir, uri, args.products, kind)
                if args.compare_streams:
                    compare_streams_blocks(args, uri, queries, kind)
                    continue
                for streams in args.encoder_streams:
                    label = f"{kind}, {streams} encoder stream{'s' if streams > 1 else ''}"
                    measured = measure_logging_blocks if args.blocks else measure_logging
                    rows[label] = measured(args, uri, queries, kind, streams)
                continue
            for max_batch, query_cache, encoder in itertools.product(
                    args.max_batch, args.query_cache, args.encoders):
                champion_back_to_v1(args.work_dir, uri, args.products, kind)
                setting = {"max_batch": max_batch, "query_cache": query_cache,
                           "encoder": encoder}
                label = f"{kind} b{max_batch}" + (f" c{query_cache}" if query_cache else "") \
                    + (" zero-cost" if encoder == "zero-cost" else "")
                rows[label] = measure(args, uri, queries, setting,
                                      args.work_dir / f"serve-{label.replace(' ', '-')}.log")
    print(f"products={args.products:,} clients={args.clients} seconds={args.seconds:g} "
          f"load before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    if args.rates:
        print_logging_table(rows)
    else:
        print_table(rows)


def print_logging_table(rows: dict[str, dict[str, dict[str, float]]]) -> None:
    """Per backend and rate: p50 and p99 (min and median over repeats), logging off and
    on, and what logging adds to the median p50."""
    print("| backend | requests/s | events | p50 ms (min, median) | p99 ms (min, median) | "
          "service CPU ms/search | young GCs/search | full GCs/search | searches/batch | "
          "errors |\n|---|---|---|---|---|---|---|---|---|---|")
    for kind, runs in rows.items():
        for label, row in runs.items():
            rate, events = label.split(", events ")
            print(f"| {kind} | {rate} | {events} | {row['p50 ms min']:.1f}, "
                  f"{row['p50 ms median']:.1f} | {row['p99 ms min']:.1f}, "
                  f"{row['p99 ms median']:.1f} | {row['cpu ms/search median']:.2f} | "
                  f"{row['gc0/search median']:.3f} | {row['gc2/search median']:.4f} | "
                  f"{row['per batch median']:.2f} | {row['errors']} |")
        for rate in sorted({label.split("/s")[0] for label in runs}, key=int):
            off, on = runs[f"{rate}/s, events off"], runs[f"{rate}/s, events on"]
            added = on["p50 ms median"] / off["p50 ms median"] - 1
            print(f"{kind} {rate}/s: logging adds {added:+.1%} to the median p50")
            if "added" in on:
                print(f"{kind} {rate}/s: paired blocks: logging adds {on['added']:+.1%} "
                      f"[{on['added low']:+.1%}, {on['added high']:+.1%}] to the p50 "
                      f"(median of {on['repeats']} pairs' ratios, 95% CI)")


def measure(args: argparse.Namespace, uri: str, queries: list[str],
            setting: dict[str, int | str], log_file: Path) -> dict[str, dict[str, float]]:
    """1 client, then ``args.clients`` with v2 promoted halfway, against one service."""
    with service(args.work_dir, uri, log_file, setting) as url:
        uvloop.run(run_clients(url, queries, 1, 3))  # warm up
        single = uvloop.run(run_clients(url, queries, 1, 10))
        sweep = {f"{clients} client{'s' * (clients > 1)}, sweep": summary(uvloop.run(run_clients(
            url, queries, clients, args.sweep_seconds)), args.sweep_seconds)
            for clients in args.sweep}
        when: list[float] = []
        before = cpu_split(metric_values(url))
        loaded = uvloop.run(run_clients(
            url, queries, args.clients, args.seconds,
            at_half=functools.partial(promote_v2, args.work_dir, uri, when)))
        values = metric_values(url)
        counts = service_counts(values) | cpu_cores(before, cpu_split(values))
    swap = [r for r in loaded if when and r[0] >= when[0]]
    failed = [r for r in loaded if r[2] != 200][:3]
    if failed:
        log.warning("%s: failed requests, e.g. %s", log_file.stem, failed)
    return {"1 client": summary(single, 10), **sweep,
            f"{args.clients} clients": summary(loaded, args.seconds),
            "promotion": {"errors": sum(r[2] != 200 for r in swap), "requests": len(swap),
                          "versions served": float(len({r[3] for r in loaded
                                                        if r[2] == 200})),
                          "swap s": _swap_seconds(loaded, when)},
            "service": counts}


def _int_list(text: str) -> list[int]:
    return [int(value) for value in text.split(",")]


def _encoder_list(text: str) -> list[str]:
    encoders = text.split(",")
    unknown = sorted(set(encoders) - {"real", "zero-cost"})
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown encoder {', '.join(unknown)}: "
                                         "real or zero-cost")
    return encoders


def _swap_seconds(records: list, when: list[float]) -> float:
    """Seconds from the start of the promotion to the first answer from v2 (nan: none)."""
    first = [r[0] + r[1] for r in records if r[2] == 200 and r[3] == "2"]
    return min(first) - when[0] if first and when else float("nan")


def _query_texts(products: int) -> list[dict]:
    from fusion_model.data.synthetic import sample_queries

    rng = np.random.default_rng(0)
    frame = sample_products(products, rng, TextNoise())
    return sample_queries(frame, 1000, rng)


def print_table(rows: dict[str, dict[str, dict[str, float]]]) -> None:
    kinds = list(rows)
    measures = [(run, m) for run in rows[kinds[0]] for m in rows[kinds[0]][run]]
    width = max(14, *(len(kind) + 2 for kind in kinds))
    first = max(14, *(len(run) + 2 for run, _ in measures))
    print(f"{'run':<{first}}{'measure':<14}" + "".join(f"{k:>{width}}" for k in kinds))
    for run, measure in measures:
        print(f"{run:<{first}}{measure:<14}" + "".join(
            f"{rows[k][run][measure]:>{width}.4g}" for k in kinds))


if __name__ == "__main__":
    main()
