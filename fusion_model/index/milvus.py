"""Milvus collections for product vectors (Milvus Lite file, milvus-lite server or cluster).

One collection per (model version, catalog fingerprint). Vectors are written into a NEW
collection, verified, and only then pointed at by the serving alias; old collections are
kept for rollback and never dropped while an alias points at them. ``MilvusIndex`` is the
``VectorIndex`` (``index/base.py``) over one client, opened and closed per call
(``MilvusIndex.open``). Milvus Lite serves a data file from a server inside
the first process that opens it and holds the file's lock until that process exits (or
``release_lite``); other processes get a named "locked" error and should share the file
through ``milvus-lite server``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fusion_model.errors import IndexUnavailableError, InvalidFilterError, VectorIndexError
from fusion_model.index.base import IndexBackend
from fusion_model.index.filters import quote

log = logging.getLogger(__name__)

DEFAULT_INDEX_PARAMS = {"HNSW": {"M": 16, "efConstruction": 200}, "HNSW_SQ": {
    "M": 16, "efConstruction": 200, "sq_type": "SQ8"}, "IVF_FLAT": {"nlist": 128},
    "IVF_SQ8": {"nlist": 128}, "FLAT": {}}
DEFAULT_SEARCH_PARAMS = {"HNSW": {"ef": 128}, "HNSW_SQ": {"ef": 128}, "IVF_FLAT": {"nprobe": 16},
                         "IVF_SQ8": {"nprobe": 16}, "FLAT": {}}
MAX_VARCHAR = 512
QUERY_PAGE = 16384
# Reads that verify or diff what was just written see every acknowledged write. A Milvus
# server is Bounded by default (reads may lag writes by a few seconds; Milvus Lite never
# showed it); searches keep the collection's default.
STRONG = {"consistency_level": "Strong"}
IDS_PER_QUERY = 1000   # ids in one ``product_id in [...]`` expression


# A connection of our own, closed on exit, and no keepalive pings while idle. pymilvus
# otherwise shares one channel per process and pings it every 10 s even without calls;
# Milvus Lite (a file URI runs a local gRPC server too, as does ``milvus-lite server``)
# answers that with GOAWAY "too_many_pings", after which every new client in the process
# failed to connect (seen after 90 s idle).
CLIENT_OPTIONS = {"dedicated": True,
                  "grpc_options": {"grpc.keepalive_permit_without_calls": False}}


class MilvusIndexError(VectorIndexError):
    """A Milvus operation was refused or is unsafe."""


@contextlib.contextmanager
def open_client(uri: str, token: str = "") -> Iterator:
    """A MilvusClient for a Lite file path, ``http://host:port`` or a cluster URI, closed
    on exit. IndexUnavailableError when it cannot open (locked, unwritable, unreachable)."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    # Milvus Lite and Milvus 2.3 cannot allocate the iterator's snapshot timestamp; pymilvus
    # then warns on every iterator and reads at a client-side one. Harmless here: every
    # iterator runs after a Strong read (``MilvusIndex._catch_up``). Set after pymilvus's
    # own logging set-up, which runs at its import.
    logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
    _quiet_lite_unimplemented()
    if not is_remote(uri):
        uri = _prepare_lite_path(uri)
    try:
        client = MilvusClient(uri=uri, token=token, **CLIENT_OPTIONS)
    except MilvusException as exc:
        raise _cannot_open(uri, exc) from exc
    try:
        yield client
    finally:
        client.close()


def _drop_unimplemented(record: logging.LogRecord) -> bool:
    """False for a traceback of a call the in-process Milvus Lite server does not implement
    (the iterator's AllocTimestamp); pymilvus falls back by itself."""
    return not (record.exc_info and isinstance(record.exc_info[1], NotImplementedError))


def _quiet_lite_unimplemented() -> None:
    server_log = logging.getLogger("grpc._server")
    if _drop_unimplemented not in server_log.filters:
        server_log.addFilter(_drop_unimplemented)


def release_lite(uri: str) -> None:
    """Stop this process's Milvus Lite server for ``uri`` and release the file's lock
    (it otherwise lasts until the process exits)."""
    if is_remote(uri):
        return
    from milvus_lite import server_manager_instance

    server_manager_instance.release_server(str(Path(uri).expanduser().resolve()))


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "unix:"))


def _prepare_lite_path(uri: str) -> str:
    """Absolute Milvus Lite path whose folder exists and is writable (else a named error)."""
    import tempfile

    path = Path(uri).expanduser().resolve()
    if path.exists() and not path.is_dir():  # Milvus Lite keeps its data in a folder
        raise IndexUnavailableError(f"index.uri {uri} is a file, not Milvus Lite data (a "
                                    "folder Milvus Lite creates); choose another path")
    folder = path if path.is_dir() else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        reason = "a file, not a folder" if isinstance(exc, FileExistsError) else exc.strerror
        raise IndexUnavailableError(f"index.uri {uri}: cannot write Milvus Lite data under "
                                    f"{folder} ({reason}); choose a writable path") from exc
    return str(path)


def _cannot_open(uri: str, exc: Exception) -> IndexUnavailableError:
    """Say why a Milvus client could not open ``uri`` (pymilvus only logs the cause)."""
    if is_remote(uri):
        return IndexUnavailableError(f"Milvus at {uri} is not reachable "
                                     f"({getattr(exc, 'message', exc) or type(exc).__name__});"
                                     " start it, or set index.uri to a reachable server")
    if _lite_locked(Path(uri)):
        return IndexUnavailableError(
            f"Milvus Lite data {uri} is locked by another process (Milvus Lite allows one "
            "process per file). Stop the other process, or serve the file to several "
            f"processes with `milvus-lite server --data-dir {uri} --host 127.0.0.1 --port "
            "19530` and set index.uri=http://127.0.0.1:19530")
    return IndexUnavailableError(f"Milvus Lite could not open {uri} "
                                 f"({getattr(exc, 'message', '') or type(exc).__name__}); "
                                 "the log above has the cause")


def _lite_locked(path: Path) -> bool:
    """True when another process holds Milvus Lite's advisory lock on ``path``."""
    import fcntl

    lock = path / "LOCK"
    if not lock.is_file():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


class MilvusIndex(IndexBackend, name="milvus"):
    """A ``VectorIndex`` over one MilvusClient (Milvus Lite file, ``milvus-lite server``,
    standalone or cluster). Per-connection state (load state and search params checked
    once per collection) lives on the instance and ends with it."""

    # Milvus Lite 3.2 builds these; others silently fall back to FLAT, so they are rejected.
    INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ")
    # Scores are similarities of unit vectors (higher is better), as verification, the
    # gate and exact evaluation assume; a distance metric (L2) would invert them.
    METRICS = ("IP", "COSINE")

    def __init__(self, client) -> None:
        self.client = client
        self._prepared: dict[str, dict] = {}

    @classmethod
    @contextlib.contextmanager
    def open(cls, uri: str, token: str = "") -> Iterator[MilvusIndex]:
        """The index at ``uri``, its client closed on exit (IndexUnavailableError when it
        cannot open)."""
        with open_client(uri, token) as client:
            yield cls(client)

    def create_collection(self, name: str, dim: int, attribute_fields: list[str],
                          index_type: str = "HNSW", metric: str = "IP",
                          index_params: dict | None = None) -> None:
        """Create ``name`` (if absent) with product_id, vector, content_hash and attributes."""
        from pymilvus import DataType

        index_type = index_type.upper()
        if index_type not in self.INDEX_TYPES:
            raise MilvusIndexError(f"index type {index_type!r} is not built by Milvus Lite "
                                   f"3.2 (it would silently fall back); use one of "
                                   f"{', '.join(self.INDEX_TYPES)}")
        if metric not in self.METRICS:
            raise MilvusIndexError(f"metric {metric!r}: use {' or '.join(self.METRICS)} "
                                   "(scores must be similarities)")
        if self.client.has_collection(name):
            return
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("product_id", DataType.VARCHAR, is_primary=True,
                         max_length=MAX_VARCHAR)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        for field in attribute_fields:
            schema.add_field(field, DataType.VARCHAR, max_length=MAX_VARCHAR)
        params = self.client.prepare_index_params()
        params.add_index(field_name="vector", index_type=index_type, metric_type=metric,
                         params=index_params if index_params is not None
                         else DEFAULT_INDEX_PARAMS[index_type])
        self.client.create_collection(name, schema=schema, index_params=params,
                                      num_shards=self.shards)
        log.info("created collection %s (dim %d, %s/%s, attributes %s, %d shard(s))", name,
                 dim, index_type, metric, attribute_fields, self.shards)

    def has_collection(self, name: str) -> bool:
        return bool(self.client.has_collection(name))

    def list_collections(self) -> list[str]:
        return list(self.client.list_collections())

    def fields(self, name: str) -> list[str]:
        """Field names of the collection (or of the one an alias points at)."""
        return [f["name"] for f in self.client.describe_collection(name)["fields"]]

    def ensure_loaded(self, name: str) -> None:
        """Collections opened by a new process start 'released'; load before reading."""
        target = self.resolve_alias(name)
        state = str(self.client.get_load_state(target).get("state", ""))
        if "Loaded" not in state:
            self.client.load_collection(target, replica_number=self.replicas)

    def release(self, name: str) -> None:
        if "Loaded" not in str(self.client.get_load_state(name).get("state", "")):
            return
        self._prepared.pop(name, None)
        self.client.release_collection(name)
        log.info("released collection %s (nothing serves it; a read loads it again)", name)

    def flush(self, name: str) -> None:
        self.client.flush(name)

    def existing_hashes(self, name: str, ids: list[str] | None = None) -> dict[str, str]:
        """product_id -> content_hash of every row in the collection, or of the rows of
        ``ids`` alone (a shard reads its own slice, ``IDS_PER_QUERY`` ids a query)."""
        found: dict[str, str] = {}
        if ids is not None:  # Strong queries by id: no whole-collection count first
            self.ensure_loaded(name)
            for chunk in _chunks(ids, IDS_PER_QUERY):
                found.update((row["product_id"], row["content_hash"]) for row in
                             self.client.query(name, filter=ids_expression(chunk),
                                               output_fields=["product_id", "content_hash"],
                                               **STRONG))
            return found
        self._catch_up(name)
        iterator = self.client.query_iterator(name, batch_size=QUERY_PAGE, filter="",
                                              output_fields=["product_id", "content_hash"],
                                              **STRONG)
        try:
            while batch := iterator.next():
                found.update({row["product_id"]: row["content_hash"] for row in batch})
        finally:
            iterator.close()
        return found

    def copy_rows(self, source: str, target: str, keep_ids: set[str],
                  fields: list[str], replace: dict[str, dict] | None = None,
                  stored: set[str] | None = None) -> int:
        """Copy the rows of ``keep_ids`` (vector, content hash, ``fields``) from ``source``
        into ``target``, with the values in ``replace`` (product_id -> {field: value})
        instead of the stored ones; returns how many were copied. Idempotent: a row
        ``target`` already holds is overwritten, the others are inserted. ``stored``: the
        ids ``target`` holds, when the caller has read them already. Reads only the rows
        of ``keep_ids`` (``IDS_PER_QUERY`` a query), so a refresh shard reads its slice."""
        self.ensure_loaded(source)  # Strong queries by id: no whole-collection count
        present = set(self.existing_hashes(target, sorted(keep_ids))) if stored is None \
            else stored
        available = set(self.fields(source))
        wanted = ["product_id", "vector", "content_hash",
                  *[f for f in fields if f in available]]
        replace = replace or {}
        copied = 0
        for chunk in _chunks(sorted(keep_ids), IDS_PER_QUERY // 4):
            batch = self.client.query(source, filter=ids_expression(chunk),
                                      output_fields=wanted, **STRONG)
            rows = [{**{f: "" for f in fields}, **{k: row[k] for k in wanted},
                     **{f: _text(v) for f, v in replace.get(row["product_id"], {}).items()
                        if f in fields},
                     "vector": [float(x) for x in row["vector"]]}
                    for row in batch]
            self._write([r for r in rows if r["product_id"] not in present], target,
                        overwrite=False)
            self._write([r for r in rows if r["product_id"] in present], target,
                        overwrite=True)
            copied += len(rows)
        return copied

    def write_rows(self, name: str, ids: list[str], vectors: np.ndarray, hashes: list[str],
                   attributes: dict[str, list[str]], overwrite: bool = True) -> None:
        """Store the rows; ``overwrite=False`` when none of ``ids`` is stored yet (a new
        collection). A Milvus server writes an upsert as a delete plus an insert: after
        a 100,000-row build in upserts it compacted the delete records away and rebuilt
        the index of the rewritten segments, at up to 2 cores for 70-110 s after the
        index was complete, i.e. right after the alias moved to it; inserts leave no
        delete records (2.2x less server CPU for the build). Inserting an id that is
        stored already duplicates it on a server (``write_catalog`` detects and repairs
        that)."""
        rows = [{"product_id": pid, "vector": vectors[i].astype(np.float32).tolist(),
                 "content_hash": hashes[i],
                 **{field: _text(values[i]) for field, values in attributes.items()}}
                for i, pid in enumerate(ids)]
        self._write(rows, name, overwrite)

    def import_rows(self, name: str, ids: list[str], vectors: np.ndarray, hashes: list[str],
                    attributes: dict[str, list[str]], import_uri: str,
                    timeout: float = 3600) -> None:
        """Store rows none of whose ids is stored yet by one server-side bulk import (a
        full build's batch): column files under ``import_uri``, imported, waited for until
        every row is visible to a Strong count, then deleted."""
        from fusion_model.index import bulk_import

        if not ids:
            return
        columns = {"product_id": bulk_import.text_column([_text(pid) for pid in ids]),
                   "vector": np.ascontiguousarray(vectors, dtype=np.float32),
                   "content_hash": bulk_import.text_column(list(hashes)),
                   **{field: bulk_import.text_column([_text(v) for v in values])
                      for field, values in attributes.items()}}
        batch, files = bulk_import.stage_columns(import_uri, name, columns)
        try:
            rows = bulk_import.run_import(self.client._get_connection(), name, files, timeout)
            self._wait_until_visible(name, ids, timeout)
        finally:
            bulk_import.remove_batch(batch)
        log.info("%s: bulk-imported %d rows", name, rows)

    def settle_imports(self, name: str, timeout: float = 3600) -> None:
        """Wait for import jobs on ``name`` still running (a crashed task's): rows they
        are about to add must count as stored before a retry decides what to write."""
        from fusion_model.index import bulk_import

        handler = self.client._get_connection()
        deadline = time.monotonic() + timeout
        while running := bulk_import.running_imports(handler, name):
            if time.monotonic() > deadline:
                raise MilvusIndexError(f"{name}: {len(running)} import job(s) still "
                                       f"running after {timeout:.0f} s")
            log.info("%s: waiting for %d import job(s) of an earlier attempt", name,
                     len(running))
            time.sleep(bulk_import.POLL_SECONDS)

    def _wait_until_visible(self, name: str, ids: list[str], timeout: float) -> None:
        """Imported segments reach the query nodes some seconds after the job ends."""
        self.ensure_loaded(name)
        deadline = time.monotonic() + timeout
        while (found := self.count(name, ids)) < len(ids):
            if time.monotonic() > deadline:
                raise MilvusIndexError(f"{name}: {found} of {len(ids)} imported rows "
                                       f"visible after {timeout:.0f} s")
            time.sleep(1.0)

    def _write(self, rows: list[dict], name: str, overwrite: bool) -> None:
        if rows:
            (self.client.upsert if overwrite else self.client.insert)(name, rows)

    def delete_ids(self, name: str, ids: list[str]) -> None:
        if ids:
            self.client.delete(name, filter=ids_expression(ids))

    def count(self, name: str, ids: list[str] | None = None) -> int:
        """Rows of ``name`` (of ``ids`` alone, when given), by a Strong count: it sees every
        acknowledged write, flushed or not (no flush per call: Milvus 2.4+ rate-limits
        flushes)."""
        if ids is None:
            return self._catch_up(name)
        self.ensure_loaded(name)  # Strong counts by id: no whole-collection count first
        return sum(int(self.client.query(name, filter=ids_expression(chunk),
                                         output_fields=["count(*)"], **STRONG)[0]["count(*)"])
                   for chunk in _chunks(ids, IDS_PER_QUERY))

    def _catch_up(self, name: str) -> int:
        """Load ``name`` and wait until its query view holds every acknowledged write (a
        Strong read); returns the row count. The query iterator reads at a client-side
        timestamp with bounded staleness: on a Milvus server it saw none of the rows
        upserted a moment before, and a resumed build would have rewritten them all."""
        self.ensure_loaded(name)
        return int(self.client.query(name, filter="", output_fields=["count(*)"],
                                     **STRONG)[0]["count(*)"])

    def wait_until_indexed(self, name: str, timeout: float = 600, every: float = 2) -> bool:
        """Wait until the vector index covers every flushed row of ``name``; False (and a
        warning) on timeout. A server builds it in the background after a flush, and
        until then searches scan the unindexed segments: a collection served right after
        its last write answered 30x slower."""
        target = self.resolve_alias(name)
        deadline = time.monotonic() + timeout
        while True:
            info = self.client.describe_index(target, "vector") or {}
            pending = info.get("pending_index_rows", 0)
            if not pending and info.get("indexed_rows", 0) >= info.get("total_rows", 0):
                return True
            if time.monotonic() > deadline:
                log.warning("%s: %s of %s rows indexed after %.0f s; searches scan the rest "
                            "until the server finishes", target, info.get("indexed_rows"),
                            info.get("total_rows"), timeout)
                return False
            time.sleep(every)

    def vectors_of(self, name: str, ids: list[str]) -> tuple[list[str], np.ndarray]:
        """The stored vectors of ``ids`` (those found), with their ids in the same order."""
        self.ensure_loaded(name)
        rows = self.client.query(name, filter=ids_expression(ids),
                                 output_fields=["product_id", "vector"], **STRONG)
        return ([r["product_id"] for r in rows],
                np.array([r["vector"] for r in rows], dtype=np.float32))

    def rows_of(self, name: str, ids: list[str], fields: list[str]) -> dict[str, dict]:
        """product_id -> {field: value} of the ``ids`` found (fields absent from the
        collection are left out)."""
        self.ensure_loaded(name)
        available = set(self.fields(name))
        wanted = ["product_id", *[f for f in fields if f in available]]
        rows = self.client.query(name, filter=ids_expression(ids), output_fields=wanted)
        return {row["product_id"]: {f: row[f] for f in wanted[1:]} for row in rows}

    def search(self, name: str, vectors: np.ndarray, k: int, filter_expr: str = "",
               output_fields: list[str] | None = None, search_params: dict | None = None,
               batch_size: int = 256) -> list[list[dict]]:
        """Top-k hits per query vector: [{"product_id", "score", **fields}], best first.
        InvalidFilterError when Milvus rejects ``filter_expr``."""
        from pymilvus.exceptions import MilvusException

        params = search_params if search_params is not None else self._prepare(name)
        results: list[list[dict]] = []
        for start in range(0, len(vectors), batch_size):
            batch = [v.astype(np.float32).tolist() for v in vectors[start:start + batch_size]]
            try:
                hits = self.client.search(name, data=batch, limit=k, filter=filter_expr,
                                          output_fields=output_fields or [],
                                          search_params={"params": params})
            except MilvusException as exc:
                if not filter_expr:
                    raise
                raise InvalidFilterError(filter_expr, getattr(exc, "message", str(exc)),
                                         ["product_id", *(output_fields or [])]) from exc
            results += [[{"product_id": h["product_id"] if "product_id" in h else h["id"],
                          "score": float(h["distance"]), **h.get("entity", {})} for h in row]
                        for row in hits]
        return results

    def _prepare(self, name: str) -> dict:
        """Load state and search params checked once per collection (saves ~4 RPCs per
        single-query search); ``point_alias`` clears them."""
        if name not in self._prepared:
            self.ensure_loaded(name)
            index = self.client.describe_index(self.resolve_alias(name), "vector")
            self._prepared[name] = dict(DEFAULT_SEARCH_PARAMS.get(
                index.get("index_type", "FLAT"), {}))
        return self._prepared[name]

    def resolve_alias(self, name: str) -> str:
        """The collection an alias points at (``name`` itself if it is not an alias)."""
        if name not in self.client.list_aliases().get("aliases", []):
            return name
        return self.client.describe_alias(name)["collection_name"]

    def aliases_of(self, name: str) -> list[str]:
        return list(self.client.list_aliases(name).get("aliases", []))

    def point_alias(self, alias: str, name: str) -> str | None:
        """Point ``alias`` at ``name`` (loaded first, so that no search finds it released:
        a rollback to a released collection); return the collection it pointed at before.
        That one stays loaded: running services read it until they follow the champion
        (``release_idle`` frees it at the next promotion)."""
        self._prepared.clear()
        self.ensure_loaded(name)
        previous = self.resolve_alias(alias)
        if previous == alias:
            self.client.create_alias(name, alias)
            previous = None
        else:
            self.client.alter_alias(name, alias)
        log.info("alias %s -> %s (was %s)", alias, name, previous)
        return previous

    def drop_alias(self, alias: str) -> None:
        self._prepared.clear()
        self.client.drop_alias(alias)

    def drop_collection(self, name: str) -> None:
        """Drop a collection unless an alias points at it (Milvus Lite would allow it)."""
        self.refuse_drop_if_aliased(name)
        self._prepared.pop(name, None)
        self.client.drop_collection(name)
        log.info("dropped collection %s", name)

    def compact(self, name: str) -> int:
        """Start a compaction of ``name`` (Milvus only; the serving benchmark settles a
        collection with it); returns the job id."""
        return self.client.compact(name)

    def compaction_done(self, job: int) -> bool:
        return self.client.get_compaction_state(job) == "Completed"


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def ids_expression(ids: list[str]) -> str:
    """``product_id in [...]`` with every id a quoted, escaped literal: the one way an id
    reaches a Milvus expression (pymilvus' ``get(ids=)`` quotes without escaping, so a
    quote in an id ended the literal and the rest ran as expression)."""
    return f"product_id in [{', '.join(quote(str(i)) for i in ids)}]"


def _text(value) -> str:
    """A VARCHAR value: '' for missing, cut to MAX_VARCHAR bytes of UTF-8."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).encode()[:MAX_VARCHAR].decode(errors="ignore")
