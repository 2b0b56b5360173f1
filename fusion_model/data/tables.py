"""Read and write the catalog's tables in parquet, CSV or JSON Lines."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator

import pandas as pd

from fusion_model import storage
from fusion_model.errors import CatalogError, StorageError

FORMATS = ("parquet", "csv", "jsonl")


TABLES = ("products", "queries", "judgments")


def table_files(root: str) -> list[str]:
    """The table files present at ``root`` (``name.{parquet,csv,jsonl}``), found by asking
    for each candidate: the catalog's photos (millions, maybe) are never listed. An empty
    result lists ``root`` to tell a missing directory from one without tables."""
    present = [candidate for name in TABLES for fmt in FORMATS
               if storage.exists(candidate := storage.join(root, f"{name}.{fmt}"))]
    if present:
        return present
    return storage.list_files(root)


def find_table(root: str, name: str, files: list[str]) -> str | None:
    """The URI of ``name.{parquet,csv,jsonl}`` under ``root``; error if several exist."""
    candidates = [storage.join(root, f"{name}.{fmt}") for fmt in FORMATS]
    present = [c for c in candidates if c in set(files)]
    if len(present) > 1:
        raise CatalogError(present[0], f"several {name} tables found ({', '.join(present)})",
                           detail="keep exactly one of them")
    return present[0] if present else None


def read_table(uri: str, text_columns: tuple[str, ...]) -> pd.DataFrame:
    """Read one table; ``text_columns`` are kept as strings exactly as written."""
    if uri.endswith(".parquet") and os.path.isfile(uri) and os.path.getsize(uri):
        return _read_parquet(uri, uri)  # by path: no copy of the file's bytes
    try:
        data = storage.read_bytes(uri)
    except StorageError as exc:
        raise CatalogError(uri, "file cannot be read", detail=str(exc)) from exc
    if not data.strip():
        raise CatalogError(uri, "file is empty")
    fmt = uri.rsplit(".", 1)[-1]
    if fmt == "parquet":
        return _read_parquet(uri, data)
    text = _decode_utf8(uri, data)
    if fmt == "csv":
        return _read_csv(uri, text, text_columns)
    return _read_jsonl(uri, text)


def iter_table(uri: str, text_columns: tuple[str, ...], rows: int) -> Iterator[pd.DataFrame]:
    """``uri``'s rows, ``rows`` at a time, each frame indexed by its global row positions
    (always at least one frame, empty for an empty table).

    A local parquet file is decoded a batch at a time, so memory follows ``rows``, not the
    table; CSV, JSON Lines and S3 objects are read whole (their checks need the whole text)
    and then sliced. Large catalogs belong in parquet.
    """
    if uri.endswith(".parquet") and not storage.is_uri(uri):
        yield from _iter_local_parquet(uri, rows)
        return
    table = read_table(uri, text_columns).reset_index(drop=True)
    for start in range(0, max(len(table), 1), rows):
        yield table.iloc[start:start + rows]


def _iter_local_parquet(uri: str, rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        empty = os.path.getsize(uri) == 0
    except OSError as exc:
        raise CatalogError(uri, "file cannot be read", detail=str(exc)) from exc
    if empty:
        raise CatalogError(uri, "file is empty")
    try:
        parquet = pq.ParquetFile(uri)
        _check_column_names(uri, parquet.schema_arrow.names)
        start = 0
        for batch in parquet.iter_batches(batch_size=rows):
            frame = pa.Table.from_batches([batch], schema=parquet.schema_arrow).to_pandas()
            frame.index = pd.RangeIndex(start, start + len(frame))
            start += len(frame)
            yield frame
    except CatalogError:
        raise
    except Exception as exc:
        raise CatalogError(uri, "not a readable parquet file",
                           detail=str(exc).splitlines()[0]) from exc
    if start == 0:
        yield parquet.schema_arrow.empty_table().to_pandas()


def _decode_utf8(uri: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CatalogError(uri, "text is not valid UTF-8",
                           detail=f"byte {exc.start} (line {line}); re-encode the file as UTF-8"
                           ) from exc


def _read_parquet(uri: str, data: bytes | str) -> pd.DataFrame:
    """``data``: the file's bytes, or its local path."""
    import pyarrow.parquet as pq

    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        names = pq.ParquetFile(source).schema_arrow.names
    except Exception as exc:
        raise CatalogError(uri, "not a readable parquet file",
                           detail=str(exc).splitlines()[0]) from exc
    _check_column_names(uri, names)
    try:
        return pd.read_parquet(io.BytesIO(data) if isinstance(data, bytes) else data)
    except Exception as exc:
        raise CatalogError(uri, "not a readable parquet file",
                           detail=str(exc).splitlines()[0]) from exc


def _read_csv(uri: str, text: str, text_columns: tuple[str, ...]) -> pd.DataFrame:
    """Text columns stay verbatim strings; other columns get numbers where they parse."""
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except Exception as exc:
        raise CatalogError(uri, "not a readable CSV file", detail=str(exc)) from exc
    _check_csv_shape(uri, text)
    for column in df.columns:
        if column not in text_columns:
            df[column] = _infer_numeric(df[column].replace("", None))
    return df


def _check_csv_shape(uri: str, text: str) -> None:
    """Every header cell named once, every row as many fields as the header: pandas would
    rename a repeated column (title.1), name an empty one "Unnamed: 2", read a row with one
    field too many as an index (shifting every value) and fill a short row."""
    rows = (row for row in csv.reader(io.StringIO(text.lstrip("\ufeff"))) if row)
    header = next(rows, [])
    _check_column_names(uri, header)
    wrong = [(number, len(row)) for number, row in enumerate(rows, start=1)
             if len(row) != len(header)]
    if wrong:
        first, fields = wrong[0]
        raise CatalogError(uri, f"every row must have the header's {len(header)} fields",
                           rows=[number for number, _ in wrong],
                           detail=f"row {first} has {fields}; quote values that hold commas")


def _check_column_names(uri: str, names: list[str]) -> None:
    empty = [str(i) for i, name in enumerate(names, start=1) if not str(name).strip()]
    if empty:
        raise CatalogError(uri, "every column needs a name",
                           detail=f"column {', '.join(empty)} of the header has none")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CatalogError(uri, "each column name must appear once in the header",
                           detail=f"repeated: {', '.join(repeated)}")


def _infer_numeric(values: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(values)
    except (ValueError, TypeError):
        return values


class _RepeatedKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object's keys, refused when one repeats (json keeps the last silently)."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise _RepeatedKeyError(", ".join(repeated))
    return dict(pairs)


def _read_jsonl(uri: str, text: str) -> pd.DataFrame:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise CatalogError(uri, "line is not valid JSON", rows=[number],
                               detail=exc.msg) from exc
        except _RepeatedKeyError as exc:
            raise CatalogError(uri, "each key must appear once in a line", rows=[number],
                               detail=f"repeated: {exc}") from None
        if not isinstance(record, dict):
            raise CatalogError(uri, "line is not a JSON object", rows=[number])
        records.append(record)
    return pd.DataFrame.from_records(records)


def write_table(df: pd.DataFrame, uri: str) -> None:
    """Write ``df`` in the format named by the URI's extension."""
    fmt = uri.rsplit(".", 1)[-1]
    if fmt == "parquet":
        buffer = io.BytesIO()
        df.to_parquet(buffer, index=False)
        data = buffer.getvalue()
    elif fmt == "csv":
        data = df.to_csv(index=False).encode("utf-8")
    elif fmt == "jsonl":
        data = df.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8")
    else:
        raise ValueError(f"{uri}: unknown table format {fmt!r}; use one of {FORMATS}")
    storage.write_bytes(uri, data)
