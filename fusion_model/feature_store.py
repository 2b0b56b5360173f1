"""Features on disk, read a batch at a time: memory that does not grow with the catalog.

A *shard set* is a directory of shards; a shard holds one ``.npy`` file per tensor name
(``shard-<id>.<name>.npy``, rows along the first axis) and a ``shard-<id>.json`` written
last (its keys and dtypes: a shard without it does not exist, so a crash leaves nothing
half-written). Rows are read with ``os.pread`` at their offsets: neither a whole shard nor
a memory map is held, so a process's resident memory stays at what one batch needs.

``FeatureCache`` keys the shards of one encoder fingerprint by item key through an
append-only SQLite index (``index.sqlite``): a lookup is one indexed query, and a new
shard adds its keys; nothing is rebuilt (a shard written by a process that died before
indexing it is indexed on the next open). ``Column`` is a lazy (N, ...) view over rows of
one or more shards: ``column[indices]`` reads those rows as a tensor.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from fusion_model.errors import BadInputError
from fusion_model.progress import progress_bar
from fusion_model.runtime import prefetched

SHARD_ROWS = 2048
INDEX_FILE = "index.sqlite"
_LOOKUP_CHUNK = 900   # keys per SQLite IN (...) query (SQLite allows 999 parameters)
_STORED_AS = {torch.bfloat16: (np.int16, "bfloat16"), torch.float16: (np.float16, "float16"),
              torch.float32: (np.float32, "float32"), torch.bool: (np.bool_, "bool"),
              torch.int64: (np.int64, "int64"), torch.int32: (np.int32, "int32"),
              torch.uint8: (np.uint8, "uint8")}
_TORCH_DTYPES = {name: dtype for dtype, (_, name) in _STORED_AS.items()}


class CorruptShardError(BadInputError):
    """A feature shard on disk that is truncated or not what its index says."""


class ShardSet:
    """A directory of shards of named tensors; see the module docstring."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory).expanduser()
        self._headers: dict[tuple[str, str], tuple[int, tuple[int, ...], np.dtype]] = {}
        self._dtypes: dict[str, dict[str, str]] = {}

    def write(self, tensors: dict[str, torch.Tensor], keys: Sequence[str] | None = None) -> str:
        """Store one shard; its metadata file goes last. Returns the shard's name."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex[:12]}"
        dtypes = {}
        for field, tensor in tensors.items():
            numpy_dtype, dtype_name = _STORED_AS[tensor.dtype]
            array = tensor.detach().cpu().contiguous()
            if tensor.dtype == torch.bfloat16:
                array = array.view(torch.int16)
            np.save(self.dir / f"{name}.{field}.npy", array.numpy().view(numpy_dtype))
            dtypes[field] = dtype_name
        rows = len(next(iter(tensors.values())))
        meta = {"rows": rows, "dtypes": dtypes, "keys": list(keys) if keys is not None else None}
        tmp = self.dir / f".{name}.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(self.dir / f"{name}.json")
        return name

    def meta(self, shard: str) -> dict:
        path = self.dir / f"{shard}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CorruptShardError(f"feature shard {path} cannot be read ({exc}); delete "
                                    f"{self.dir} to start afresh") from exc

    def shards(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("shard-*.json")) if self.dir.is_dir() \
            else []

    def read_rows(self, shard: str, field: str, rows: np.ndarray,
                  dtype: torch.dtype) -> torch.Tensor:
        """Rows of one field of one shard as ``dtype`` (the field's, from ``dtype_of``);
        runs of consecutive rows are read at once."""
        offset, shape, stored = self._header(shard, field)
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * stored.itemsize
        out = np.empty((len(rows), *shape[1:]), dtype=stored)
        flat = out.reshape(len(rows), -1).view(np.uint8) if row_bytes else None
        path = self.dir / f"{shard}.{field}.npy"
        with _opened(path) as fd:
            for first, last, at in _runs(rows):
                if last >= shape[0] or first < 0:
                    raise CorruptShardError(f"{path} has {shape[0]} rows; row {last} asked")
                size = (last - first + 1) * row_bytes
                data = os.pread(fd, size, offset + first * row_bytes)
                if len(data) != size:
                    raise CorruptShardError(f"{path} is truncated; delete {self.dir} to "
                                            "start afresh")
                if flat is not None:
                    flat[at:at + last - first + 1] = np.frombuffer(data, np.uint8).reshape(
                        last - first + 1, -1)
        return _to_torch(out, dtype)

    def dtype_of(self, shard: str, field: str) -> torch.dtype:
        if shard not in self._dtypes:
            self._dtypes[shard] = self.meta(shard)["dtypes"]
        return _TORCH_DTYPES[self._dtypes[shard][field]]

    def row_shape(self, shard: str, field: str) -> tuple[int, ...]:
        return self._header(shard, field)[1][1:]

    def _header(self, shard: str, field: str) -> tuple[int, tuple[int, ...], np.dtype]:
        if (shard, field) not in self._headers:
            path = self.dir / f"{shard}.{field}.npy"
            try:
                with open(path, "rb") as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                        else np.lib.format.read_array_header_2_0
                    shape, fortran, dtype = read_header(handle)
                    offset = handle.tell()
            except (OSError, ValueError) as exc:
                raise CorruptShardError(f"feature shard {path} cannot be read ({exc}); "
                                        f"delete {self.dir} to start afresh") from exc
            if fortran:
                raise CorruptShardError(f"{path} is not in row order")
            self._headers[(shard, field)] = (offset, tuple(shape), np.dtype(dtype))
        return self._headers[(shard, field)]


class Column:
    """A lazy (N, ...) tensor: ``column[index]`` (an int array, list, slice or tensor of row
    numbers, optionally followed by more indices) reads just those rows."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        rest = ()
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
        rows = _row_numbers(index, len(self))
        out = self.read(rows)
        return out[(slice(None), *rest)] if rest else out

    def read(self, rows: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def chunks(self, size: int) -> Iterable[torch.Tensor]:
        for start in range(0, len(self), size):
            yield self[start:start + size]


class StoredColumn(Column):
    """Rows of a shard set: product i is row ``rows[i]`` of shard ``shards[shard_ids[i]]``;
    a ``shard_id`` of -1 is a row of zeros (an item with nothing stored, e.g. no photo)."""

    def __init__(self, store: ShardSet, field: str, shards: list[str], shard_ids: np.ndarray,
                 rows: np.ndarray, row_shape: tuple[int, ...] | None = None,
                 dtype: torch.dtype | None = None):
        self.store, self.field, self.shards = store, field, shards
        self.shard_ids, self.rows = shard_ids, rows
        if shards:
            row_shape = store.row_shape(shards[0], field)
            dtype = store.dtype_of(shards[0], field)
        self.shape = (len(rows), *row_shape)
        self.dtype = dtype

    def read(self, rows: np.ndarray) -> torch.Tensor:
        out = torch.zeros((len(rows), *self.shape[1:]), dtype=self.dtype)
        shard_ids = self.shard_ids[rows]
        for shard_id in np.unique(shard_ids):
            if shard_id < 0:
                continue
            at = np.flatnonzero(shard_ids == shard_id)
            out[torch.from_numpy(at)] = self.store.read_rows(
                self.shards[shard_id], self.field, self.rows[rows[at]], self.dtype)
        return out


class ConcatColumn(Column):
    """Columns side by side along dimension 1 (CNN maps and colour histograms)."""

    def __init__(self, parts: list[Column]):
        self.parts = parts
        first = parts[0].shape
        self.shape = (first[0], sum(p.shape[1] for p in parts), *first[2:])
        self.dtype = parts[0].dtype

    def read(self, rows: np.ndarray) -> torch.Tensor:
        return torch.cat([part.read(rows).to(self.dtype) for part in self.parts], dim=1)


class TensorColumn(Column):
    """An in-memory tensor as a Column (small things: queries, tests)."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.shape, self.dtype = tensor, tuple(tensor.shape), tensor.dtype

    def read(self, rows: np.ndarray) -> torch.Tensor:
        return self.tensor[torch.from_numpy(rows)]


Table = dict[str, Column]


class FeatureCache:
    """Shards of features keyed by item key, under one directory per encoder fingerprint."""

    def __init__(self, root: str | Path, namespace: str, fingerprint: str):
        self.dir = Path(root).expanduser() / namespace / fingerprint
        self.store = ShardSet(self.dir)
        self.stats = {"hits": 0, "computed": 0}

    @cached_property
    def _index(self) -> sqlite3.Connection:
        self.dir.mkdir(parents=True, exist_ok=True)
        index = sqlite3.connect(self.dir / INDEX_FILE, timeout=600, isolation_level=None)
        index.execute("CREATE TABLE IF NOT EXISTS item (key TEXT PRIMARY KEY, shard TEXT, "
                      "row INTEGER) WITHOUT ROWID")
        index.execute("CREATE TABLE IF NOT EXISTS shard (name TEXT PRIMARY KEY)")
        indexed = {name for (name,) in index.execute("SELECT name FROM shard")}
        for shard in self.store.shards():   # written, but its writer died before indexing
            if shard not in indexed:
                meta = self.store.meta(shard)
                # a shard of the earlier format (a .pt file and a bare key list) is passed
                # over for good: its keys are computed again into the new format
                keys = meta.get("keys") or [] if isinstance(meta, dict) else []
                self._add_to_index(index, shard, keys)
        return index

    @staticmethod
    def _add_to_index(index: sqlite3.Connection, shard: str, keys: list[str]) -> None:
        with index:  # one transaction: the shard's keys and its name together
            index.execute("BEGIN IMMEDIATE")
            index.executemany("INSERT OR IGNORE INTO item VALUES (?, ?, ?)",
                              ((key, shard, row) for row, key in enumerate(keys)))
            index.execute("INSERT OR IGNORE INTO shard VALUES (?)", (shard,))

    def locate(self, keys: Sequence[str | None]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(shard names, shard id per key, row per key); -1 for keys not stored (or None).
        Looked up ``_LOOKUP_CHUNK`` keys at a time: memory beyond the two arrays is flat."""
        shard_ids = np.full(len(keys), -1, dtype=np.int32)
        rows = np.zeros(len(keys), dtype=np.int64)
        number: dict[str, int] = {}
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[start:start + _LOOKUP_CHUNK]
            wanted = list({k for k in chunk if k is not None})
            if not wanted:
                continue
            found = {key: (shard, row) for key, shard, row in self._index.execute(
                f"SELECT key, shard, row FROM item WHERE key IN ({','.join('?' * len(wanted))})",
                wanted)}
            for offset, key in enumerate(chunk):
                if key in found:
                    shard, row = found[key]
                    shard_ids[start + offset] = number.setdefault(shard, len(number))
                    rows[start + offset] = row
        return list(number), shard_ids, rows

    def get(self, keys: Sequence[str | None], compute: Callable[..., dict[str, torch.Tensor]],
            batch_size: int, desc: str, progress: bool = True,
            prepare: Callable[[list[int]], object] | None = None) -> Table:
        """Columns of features for every key, computing (in batches) and storing only the
        missing ones; a ``None`` key reads as zeros. ``compute`` takes a batch's indices, or with
        ``prepare`` what ``prepare`` made of them: the next batches are prepared (photos
        read and decoded, say) in a background thread while ``compute`` runs."""
        shards, shard_ids, rows = self.locate(keys)
        missing = [i for i, k in enumerate(keys) if k is not None and shard_ids[i] < 0]
        unique_missing = list({keys[i]: i for i in missing}.values())
        self.stats = {"hits": sum(k is not None for k in keys) - len(missing),
                      "computed": len(unique_missing)}
        if unique_missing:
            for name, stored_keys in _compute_and_store(keys, unique_missing, compute,
                                                        batch_size, desc, progress, prepare,
                                                        self.store):
                self._add_to_index(self._index, name, stored_keys)
            shards, shard_ids, rows = self.locate(keys)
        return self.columns(shards, shard_ids, rows)

    def columns(self, shards: list[str], shard_ids: np.ndarray, rows: np.ndarray,
                empty: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None) -> Table:
        """Columns over the given rows; with no shard, zeros of ``empty``'s shapes."""
        if shards:
            fields = list(self.store.meta(shards[0])["dtypes"])
            return {f: StoredColumn(self.store, f, shards, shard_ids, rows) for f in fields}
        return {f: StoredColumn(self.store, f, [], shard_ids, rows, shape, dtype)
                for f, (shape, dtype) in (empty or {}).items()}


def _compute_and_store(keys, todo: list[int], compute, batch_size: int, desc: str,
                       progress: bool, prepare, store: ShardSet) -> Iterable[tuple[str, list]]:
    """Compute ``todo`` (indices into ``keys``) in batches; store a shard every
    ``SHARD_ROWS`` items and yield (shard name, its keys) once it is on disk."""
    shard_size = max(batch_size, SHARD_ROWS)
    shards = [todo[start:start + shard_size] for start in range(0, len(todo), shard_size)]
    batches = [[chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
               for chunk in shards]
    everything = iter([batch for shard in batches for batch in shard])
    inputs = prefetched(everything, prepare) if prepare else everything
    bar = progress_bar(total=len(todo), desc=desc, unit="item", show=progress)
    for chunk, shard_batches in zip(shards, batches):
        parts = []
        for batch in shard_batches:
            parts.append(compute(next(inputs)))
            bar.update(len(batch))
        stored_keys = [keys[i] for i in chunk]
        shard = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        yield store.write(shard, stored_keys), stored_keys
    bar.close()


def write_table(directory: str | Path, count: int,
                rows_of: Callable[[np.ndarray], dict[str, torch.Tensor]]) -> Table:
    """A table of ``count`` rows computed ``SHARD_ROWS`` at a time into ``directory``
    (scratch data such as frozen text tokens): columns read back from disk."""
    store = ShardSet(directory)
    shards, shard_ids, rows = [], np.zeros(count, dtype=np.int32), np.zeros(count, np.int64)
    for start in range(0, count, SHARD_ROWS):
        stop = min(count, start + SHARD_ROWS)
        shard_ids[start:stop], rows[start:stop] = len(shards), np.arange(stop - start)
        shards.append(store.write(rows_of(np.arange(start, stop))))
    fields = list(store.meta(shards[0])["dtypes"]) if shards else []
    return {f: StoredColumn(store, f, shards, shard_ids, rows) for f in fields}


def _row_numbers(index, length: int) -> np.ndarray:
    if isinstance(index, slice):
        return np.arange(length)[index]
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    rows = np.asarray(index, dtype=np.int64).reshape(-1)
    return np.where(rows < 0, rows + length, rows)


def _runs(rows: np.ndarray) -> Iterable[tuple[int, int, int]]:
    """(first row, last row, position in ``rows``) of each run of consecutive rows."""
    if not len(rows):
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for begin, end in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
        yield int(rows[begin]), int(rows[end - 1]), int(begin)


def _to_torch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


@contextlib.contextmanager
def _opened(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CorruptShardError(f"feature shard {path} is missing ({exc}); delete "
                                f"{path.parent} to start afresh") from exc
    try:
        yield fd
    finally:
        os.close(fd)
