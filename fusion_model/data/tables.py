"""Read and write the catalog's tables in parquet, CSV or JSON Lines."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd

from fusion_model import storage
from fusion_model.errors import CatalogError, StorageError

FORMATS = ("parquet", "csv", "jsonl")


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


def _decode_utf8(uri: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CatalogError(uri, "text is not valid UTF-8",
                           detail=f"byte {exc.start} (line {line}); re-encode the file as UTF-8"
                           ) from exc


def _read_parquet(uri: str, data: bytes) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:
        raise CatalogError(uri, "not a readable parquet file", detail=str(exc)) from exc


def _read_csv(uri: str, text: str, text_columns: tuple[str, ...]) -> pd.DataFrame:
    """Text columns stay verbatim strings; other columns get numbers where they parse."""
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except Exception as exc:
        raise CatalogError(uri, "not a readable CSV file", detail=str(exc)) from exc
    _check_unique_header(uri, text)
    for column in df.columns:
        if column not in text_columns:
            df[column] = _infer_numeric(df[column].replace("", None))
    return df


def _check_unique_header(uri: str, text: str) -> None:
    """pandas renames a repeated column (title, title.1): say so instead of guessing."""
    header = next(csv.reader(io.StringIO(text.lstrip("\ufeff"))), [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise CatalogError(uri, "each column name must appear once in the header",
                           detail=f"repeated: {', '.join(repeated)}")


def _infer_numeric(values: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(values)
    except (ValueError, TypeError):
        return values


def _read_jsonl(uri: str, text: str) -> pd.DataFrame:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CatalogError(uri, "line is not valid JSON", rows=[number],
                               detail=exc.msg) from exc
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
