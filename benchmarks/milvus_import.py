"""Full builds into a Milvus server: batched inserts vs bulk import.

    python benchmarks/milvus_import.py [--rows 100000] [--dim 384] [--repeats 2]
        [--import-rows 50000] [--uri http://host:19530 --import-uri DIR_OR_S3]

Writes the same ``--rows`` random unit vectors (with a content hash and three attribute
fields, as a catalog build stores them) into a new HNSW collection twice per repeat,
interleaved: through ``write_rows`` in batches of ``index.batch_size`` (512) and through
``import_rows`` in jobs of ``--import-rows``. Each time is until the rows are visible to
a Strong count, then until the index is built (flush + ``wait_until_indexed``, as
verification does); with the client's own CPU seconds until the rows are visible.
Without ``--uri`` it starts the real Milvus standalone server (``milvus-server``, local
storage) and stages the import files on its disk.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from fusion_model.config import IndexConfig
from fusion_model.index.milvus import MilvusIndex

log = logging.getLogger("milvus_import")
FIELDS = ("category", "colour", "gender")


def catalog_rows(rows: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"product-{i:08d}" for i in range(rows)]
    hashes = [f"{i:032x}" for i in range(rows)]
    attributes = {f: [f"{f}-{i % 37}" for i in range(rows)] for f in FIELDS}
    return ids, vectors, hashes, attributes


def build(index: MilvusIndex, name: str, data, how: str, config: IndexConfig) -> dict:
    ids, vectors, hashes, attributes = data
    index.create_collection(name, vectors.shape[1], list(FIELDS))
    started, cpu = time.perf_counter(), time.process_time()
    if how == "insert":
        for start in range(0, len(ids), config.batch_size):
            end = start + config.batch_size
            index.write_rows(name, ids[start:end], vectors[start:end], hashes[start:end],
                             {f: v[start:end] for f, v in attributes.items()},
                             overwrite=False)
    else:
        for start in range(0, len(ids), config.import_rows):
            end = start + config.import_rows
            index.import_rows(name, ids[start:end], vectors[start:end], hashes[start:end],
                              {f: v[start:end] for f, v in attributes.items()},
                              config.import_uri)
    while index.count(name) < len(ids):
        time.sleep(0.5)
    visible = time.perf_counter() - started
    client_cpu = time.process_time() - cpu
    index.flush(name)
    index.wait_until_indexed(name, timeout=3600, every=1)
    indexed = time.perf_counter() - started
    index.drop_collection(name)
    return {"visible": visible, "indexed": indexed, "client_cpu": client_cpu}


@contextlib.contextmanager
def server(uri: str | None, root: Path, storage: str = "local"):
    """(server URI, import URI or None for the default); ``storage="s3"`` starts a moto S3
    server and a Milvus server whose segments live in it, importing from that bucket."""
    if uri:
        yield uri, None
        return
    from fusion_model.index.standalone import ObjectStorage, standalone_server

    if storage == "local":
        with standalone_server(root / "milvus") as started:
            yield started, None
        return
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    os.environ.update(keys)
    boto3.client("s3").create_bucket(Bucket="milvus-bucket")
    store = ObjectStorage(keys["AWS_ENDPOINT_URL_S3"], "milvus-bucket", "testing", "testing")
    try:
        with standalone_server(root / "milvus", storage=store) as started:
            yield started, "s3://milvus-bucket/import"
    finally:
        moto.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--import-rows", type=int, default=50_000)
    parser.add_argument("--uri", help="a running Milvus server (default: start one)")
    parser.add_argument("--import-uri", help="where that server reads import files")
    parser.add_argument("--storage", choices=("local", "s3"), default="local",
                        help="the started server's segments: on its disk, or in a local "
                             "S3 server (moto), bulk import reading from that bucket")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    root = Path(tempfile.mkdtemp(prefix="milvus-import-"))
    data = catalog_rows(args.rows, args.dim)
    runs: dict[str, list[dict]] = {"insert": [], "import": []}
    with server(args.uri, root, args.storage) as (uri, import_uri), \
            MilvusIndex.open(uri) as index:
        config = IndexConfig(import_uri=args.import_uri or import_uri or str(root / "import"),
                             import_rows=args.import_rows)
        for repeat in range(args.repeats):
            for how in runs:
                runs[how].append(build(index, f"bench_{how}_{repeat}", data, how, config))
                log.warning("%s #%d: %s", how, repeat, runs[how][-1])
    print(f"| {args.rows:,} rows, dim {args.dim}, HNSW ({args.repeats} interleaved repeats) "
          "| visible, min s | visible, median s | indexed, min s | indexed, median s | "
          "rows/s to indexed (median) | client CPU s (median) |")
    print("|---|---|---|---|---|---|---|")
    labels = {"insert": f"batched inserts ({config.batch_size} rows)",
              "import": f"bulk import ({config.import_rows:,} rows a job)"}
    for how, label in labels.items():
        visible = [r["visible"] for r in runs[how]]
        indexed = [r["indexed"] for r in runs[how]]
        print(f"| {label} | {min(visible):.1f} | {statistics.median(visible):.1f} | "
              f"{min(indexed):.1f} | {statistics.median(indexed):.1f} | "
              f"{args.rows / statistics.median(indexed):,.0f} | "
              f"{statistics.median(r['client_cpu'] for r in runs[how]):.1f} |")
    ratio = (statistics.median(r["indexed"] for r in runs["insert"])
             / statistics.median(r["indexed"] for r in runs["import"]))
    print(f"| ratio, inserts / import (indexed, median) | | | | {ratio:.2f}x | | |")


if __name__ == "__main__":
    main()
