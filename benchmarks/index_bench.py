"""Milvus index benchmark: indexing rate, search latency and ANN recall, per backend.

    python benchmarks/index_bench.py [--products 100000] [--queries 1000]
        [--backends lite,standalone] [--lite-uri DIR/milvus.db] [--standalone-uri URI]

Backends, measured side by side in one run: ``lite`` (Milvus Lite 3.2, a local file) and
``standalone`` (the real Milvus standalone server: ``--standalone-uri``, or one started
here from the ``milvus`` package's ``milvus-server``). Vectors are real model outputs: the
zero-shot MiniLM text tower (384-d, L2-normalised) over synthetic products and queries,
cached under ``--cache-dir`` after the first run. HNSW (M=16, efConstruction=200, ef=128),
inner product. Single-query searches alternate between the backends, so a busy machine
slows both alike; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fusion_model.data.synthetic import TextNoise, sample_products, sample_queries
from fusion_model.evaluation.search import exact_top_k
from fusion_model.features import product_text
from fusion_model.index import milvus
from fusion_model.index.standalone import standalone_server
from fusion_model.models.heads import l2
from fusion_model.models.text import TextEncoder, mean_pool

log = logging.getLogger("index_bench")
COLLECTION = "bench_m1_index"
UPSERT_BATCH = 2000
SINGLE_QUERIES = 300


def embed(encoder: TextEncoder, texts: list[str], batch: int = 256) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            hidden, mask = encoder.bottom(texts[start:start + batch])
            out.append(l2(mean_pool(hidden.float(), mask)))
    return torch.cat(out).numpy().astype(np.float32)


def bench_data(products: int, queries: int, cache_dir: Path) -> dict:
    """Products (ids, categories), their vectors and query vectors; vectors cached."""
    rng = np.random.default_rng(0)
    frame = sample_products(products, rng, TextNoise())
    query_texts = [q["text"] for q in sample_queries(frame, queries, rng)]
    cache = cache_dir / f"vectors-{products}-{queries}.npz"
    if cache.exists():
        stored = np.load(cache)
        vectors, query_vectors, rate = stored["vectors"], stored["queries"], None
    else:
        encoder = TextEncoder("minilm", 48, trainable_layers=0).eval()
        started = time.perf_counter()
        vectors = embed(encoder, [product_text(t, d) for t, d in
                                  zip(frame["title"], frame["description"])])
        rate = len(vectors) / (time.perf_counter() - started)
        query_vectors = embed(encoder, query_texts)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, vectors=vectors, queries=query_vectors)
    return {"ids": frame["product_id"].tolist(), "categories": frame["category"].tolist(),
            "vectors": vectors, "queries": query_vectors, "embed_rate": rate}


def index_all(index: milvus.MilvusIndex, data: dict) -> float:
    """Create the collection, upsert every row in batches, count (flush + strong read);
    returns products/s."""
    if index.has_collection(COLLECTION):
        index.drop_collection(COLLECTION)
    index.create_collection(COLLECTION, data["vectors"].shape[1], ["category"])
    ids, vectors = data["ids"], data["vectors"]
    started = time.perf_counter()
    for start in range(0, len(ids), UPSERT_BATCH):
        stop = start + UPSERT_BATCH
        index.write_rows(COLLECTION, ids[start:stop], vectors[start:stop],
                         ["x"] * len(ids[start:stop]),
                         {"category": data["categories"][start:stop]}, overwrite=False)
    count = index.count(COLLECTION)
    assert count == len(ids), f"indexed {count} of {len(ids)}"
    return count / (time.perf_counter() - started)


def search_latencies(indexes: dict[str, milvus.MilvusIndex], queries: np.ndarray
                     ) -> dict[str, dict[str, list[float]]]:
    """Single-query and batch-of-64 latencies (s), the backends taking turns query by
    query."""
    timings = {name: {"single": [], "batch": []} for name in indexes}
    for index in indexes.values():
        index.search(COLLECTION, queries[:8], k=10)  # load and warm up
    for vector in queries[:SINGLE_QUERIES]:
        for name, index in indexes.items():
            tick = time.perf_counter()
            index.search(COLLECTION, vector[None, :], k=10)
            timings[name]["single"].append(time.perf_counter() - tick)
    for start in range(0, len(queries), 64):
        for name, index in indexes.items():
            tick = time.perf_counter()
            index.search(COLLECTION, queries[start:start + 64], k=10, batch_size=64)
            timings[name]["batch"].append(time.perf_counter() - tick)
    return timings


def ann_recall(index: milvus.MilvusIndex, data: dict, truth: list[list[int]]) -> float:
    hits = index.search(COLLECTION, data["queries"], k=10)
    ids = data["ids"]
    return float(np.mean([len({h["product_id"] for h in row} & {ids[j] for j in exact}) / 10
                          for row, exact in zip(hits, truth)]))


def ms(values: list[float], q: float, per: int = 1) -> float:
    return float(np.percentile(np.array(values) * 1000, q)) / per


def print_table(rows: list[tuple[str, dict[str, float]]], backends: list[str]) -> None:
    ratio = len(backends) == 2
    header = f"{'measure':<40}" + "".join(f"{b:>14}" for b in backends)
    print(header + (f"{backends[1] + '/' + backends[0]:>22}" if ratio else ""))
    for measure, values in rows:
        cells = "".join(f"{values[b]:>14.4g}" for b in backends)
        extra = f"{values[backends[1]] / values[backends[0]]:>22.3g}" if ratio else ""
        print(f"{measure:<40}{cells}{extra}")


@contextlib.contextmanager
def open_backends(args, workdir: Path):
    """{backend: MilvusIndex}, starting a standalone server when no URI was given."""
    with contextlib.ExitStack() as stack:
        indexes = {}
        for backend in args.backends.split(","):
            if backend == "lite":
                uri = args.lite_uri or str(workdir / "lite" / "milvus.db")
            elif backend == "standalone":
                uri = args.standalone_uri or stack.enter_context(
                    standalone_server(workdir / "standalone"))
            else:
                raise SystemExit(f"unknown backend {backend!r}: lite or standalone")
            indexes[backend] = stack.enter_context(milvus.MilvusIndex.open(uri))
        yield indexes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--backends", default="lite,standalone")
    parser.add_argument("--lite-uri", default=None)
    parser.add_argument("--standalone-uri", default=None)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path.home() / ".cache" / "fusion-model" / "index-bench")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()[0]
    data = bench_data(args.products, args.queries, args.cache_dir)
    _, exact = exact_top_k(torch.from_numpy(data["queries"]), torch.from_numpy(data["vectors"]),
                           10)
    truth = exact.tolist()
    with tempfile.TemporaryDirectory() as tmp, open_backends(args, Path(tmp)) as indexes:
        rates = {name: index_all(index, data) for name, index in indexes.items()}
        timings = search_latencies(indexes, data["queries"])
        recalls = {name: ann_recall(index, data, truth) for name, index in indexes.items()}
    backends = list(indexes)
    print(f"products={len(data['ids']):,} dim={data['vectors'].shape[1]} "
          f"queries={len(data['queries'])} threads={torch.get_num_threads()} "
          f"index=HNSW(M=16,efC=200,ef=128) metric=IP load before {load_before:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")
    if data["embed_rate"]:
        print(f"text embedding (MiniLM, fp32): {data['embed_rate']:.0f} products/s")
    print_table([
        ("indexing (upsert + flush), products/s", rates),
        ("search, 1 query, p50 ms", {b: ms(timings[b]["single"], 50) for b in backends}),
        ("search, 1 query, p95 ms", {b: ms(timings[b]["single"], 95) for b in backends}),
        ("search, batch of 64, p50 ms", {b: ms(timings[b]["batch"], 50) for b in backends}),
        ("search, batch of 64, p95 ms", {b: ms(timings[b]["batch"], 95) for b in backends}),
        ("batched, per query, p50 ms", {b: ms(timings[b]["batch"], 50, 64) for b in backends}),
        ("ANN recall@10 vs exact search", recalls),
    ], backends)


if __name__ == "__main__":
    main()
