"""Content tags of local files, remembered by (path, size, mtime, inode).

A catalog's fingerprint, its index content hashes and its photo feature keys all need the
MD5 of every photo; at a million photos that is minutes of reading per step, and every
lifecycle step (validate, train, register, index, gate) asked again. A tag is reused only
while the file's size, modification time (ns) and inode are those it was hashed with, as
``git``'s index does; a file modified within the last ``RACY_SECONDS`` is not remembered
(a second write in the same clock tick would keep its stat).

The cache is one SQLite file shared by the processes of a host:
``$FUSION_CONTENT_TAG_CACHE`` (default ``~/.cache/fusion-model/content-tags.sqlite``;
``off`` turns it off).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "FUSION_CONTENT_TAG_CACHE"
RACY_SECONDS = 2.0
PATHS_PER_QUERY = 900  # under SQLite's 999 host parameters


def cache_path() -> Path | None:
    """Where the cache lives, or None when ``$FUSION_CONTENT_TAG_CACHE`` is ``off``."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else \
        Path.home() / ".cache" / "fusion-model" / "content-tags.sqlite"


def signature(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


class TagCache:
    """Remembered tags; every call opens its own connection (thread- and process-safe)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS tag (path TEXT PRIMARY KEY, size INTEGER, "
                       "mtime_ns INTEGER, inode INTEGER, tag TEXT)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def lookup(self, stats: dict[str, os.stat_result]) -> dict[str, str]:
        """The remembered tag of each path whose stat still matches."""
        found: dict[str, str] = {}
        paths = list(stats)
        with self._connect() as db:
            for start in range(0, len(paths), PATHS_PER_QUERY):
                chunk = paths[start:start + PATHS_PER_QUERY]
                rows = db.execute(f"SELECT path, size, mtime_ns, inode, tag FROM tag WHERE "
                                  f"path IN ({','.join('?' * len(chunk))})", chunk)
                found.update((path, tag) for path, size, mtime, inode, tag in rows
                             if (size, mtime, inode) == signature(stats[path]))
        return found

    def remember(self, tags: dict[str, str], stats: dict[str, os.stat_result]) -> None:
        """Store ``tags`` (hashed with ``stats``) except files modified a moment ago."""
        settled = time.time_ns() - int(RACY_SECONDS * 1e9)
        rows = [(path, *signature(stats[path]), tag) for path, tag in tags.items()
                if stats[path].st_mtime_ns < settled]
        if rows:
            with self._connect() as db:
                db.executemany("INSERT OR REPLACE INTO tag VALUES (?, ?, ?, ?, ?)", rows)


def tag_cache() -> TagCache | None:
    """The host's cache, or None when turned off or not writable (tags are then hashed)."""
    path = cache_path()
    if path is None:
        return None
    try:
        return TagCache(path)
    except (OSError, sqlite3.Error) as exc:
        log.warning("content tag cache %s unusable (%s): hashing every file", path, exc)
        return None
