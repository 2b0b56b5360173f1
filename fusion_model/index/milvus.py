"""Milvus collections for product vectors (Milvus Lite file, milvus-lite server or cluster).

One collection per (model version, catalog fingerprint). Vectors are written into a NEW
collection, verified, and only then pointed at by the serving alias; old collections are
kept for rollback and never dropped while an alias points at them. Clients are opened
and closed per call (``open_client``). Milvus Lite serves a data file from a server inside
the first process that opens it and holds the file's lock until that process exits (or
``release_lite``); other processes get a named "locked" error and should share the file
through ``milvus-lite server``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fusion_model.errors import FusionModelError, IndexUnavailableError

log = logging.getLogger(__name__)

# Milvus Lite 3.2 builds these; others silently fall back to FLAT, so they are rejected.
SUPPORTED_INDEXES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ")
# Scores are similarities of unit vectors (higher is better), as verification, the gate
# and exact evaluation assume; a distance metric (L2) would invert them.
SUPPORTED_METRICS = ("IP", "COSINE")
DEFAULT_INDEX_PARAMS = {"HNSW": {"M": 16, "efConstruction": 200}, "HNSW_SQ": {
    "M": 16, "efConstruction": 200, "sq_type": "SQ8"}, "IVF_FLAT": {"nlist": 128},
    "IVF_SQ8": {"nlist": 128}, "FLAT": {}}
DEFAULT_SEARCH_PARAMS = {"HNSW": {"ef": 128}, "HNSW_SQ": {"ef": 128}, "IVF_FLAT": {"nprobe": 16},
                         "IVF_SQ8": {"nprobe": 16}, "FLAT": {}}
MAX_VARCHAR = 512
# Per-client search preparation (load state, search params), dropped with the client.
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
QUERY_PAGE = 16384


# A connection of our own, closed on exit, and no keepalive pings while idle. pymilvus
# otherwise shares one channel per process and pings it every 10 s even without calls;
# Milvus Lite (a file URI runs a local gRPC server too, as does ``milvus-lite server``)
# answers that with GOAWAY "too_many_pings", after which every new client in the process
# failed to connect (seen after 90 s idle).
CLIENT_OPTIONS = {"dedicated": True,
                  "grpc_options": {"grpc.keepalive_permit_without_calls": False}}


class MilvusIndexError(FusionModelError):
    """A Milvus operation was refused or is unsafe."""


@contextlib.contextmanager
def open_client(uri: str, token: str = "") -> Iterator:
    """A MilvusClient for a Lite file path, ``http://host:port`` or a cluster URI, closed
    on exit. IndexUnavailableError when it cannot open (locked, unwritable, unreachable)."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

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


def collection_name(prefix: str, model_version: str | int, catalog_fingerprint: str) -> str:
    """``products_m3_1a2b3c4d5e6f``: letters, digits and underscores, as Milvus requires."""
    name = f"{prefix}_m{model_version}_{catalog_fingerprint[:12]}"
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def content_hash(*parts: object) -> str:
    """Stable hash of a product's indexed content (text, photo tag, attributes)."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode(), usedforsecurity=False
                        ).hexdigest()


def create_collection(client, name: str, dim: int, attribute_fields: list[str],
                      index_type: str = "HNSW", metric: str = "IP",
                      index_params: dict | None = None) -> None:
    """Create ``name`` (if absent) with product_id, vector, content_hash and attributes."""
    from pymilvus import DataType

    index_type = index_type.upper()
    if index_type not in SUPPORTED_INDEXES:
        raise MilvusIndexError(f"index type {index_type!r} is not built by Milvus Lite 3.2 "
                               f"(it would silently fall back); use one of "
                               f"{', '.join(SUPPORTED_INDEXES)}")
    if client.has_collection(name):
        return
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("product_id", DataType.VARCHAR, is_primary=True, max_length=MAX_VARCHAR)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
    for field in attribute_fields:
        schema.add_field(field, DataType.VARCHAR, max_length=MAX_VARCHAR)
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type=index_type, metric_type=metric,
                     params=index_params if index_params is not None
                     else DEFAULT_INDEX_PARAMS[index_type])
    client.create_collection(name, schema=schema, index_params=params)
    log.info("created collection %s (dim %d, %s/%s, attributes %s)", name, dim, index_type,
             metric, attribute_fields)


def ensure_loaded(client, name: str) -> None:
    """Collections opened by a new process start 'released'; load before reading."""
    state = str(client.get_load_state(resolve_alias(client, name)).get("state", ""))
    if "Loaded" not in state:
        client.load_collection(resolve_alias(client, name))


def existing_hashes(client, name: str) -> dict[str, str]:
    """product_id -> content_hash of every row in the collection."""
    ensure_loaded(client, name)
    found: dict[str, str] = {}
    iterator = client.query_iterator(name, batch_size=QUERY_PAGE, filter="",
                                     output_fields=["product_id", "content_hash"])
    try:
        while batch := iterator.next():
            found.update({row["product_id"]: row["content_hash"] for row in batch})
    finally:
        iterator.close()
    return found


def copy_rows(client, source: str, target: str, keep_ids: set[str], fields: list[str]) -> int:
    """Copy the rows of ``keep_ids`` (vector, content hash, ``fields``) from ``source``
    into ``target``; returns how many were copied. Idempotent (upserts)."""
    ensure_loaded(client, source)
    available = {f["name"] for f in client.describe_collection(source)["fields"]}
    wanted = ["product_id", "vector", "content_hash", *[f for f in fields if f in available]]
    iterator = client.query_iterator(source, batch_size=QUERY_PAGE // 4, filter="",
                                     output_fields=wanted)
    copied = 0
    try:
        while batch := iterator.next():
            rows = [{**{f: "" for f in fields}, **{k: row[k] for k in wanted},
                     "vector": [float(x) for x in row["vector"]]}
                    for row in batch if row["product_id"] in keep_ids]
            if rows:
                client.upsert(target, rows)
                copied += len(rows)
    finally:
        iterator.close()
    return copied


def upsert_rows(client, name: str, ids: list[str], vectors: np.ndarray, hashes: list[str],
                attributes: dict[str, list[str]]) -> None:
    rows = [{"product_id": pid, "vector": vectors[i].astype(np.float32).tolist(),
             "content_hash": hashes[i],
             **{field: _text(values[i]) for field, values in attributes.items()}}
            for i, pid in enumerate(ids)]
    client.upsert(name, rows)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)[:MAX_VARCHAR]


def delete_ids(client, name: str, ids: list[str]) -> None:
    if ids:
        client.delete(name, ids=ids)


def count(client, name: str) -> int:
    client.flush(name)
    ensure_loaded(client, name)
    return int(client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])


def search(client, name: str, vectors: np.ndarray, k: int, filter_expr: str = "",
           output_fields: list[str] | None = None, search_params: dict | None = None,
           batch_size: int = 256) -> list[list[dict]]:
    """Top-k hits per query vector: [{"product_id", "score", **fields}], best first."""
    prepared = _prepared(client, name)
    params = search_params if search_params is not None else prepared
    results: list[list[dict]] = []
    for start in range(0, len(vectors), batch_size):
        batch = [v.astype(np.float32).tolist() for v in vectors[start:start + batch_size]]
        hits = client.search(name, data=batch, limit=k, filter=filter_expr,
                             output_fields=output_fields or [],
                             search_params={"params": params})
        results += [[{"product_id": h["product_id"] if "product_id" in h else h["id"],
                      "score": float(h["distance"]), **h.get("entity", {})} for h in row]
                    for row in hits]
    return results


def _prepared(client, name: str) -> dict:
    """Load state and search params checked once per client and name (saves ~4 RPCs per
    single-query search); ``point_alias`` clears it."""
    cache = _PREPARED.setdefault(client, {})
    if name not in cache:
        ensure_loaded(client, name)
        cache[name] = _search_params(client, name)
    return cache[name]


def _search_params(client, name: str) -> dict:
    target = resolve_alias(client, name)
    index = client.describe_index(target, "vector")
    return dict(DEFAULT_SEARCH_PARAMS.get(index.get("index_type", "FLAT"), {}))


def resolve_alias(client, name: str) -> str:
    """The collection an alias points at (``name`` itself if it is not an alias)."""
    if name not in client.list_aliases().get("aliases", []):
        return name
    return client.describe_alias(name)["collection_name"]


def aliases_of(client, name: str) -> list[str]:
    return list(client.list_aliases(name).get("aliases", []))


def point_alias(client, alias: str, name: str) -> str | None:
    """Point ``alias`` at ``name``; return the collection it pointed at before."""
    _PREPARED.pop(client, None)
    previous = resolve_alias(client, alias)
    if previous == alias:
        client.create_alias(name, alias)
        previous = None
    else:
        client.alter_alias(name, alias)
    log.info("alias %s -> %s (was %s)", alias, name, previous)
    return previous


def drop_collection(client, name: str) -> None:
    """Drop a collection unless an alias points at it (Milvus Lite would allow it)."""
    aliases = aliases_of(client, name)
    if aliases:
        raise MilvusIndexError(f"refusing to drop {name}: alias(es) {', '.join(aliases)} "
                               "point at it; point them elsewhere first")
    client.drop_collection(name)
    log.info("dropped collection %s", name)


def prune(client, prefix: str, keep: int) -> list[str]:
    """Drop the oldest ``prefix`` collections beyond the newest ``keep``, never an aliased one.

    Age is the model version in the name (``<prefix>_m<version>_...``).
    """
    ours = [n for n in client.list_collections() if n.startswith(f"{prefix}_m")]
    ours.sort(key=_version_of, reverse=True)
    dropped = []
    for name in ours[keep:]:
        if not aliases_of(client, name):
            drop_collection(client, name)
            dropped.append(name)
    return dropped


def _version_of(name: str) -> tuple[int, str]:
    match = re.search(r"_m(\d+)_", name)
    return (int(match.group(1)) if match else -1, name)
