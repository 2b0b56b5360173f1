"""A client of ``fusion-model serve`` in its own process: searches in a loop until a stop
file appears. Every search is one JSON line: start/end time (epoch s), hits, the version
and collection that answered, or the error."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx

QUERIES = ["red cotton shirt", "blue denim jeans for men", "black leather handbag"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stop", type=Path, required=True)
    args = parser.parse_args()
    with httpx.Client(base_url=args.url, timeout=30) as http, args.out.open("w") as out:
        turn = 0
        while not args.stop.exists():
            record = {"start": time.time()}
            try:
                response = http.get("/search", params={"q": QUERIES[turn % 3], "k": 5})
                body = response.json()
                if response.status_code == 200:
                    record.update(hits=len(body["hits"]), version=body["version"],
                                  collection=body["collection"])
                else:
                    record["error"] = f"HTTP {response.status_code}: {body.get('error')}"
            except httpx.HTTPError as error:
                record["error"] = f"{type(error).__name__}: {error}"
            record["end"] = time.time()
            out.write(json.dumps(record) + "\n")
            out.flush()
            turn += 1
            time.sleep(0.05)


if __name__ == "__main__":
    main()
