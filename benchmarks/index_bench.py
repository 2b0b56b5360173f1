"""Milvus index benchmark: indexing throughput, search latency, ANN recall vs exact.

    python benchmarks/index_bench.py [--products 100000] [--queries 1000] [--uri DIR/milvus.db]

Vectors are real model outputs: the zero-shot MiniLM text tower (384-d, L2-normalised)
over synthetic products and queries (no photos are rendered, to keep the run short).
Milvus Lite, HNSW (M=16, efConstruction=200, ef=128), inner product.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fusion_model.data.synthetic import TextNoise, sample_products, sample_queries
from fusion_model.evaluation.search import exact_top_k
from fusion_model.features import product_text
from fusion_model.index import milvus
from fusion_model.models.heads import l2
from fusion_model.models.text import TextEncoder, mean_pool


def embed(encoder: TextEncoder, texts: list[str], batch: int = 256) -> np.ndarray:
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(texts), batch):
            hidden, mask = encoder.bottom(texts[start:start + batch])
            out.append(l2(mean_pool(hidden.float(), mask)))
    return torch.cat(out).numpy().astype(np.float32)


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--uri", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(0)
    products = sample_products(args.products, rng, TextNoise())
    queries = sample_queries(products, args.queries, rng)
    encoder = TextEncoder("minilm", 48, trainable_layers=0).eval()
    started = time.perf_counter()
    vectors = embed(encoder, [product_text(t, d) for t, d in zip(products["title"],
                                                                 products["description"])])
    embed_seconds = time.perf_counter() - started
    query_vectors = embed(encoder, [q["text"] for q in queries])
    uri = args.uri or str(Path(tempfile.mkdtemp()) / "milvus.db")
    ids = products["product_id"].tolist()
    with milvus.MilvusIndex.open(uri) as index:
        name = "bench_m1_index"
        if index.has_collection(name):
            index.drop_collection(name)
        index.create_collection(name, vectors.shape[1], ["category"])
        started = time.perf_counter()
        for start in range(0, len(ids), 2000):
            stop = start + 2000
            index.upsert_rows(name, ids[start:stop], vectors[start:stop],
                              ["x"] * len(ids[start:stop]),
                              {"category": products["category"].iloc[start:stop].tolist()})
        count = index.count(name)
        index_seconds = time.perf_counter() - started
        index.search(name, query_vectors[:8], k=10)  # warm up
        single = []
        for vector in query_vectors[:300]:
            tick = time.perf_counter()
            index.search(name, vector[None, :], k=10)
            single.append(time.perf_counter() - tick)
        batched = []
        for start in range(0, len(query_vectors), 64):
            tick = time.perf_counter()
            index.search(name, query_vectors[start:start + 64], k=10, batch_size=64)
            batched.append(time.perf_counter() - tick)
        hits = index.search(name, query_vectors, k=10)
    _, exact = exact_top_k(torch.from_numpy(query_vectors), torch.from_numpy(vectors), 10)
    recalls = [len({h["product_id"] for h in row} & {ids[j] for j in truth}) / 10
               for row, truth in zip(hits, exact.tolist())]
    print(f"products={count:,} dim={vectors.shape[1]} queries={len(query_vectors)} "
          f"threads={torch.get_num_threads()} index=HNSW(M=16,efC=200,ef=128) metric=IP")
    print(f"{'measure':<44}{'value':>14}")
    print(f"{'text embedding (MiniLM, bf16), products/s':<44}{len(ids) / embed_seconds:>14.0f}")
    print(f"{'indexing (upsert + flush), products/s':<44}{count / index_seconds:>14.0f}")
    print(f"{'search latency, 1 query, p50 ms':<44}{percentile_ms(single, 50):>14.2f}")
    print(f"{'search latency, 1 query, p95 ms':<44}{percentile_ms(single, 95):>14.2f}")
    print(f"{'search latency, batch of 64, p50 ms':<44}{percentile_ms(batched, 50):>14.2f}")
    print(f"{'search latency, batch of 64, p95 ms':<44}{percentile_ms(batched, 95):>14.2f}")
    print(f"{'batched, per query, p50 ms':<44}{percentile_ms(batched, 50) / 64:>14.3f}")
    print(f"{'ANN recall@10 vs exact search':<44}{np.mean(recalls):>14.4f}")


if __name__ == "__main__":
    main()
