"""Content tags of local photos: hashing every file vs the host's tag cache.

    python benchmarks/tag_cache.py [--files 4000] [--size-kb 200] [--repeats 2]
        [--dir DIR]

Writes ``--files`` photo-sized files (random bytes, modification time a minute back, so
the cache may remember them), then times ``storage.content_tags`` over all of them with
the cache off (read + MD5 each file) and warm (stat + SQLite lookup), interleaved. Before
each run the page cache is dropped when this process may (root on Linux), as on a worker
that has not read the photos lately; otherwise the table says "warm page cache".
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from fusion_model import storage

log = logging.getLogger("tag_cache")


def write_files(root: Path, count: int, size: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    past = time.time() - 60
    paths = []
    for i in range(count):
        path = root / f"photo-{i:06d}.jpg"
        path.write_bytes(os.urandom(size))
        os.utime(path, (past, past))
        paths.append(str(path))
    return paths


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(uris: list[str], cache: str) -> float:
    os.environ["FUSION_CONTENT_TAG_CACHE"] = cache
    started = time.perf_counter()
    storage.content_tags(uris)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--size-kb", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", help="where to write the files (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.dir or tempfile.mkdtemp(prefix="tag-bench-"))
    uris = write_files(root / "photos", args.files, args.size_kb * 1024)
    cache = str(root / "tags.sqlite")
    timed(uris, cache)  # fill the cache
    runs: dict[str, list[float]] = {"off": [], "warm": []}
    cold = True
    for _ in range(args.repeats):
        for kind in runs:
            cold = drop_page_cache() and cold
            runs[kind].append(timed(uris, "off" if kind == "off" else cache))
    page = "dropped before each run" if cold else "warm page cache"
    print(f"| {args.files:,} files of {args.size_kb} KB ({page}) | min s | median s | "
          "files/s (median) |")
    print("|---|---|---|---|")
    for kind, label in (("off", "hash every file (cache off)"),
                        ("warm", "tag cache, warm (stat + lookup)")):
        median = statistics.median(runs[kind])
        print(f"| {label} | {min(runs[kind]):.2f} | {median:.2f} | "
              f"{args.files / median:,.0f} |")
    print(f"| ratio, off / warm (median) | | "
          f"{statistics.median(runs['off']) / statistics.median(runs['warm']):.1f}x | |")


if __name__ == "__main__":
    main()
