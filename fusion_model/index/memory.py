"""An in-memory ``VectorIndex`` on NumPy: exact search, the same semantics as Milvus.

For tests, examples and catalogs small enough for one process: ``index.backend=memory``
with any ``index.uri`` (stores with the same URI share their collections within a
process; nothing is written to disk). Search is exact (every index type is a flat scan),
so ANN recall is 1. Filters are the expression language ``index.filters.to_milvus``
writes, evaluated here without Milvus.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from fusion_model.errors import InvalidFilterError, VectorIndexError
from fusion_model.index.base import IndexBackend
from fusion_model.index.filters import Token, tokens

log = logging.getLogger(__name__)


@dataclass
class _Collection:
    dim: int
    attribute_fields: list[str]
    metric: str
    rows: dict[str, dict] = field(default_factory=dict)  # id -> vector, content_hash, fields

    @property
    def fields(self) -> list[str]:
        return ["product_id", "vector", "content_hash", *self.attribute_fields]


@dataclass
class _Store:
    collections: dict[str, _Collection] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


def forget(uri: str) -> None:
    """Drop the store at ``uri`` (tests start afresh with it)."""
    with _STORES_LOCK:
        _STORES.pop(uri, None)


class MemoryIndex(IndexBackend, name="memory"):
    """Collections in this process's memory, keyed by the store's URI."""

    INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ")  # all exact here
    METRICS = ("IP", "COSINE")

    def __init__(self, store: _Store) -> None:
        self.store = store

    @classmethod
    @contextlib.contextmanager
    def open(cls, uri: str, token: str = "") -> Iterator[MemoryIndex]:
        with _STORES_LOCK:
            store = _STORES.setdefault(uri, _Store())
        yield cls(store)

    # -- collections and aliases -------------------------------------------------------

    def create_collection(self, name: str, dim: int, attribute_fields: list[str],
                          index_type: str = "HNSW", metric: str = "IP",
                          index_params: dict | None = None) -> None:
        if index_type.upper() not in self.INDEX_TYPES:
            raise VectorIndexError(f"index type {index_type!r}: use one of "
                                   f"{', '.join(self.INDEX_TYPES)}")
        if metric not in self.METRICS:
            raise VectorIndexError(f"metric {metric!r}: use {' or '.join(self.METRICS)}")
        with self.store.lock:
            self.store.collections.setdefault(name, _Collection(dim, list(attribute_fields),
                                                                metric))

    def has_collection(self, name: str) -> bool:
        return name in self.store.collections

    def list_collections(self) -> list[str]:
        return list(self.store.collections)

    def _get(self, name: str) -> _Collection:
        target = self.resolve_alias(name)
        try:
            return self.store.collections[target]
        except KeyError:
            raise VectorIndexError(f"collection {name!r} does not exist") from None

    def fields(self, name: str) -> list[str]:
        return self._get(name).fields

    def ensure_loaded(self, name: str) -> None:
        self._get(name)

    def resolve_alias(self, name: str) -> str:
        return self.store.aliases.get(name, name)

    def aliases_of(self, name: str) -> list[str]:
        return [alias for alias, target in self.store.aliases.items() if target == name]

    def point_alias(self, alias: str, name: str) -> str | None:
        with self.store.lock:
            self._get(name)
            previous = self.store.aliases.get(alias)
            self.store.aliases[alias] = name
        log.info("alias %s -> %s (was %s)", alias, name, previous)
        return previous

    def drop_alias(self, alias: str) -> None:
        with self.store.lock:
            self.store.aliases.pop(alias, None)

    def drop_collection(self, name: str) -> None:
        with self.store.lock:
            self.refuse_drop_if_aliased(name)
            self.store.collections.pop(name, None)
        log.info("dropped collection %s", name)

    # -- rows --------------------------------------------------------------------------

    def import_rows(self, name: str, ids: list[str], vectors: np.ndarray, hashes: list[str],
                    attributes: dict[str, list[str]], import_uri: str,
                    timeout: float = 3600) -> None:
        raise VectorIndexError(f"{name}: the memory backend has no bulk import; leave "
                               "index.import_uri empty")

    def settle_imports(self, name: str, timeout: float = 3600) -> None:
        return None

    def write_rows(self, name: str, ids: list[str], vectors: np.ndarray, hashes: list[str],
                   attributes: dict[str, list[str]], overwrite: bool = True) -> None:
        collection = self._get(name)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != collection.dim:
            raise VectorIndexError(f"{name}: vectors of shape {vectors.shape}, the collection "
                                   f"holds {collection.dim} dimensions")
        with self.store.lock:
            for i, pid in enumerate(ids):
                collection.rows[pid] = {
                    "vector": vectors[i].copy(), "content_hash": hashes[i],
                    **{f: _text(values[i]) for f, values in attributes.items()
                       if f in collection.attribute_fields}}

    def copy_rows(self, source: str, target: str, keep_ids: set[str],
                  fields: list[str], replace: dict[str, dict] | None = None,
                  stored: set[str] | None = None) -> int:
        origin, destination = self._get(source), self._get(target)
        replace = replace or {}
        copied = 0
        with self.store.lock:
            for pid in keep_ids:  # the kept rows alone, as Milvus reads them
                row = origin.rows.get(pid)
                if row is None:
                    continue
                values = {f: row.get(f, "") for f in fields if f in destination.fields}
                values |= {f: _text(v) for f, v in replace.get(pid, {}).items()
                           if f in destination.attribute_fields}
                destination.rows[pid] = {"vector": row["vector"].copy(),
                                         "content_hash": row["content_hash"], **values}
                copied += 1
        return copied

    def delete_ids(self, name: str, ids: list[str]) -> None:
        collection = self._get(name)
        with self.store.lock:
            for pid in ids:
                collection.rows.pop(pid, None)

    def existing_hashes(self, name: str, ids: list[str] | None = None) -> dict[str, str]:
        rows = self._get(name).rows
        chosen = rows if ids is None else [pid for pid in ids if pid in rows]
        return {pid: rows[pid]["content_hash"] for pid in chosen}

    def count(self, name: str, ids: list[str] | None = None) -> int:
        rows = self._get(name).rows
        return len(rows) if ids is None else sum(pid in rows for pid in set(ids))

    def wait_until_indexed(self, name: str, timeout: float = 600, every: float = 2) -> bool:
        self._get(name)
        return True  # exact search: nothing is built in the background

    def vectors_of(self, name: str, ids: list[str]) -> tuple[list[str], np.ndarray]:
        rows = self._get(name).rows
        found = [pid for pid in ids if pid in rows]
        dim = self._get(name).dim
        vectors = np.array([rows[pid]["vector"] for pid in found], dtype=np.float32)
        return found, vectors.reshape(len(found), dim)

    def rows_of(self, name: str, ids: list[str], fields: list[str]) -> dict[str, dict]:
        collection = self._get(name)
        wanted = [f for f in fields if f in collection.fields]
        return {pid: {f: collection.rows[pid].get(f, "") for f in wanted}
                for pid in ids if pid in collection.rows}

    def search(self, name: str, vectors: np.ndarray, k: int, filter_expr: str = "",
               output_fields: list[str] | None = None, search_params: dict | None = None,
               batch_size: int = 256) -> list[list[dict]]:
        """Exact top-``k`` by inner product (cosine: on normalised vectors)."""
        collection = self._get(name)
        keep = matcher(filter_expr, collection.attribute_fields)
        ids = [pid for pid, row in collection.rows.items() if keep(row)]
        queries = np.asarray(vectors, dtype=np.float32).reshape(-1, collection.dim)
        if not ids:
            return [[] for _ in queries]
        stored = np.stack([collection.rows[pid]["vector"] for pid in ids])
        if collection.metric == "COSINE":
            stored = _normalised(stored)
            queries = _normalised(queries)
        scores = queries @ stored.T  # (Q, N)
        top = min(k, len(ids))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
        shown = [f for f in (output_fields or []) if f in collection.fields]
        return [[{"product_id": ids[j], "score": float(scores[q, j]),
                  **{f: collection.rows[ids[j]].get(f, "") for f in shown}}
                 for j in row] for q, row in enumerate(order)]


def _normalised(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


# -- the filter language of index.filters.to_milvus --------------------------------------

def matcher(expression: str, fields: list[str]):
    """A predicate over a stored row for ``expression``; InvalidFilterError when it is not
    the language ``to_milvus`` writes or names a field the collection does not hold."""
    if not expression or not expression.strip():
        return lambda row: True
    try:
        parser = _Evaluator(tokens(expression), set(fields))
        predicate = parser.parse()
    except ValueError as error:
        raise InvalidFilterError(expression, str(error), ["product_id", *fields]) from None
    return predicate


class _Evaluator:
    """Recursive descent over ``or`` > ``and`` > group or condition, building closures."""

    def __init__(self, items: list[Token], fields: set[str]):
        self.items, self.fields, self.pos = items, fields, 0

    def parse(self):
        predicate = self._or()
        if self.pos != len(self.items):
            raise ValueError(f"unexpected {self.items[self.pos].text!r}")
        return predicate

    def _peek(self) -> Token | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def _take(self) -> Token:
        token = self._peek()
        if token is None:
            raise ValueError("the expression ends too early")
        self.pos += 1
        return token

    def _word(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token.kind != "string" and token.text.lower() == word:
            self.pos += 1
            return True
        return False

    def _or(self):
        parts = [self._and()]
        while self._word("or"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else lambda row: any(p(row) for p in parts)

    def _and(self):
        parts = [self._factor()]
        while self._word("and"):
            parts.append(self._factor())
        return parts[0] if len(parts) == 1 else lambda row: all(p(row) for p in parts)

    def _factor(self):
        token = self._peek()
        if token is not None and token.text == "(":
            self.pos += 1
            inner = self._or()
            if self._take().text != ")":
                raise ValueError("a '(' is not closed")
            return inner
        return self._condition()

    def _condition(self):
        name = self._take()
        if name.kind != "word" or name.text not in self.fields:
            raise ValueError(f"unknown field {name.text!r}")
        field_name = name.text
        if self._word("not"):
            if not self._word("in"):
                raise ValueError("expected 'in' after 'not'")
            values = self._list()
            return lambda row: row.get(field_name, "") not in values
        if self._word("in"):
            values = self._list()
            return lambda row: row.get(field_name, "") in values
        operator = self._take().text
        value = self._string()
        if operator == "==":
            return lambda row: row.get(field_name, "") == value
        if operator == "!=":
            return lambda row: row.get(field_name, "") != value
        raise ValueError(f"unknown operator {operator!r}")

    def _list(self) -> set[str]:
        if self._take().text != "[":
            raise ValueError("expected '['")
        values = {self._string()}
        while (token := self._take()).text == ",":
            values.add(self._string())
        if token.text != "]":
            raise ValueError("expected ']'")
        return values

    def _string(self) -> str:
        token = self._take()
        if token.kind != "string":
            raise ValueError(f"expected a quoted value, found {token.text!r}")
        body = token.text[1:-1]
        out, escaped = [], False
        for char in body:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        return "".join(out)
