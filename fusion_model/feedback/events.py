"""Search events: one record per served search and the shoppers' interactions with its
results, kept in an append-only, date-partitioned JSON Lines store (a folder or an
``s3://`` prefix) for building judgments from traffic.

Layout: ``<root>/<kind>/date=YYYY-MM-DD/part-<writer>-<n>.jsonl`` with ``kind``
``searches`` or ``interactions``; each part is one batch, written once and never changed.
Writing never blocks a search: records go to a bounded queue that a background thread
writes in batches (a full queue drops the record and counts it)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import queue
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import orjson

from fusion_model import storage
from fusion_model.errors import BadInputError
from fusion_model.feedback.live import LiveFeedback

log = logging.getLogger(__name__)

KINDS = ("click", "cart", "purchase")
SEARCHES, INTERACTIONS = "searches", "interactions"
SALT_ENV = "FUSION_EVENTS_SALT"
MAX_EVENT_BYTES = 2048        # a POST /events body larger than this is refused
MAX_ID_CHARS = 256            # product and session ids longer than this are refused


class EventRejectedError(BadInputError):
    """An interaction event that names no served search, result or kind: never stored."""


@dataclasses.dataclass(frozen=True)
class SearchRecord:
    search_id: str
    time: str
    query: str
    model: str
    version: str
    collection: str
    product_ids: list[str]
    session: str | None     # a salted hash of the shopper's session id, never the id
    interleaving: dict | None = None   # {"A": version, "B": version, "teams": [...]}


@dataclasses.dataclass(frozen=True)
class Interaction:
    search_id: str
    product_id: str
    kind: str
    position: int           # 1-based rank of the product in the search's results
    time: str


@dataclasses.dataclass(frozen=True)
class EventSettings:
    root: str
    retention_days: int = 90
    flush_seconds: float = 2.0
    batch_size: int = 5000
    queue_size: int = 100_000
    remembered_searches: int = 200_000   # searches an interaction may still refer to


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def session_hasher(salt: str | None = None):
    """A function hashing session ids with ``salt`` (``$FUSION_EVENTS_SALT``; without it a
    random salt for this process, so sessions link within it only)."""
    salt = salt or os.environ.get(SALT_ENV)
    if not salt:
        log.warning("%s is not set: session ids are hashed with a random salt, so a "
                    "shopper's searches link only within this service process", SALT_ENV)
        salt = secrets.token_hex(16)
    key = salt.encode()

    def hashed(session: str | None) -> str | None:
        if not session:
            return None
        return hashlib.blake2b(session.encode(), key=key[:64], digest_size=16).hexdigest()

    return hashed


class RecentSearches:
    """The result lists (and queries) of the last ``capacity`` searches, by search id:
    what an interaction event is checked against."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._lists: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._queries: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, search_id: str, product_ids: list[str], query: str = "") -> None:
        with self._lock:
            self._lists[search_id] = tuple(product_ids)
            self._queries[search_id] = query
            while len(self._lists) > self.capacity:
                gone, _ = self._lists.popitem(last=False)
                self._queries.pop(gone, None)

    def get(self, search_id: str) -> tuple[str, ...] | None:
        with self._lock:
            return self._lists.get(search_id)

    def query_of(self, search_id: str) -> str:
        with self._lock:
            return self._queries.get(search_id, "")


def checked_interaction(body: Any, recent: RecentSearches, when: dt.datetime
                        ) -> Interaction:
    """An interaction event from a request body, or ``EventRejectedError`` naming the rule."""
    if not isinstance(body, dict):
        raise EventRejectedError("an event is a JSON object with search_id, product_id, kind "
                            "and position")
    unknown = sorted(set(body) - {"search_id", "product_id", "kind", "position"})
    if unknown:
        raise EventRejectedError(f"unknown field(s) {unknown}")
    search_id, product_id = body.get("search_id"), body.get("product_id")
    kind, position = body.get("kind"), body.get("position")
    if kind not in KINDS:
        raise EventRejectedError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}"[:200])
    if not isinstance(search_id, str) or not isinstance(product_id, str) \
            or len(product_id) > MAX_ID_CHARS:
        raise EventRejectedError("search_id and product_id must be strings (the product id at "
                            f"most {MAX_ID_CHARS} characters)")
    shown = recent.get(search_id)
    if shown is None:
        raise EventRejectedError(f"unknown search_id {search_id[:64]!r}: not a recent search of "
                            "this service")
    if not isinstance(position, int) or isinstance(position, bool) \
            or not 1 <= position <= len(shown):
        raise EventRejectedError(f"position must be an integer from 1 to {len(shown)} (the "
                            f"search's results), not {str(position)[:20]}")
    if shown[position - 1] != product_id:
        raise EventRejectedError(f"product {product_id[:64]!r} was not shown at position "
                            f"{position} of search {search_id}")
    return Interaction(search_id, product_id, kind, position, when.isoformat())


class EventLog:
    """Records searches and interactions in batches on a background thread."""

    def __init__(self, settings: EventSettings, salt: str | None = None):
        self.settings = settings
        self.recent = RecentSearches(settings.remembered_searches)
        self.live = LiveFeedback()
        self.hash_session = session_hasher(salt)
        self.dropped = 0
        self.written = {SEARCHES: 0, INTERACTIONS: 0}
        self._queue: queue.Queue = queue.Queue(settings.queue_size)
        self._writer = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._parts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_on: dt.date | None = None

    # the request side: never blocks -------------------------------------------------
    def search(self, query: str, model: str, version: str, collection: str,
               product_ids: list[str], session: str | None,
               interleaving: dict | None = None) -> str:
        """Record a served search (``interleaving``: the two versions and, per position,
        the team that showed it); returns its id for the response."""
        search_id = uuid.uuid4().hex
        self.recent.add(search_id, product_ids, query)
        self.live.searched(search_id, query, product_ids, interleaving)
        self._put(SEARCHES, SearchRecord(search_id, now_utc().isoformat(), query, model,
                                         version, collection, list(product_ids),
                                         self.hash_session(session), interleaving))
        return search_id

    def interaction(self, body: Any) -> Interaction:
        """Check and record an interaction event (``EventRejectedError`` if it is bad)."""
        event = checked_interaction(body, self.recent, now_utc())
        self._put(INTERACTIONS, event)
        self.live.interacted(event.search_id, self.recent.query_of(event.search_id),
                             event.product_id, event.kind, event.position)
        return event

    def _put(self, kind: str, record) -> None:
        """Queue the record as its JSON line: bytes, which the garbage collector never
        scans (queued dicts and lists outlived young collections and made the service's
        full collections more frequent)."""
        try:
            self._queue.put_nowait((kind, record.time[:10], orjson.dumps(vars(record))))
        except queue.Full:
            self.dropped += 1

    # the writer side ------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="event-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.flush_seconds):
            try:
                self.flush()
                self.prune()
            except Exception:  # noqa: BLE001 - the writer must outlive a bad storage call
                log.exception("search events could not be written; retrying")

    def flush(self) -> int:
        """Write every queued record, one part per kind and date and batch."""
        batch: list[tuple[str, str, bytes]] = []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
            if len(batch) >= self.settings.batch_size:
                self._write(batch)
                batch = []
        self._write(batch)
        return sum(self.written.values())

    def _write(self, batch: list[tuple[str, str, bytes]]) -> None:
        groups: dict[tuple[str, str], list[bytes]] = {}
        for kind, day, line in batch:
            groups.setdefault((kind, day), []).append(line)
        for (kind, day), lines in groups.items():
            self._parts += 1
            uri = storage.join(self.settings.root, kind, f"date={day}",
                               f"part-{self._writer}-{self._parts:06d}.jsonl")
            storage.write_bytes(uri, b"".join(line + b"\n" for line in lines))
            self.written[kind] += len(lines)

    def prune(self, today: dt.date | None = None) -> list[str]:
        """Delete the date partitions older than the retention (once a day)."""
        today = today or now_utc().date()
        if self._pruned_on == today:
            return []
        self._pruned_on = today
        oldest = today - dt.timedelta(days=self.settings.retention_days)
        removed = [uri for kind in (SEARCHES, INTERACTIONS)
                   for uri in _listed(storage.join(self.settings.root, kind))
                   if (day := _partition_date(uri)) is not None and day < oldest]
        storage.delete_files(removed)
        if removed:
            log.info("search events: %d parts older than %d days deleted", len(removed),
                     self.settings.retention_days)
        return removed


def _partition_date(uri: str) -> dt.date | None:
    for part in uri.replace("\\", "/").split("/"):
        if part.startswith("date="):
            try:
                return dt.date.fromisoformat(part[5:])
            except ValueError:
                return None
    return None


def _listed(prefix: str) -> list[str]:
    """The files under the folder ``prefix`` (none before the first write)."""
    return storage.list_files(prefix.rstrip("/") + "/" if storage.is_s3(prefix) else prefix)


def read_events(root: str, kind: str, since: dt.date | None = None) -> Iterator[dict]:
    """Every record of ``kind`` under ``root`` (from the date partition ``since`` on),
    part by part (a line that does not parse is named and skipped)."""
    for uri in sorted(_listed(storage.join(root, kind))):
        if not uri.endswith(".jsonl"):
            continue
        day = _partition_date(uri)
        if since is not None and (day is None or day < since):
            continue
        for number, line in enumerate(storage.read_bytes(uri).decode().splitlines(), 1):
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("%s line %d: not JSON, skipped", uri, number)


def wait_until_written(events: EventLog, count: int, timeout: float = 10.0) -> bool:
    """For tests and shutdown: wait until ``count`` records were written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(events.written.values()) >= count:
            return True
        time.sleep(0.05)
    return False
