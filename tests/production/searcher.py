"""A serving client in its own process: loads the champion query encoder from the MLflow
server once, then searches the Milvus serving alias in a loop until a stop file appears.
Every search is one JSON line: start/end time (epoch s), hits, collection, error."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlflow
import pandas as pd

from fusion_model.index import milvus
from fusion_model.registry.registry import query_model_name

QUERIES = ["red cotton shirt", "blue denim jeans for men", "black leather handbag"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--milvus-uri", required=True)
    parser.add_argument("--alias", default="products_serving")
    parser.add_argument("--model-name", default="fusion_products")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stop", type=Path, required=True)
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    encoder = mlflow.pyfunc.load_model(f"models:/{query_model_name(args.model_name)}@champion")
    vectors = encoder.predict(pd.DataFrame({"text": QUERIES}))
    with milvus.MilvusIndex.open(args.milvus_uri) as index, args.out.open("w") as out:
        while not args.stop.exists():
            record = {"start": time.time()}
            try:
                hits = index.search(args.alias, vectors, 5)
                record["hits"] = [len(h) for h in hits]
                record["collection"] = index.resolve_alias(args.alias)
            except Exception as error:  # noqa: BLE001 - every failure is the test's evidence
                record["error"] = f"{type(error).__name__}: {error}"
            record["end"] = time.time()
            out.write(json.dumps(record) + "\n")
            out.flush()
            time.sleep(0.05)


if __name__ == "__main__":
    main()
