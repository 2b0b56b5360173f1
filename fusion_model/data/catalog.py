"""The catalog format: one loader, its contract checks, and the content fingerprint.

A catalog is a directory (local path or ``s3://bucket/prefix``) holding
``products.*``, and optionally ``queries.*`` + ``judgments.*`` (parquet, csv or jsonl).
See docs/catalog.md.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from fusion_model import storage
from fusion_model.data.splits import SPLITS
from fusion_model.data.tables import find_table, read_table, table_files
from fusion_model.errors import CatalogError
from fusion_model.memory import release_free_memory

log = logging.getLogger(__name__)

PRODUCT_TEXT_COLUMNS = ("product_id", "title", "description", "image")
QUERY_TEXT_COLUMNS = ("query_id", "text", "split")
JUDGMENT_TEXT_COLUMNS = ("query_id", "product_id")
GRADES = (0, 1, 2, 3)
MAX_GRADE = 3
# Product ids reach Milvus primary keys, expressions and file names: a safe character set.
MAX_IMAGE_URI_BYTES = 512  # the index's VARCHAR length for image_uri
PRODUCT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,127}"


@dataclass(frozen=True)
class Catalog:
    """A loaded catalog: three typed data frames plus where they came from.

    products:  product_id (str), title (str), description (str), image (str | None, as
               written), image_uri (str | None, resolved), then attribute columns.
    queries:   query_id (str), text (str), split (train/val/test), then extra columns.
    judgments: query_id (str), product_id (str), grade (int 0-3).
    """

    uri: str
    products: pd.DataFrame
    queries: pd.DataFrame
    judgments: pd.DataFrame
    files: dict[str, str] = field(default_factory=dict)

    @property
    def attribute_columns(self) -> list[str]:
        core = {*PRODUCT_TEXT_COLUMNS, "image_uri"}
        return [c for c in self.products.columns if c not in core]

    @property
    def has_queries(self) -> bool:
        return not self.queries.empty

    @property
    def max_grade(self) -> int:
        """The highest judged grade present (the default relevance threshold); 3 if none."""
        grades = self.judgments["grade"]
        return int(grades.max()) if len(grades) and grades.max() > 0 else MAX_GRADE

    def queries_in(self, split: str) -> pd.DataFrame:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.queries[self.queries["split"] == split]

    def with_train_queries(self, n: int | None, seed: int = 0) -> Catalog:
        """This catalog with a seeded sample of ``n`` of its train queries (and their
        judgments) and every val and test query; itself when ``n`` is None or covers them
        all. A learning curve's point: the same catalog, fewer labelled queries."""
        if n is not None and n < 1:
            raise ValueError(f"train queries must be at least 1, got {n}")
        train = self.queries_in("train")["query_id"].to_numpy(dtype=object)
        if n is None or n >= len(train):
            return self
        kept = set(np.random.default_rng(seed).choice(train, size=n, replace=False))
        drop = set(train) - kept
        queries = self.queries[~self.queries["query_id"].isin(drop)].reset_index(drop=True)
        judgments = self.judgments[~self.judgments["query_id"].isin(drop)].reset_index(drop=True)
        return dataclasses.replace(self, queries=queries, judgments=judgments)

    def qrels(self, split: str | None = None, min_grade: int = 1) -> dict[str, dict[str, int]]:
        """``{query_id: {product_id: grade}}`` for judged pairs with grade >= min_grade."""
        judged = self.judgments[self.judgments["grade"] >= min_grade]
        if split is not None:
            judged = judged[judged["query_id"].isin(set(self.queries_in(split)["query_id"]))]
        relevance: dict[str, dict[str, int]] = {}
        for qid, pid, grade in judged[["query_id", "product_id", "grade"]].itertuples(index=False):
            relevance.setdefault(qid, {})[pid] = int(grade)
        return relevance

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 over the tables' rows and every image's content tag (MD5 / S3 ETag).

        Independent of where the catalog lives: the same catalog on disk and on S3 (single
        part uploads) has the same fingerprint.
        """
        digest = hashlib.sha256()
        digest.update(_frame_digest(self.products.drop(columns=["image_uri"]), "product_id"))
        digest.update(_frame_digest(self.queries, "query_id"))
        digest.update(_frame_digest(self.judgments, ["query_id", "product_id"]))
        with_image = self.products["image_uri"].notna().to_numpy()
        pids = self.products["product_id"].to_numpy(dtype=object)[with_image]
        uris = self.products["image_uri"].to_numpy(dtype=object)[with_image]
        order = np.argsort(pids, kind="stable")  # ids are unique: the (id, uri) order
        for start in range(0, len(order), storage.TAG_CHUNK):  # flat memory (core.py)
            chunk = order[start:start + storage.TAG_CHUNK]
            tags = storage.content_tag_list(uris[chunk].tolist())
            for pid, tag in zip(pids[chunk], tags):
                digest.update(f"{pid}\x1f{tag}\x1e".encode())
        return digest.hexdigest()

    def image_roots(self) -> list[str]:
        """Where this catalog's photos live: the catalog directory, plus the deepest folder
        (per bucket on S3) holding its photos elsewhere. The service serves photos from
        these roots only (a symlink or path leading out of them is refused)."""
        inside = self.uri.rstrip("/") + "/"  # where relative paths resolve
        elsewhere = [uri for uri in self.products["image_uri"].dropna()
                     if not uri.startswith(inside)]
        roots = [self.uri]
        local = [os.path.dirname(uri) for uri in elsewhere if not storage.is_s3(uri)]
        if local:
            roots.append(os.path.commonpath(local))
        by_bucket: dict[str, list[str]] = {}
        for uri in elsewhere:
            if storage.is_s3(uri):
                bucket, key = storage.split_s3(uri)
                by_bucket.setdefault(bucket, []).append(posixpath.dirname(key))
        roots += [f"s3://{bucket}/{posixpath.commonpath(keys)}".rstrip("/")
                  for bucket, keys in sorted(by_bucket.items())]
        return roots

    def summary(self) -> dict:
        """Counts a person wants to see first: sizes, splits, grades, attributes."""
        relevant = self.judgments[self.judgments["grade"] > 0]
        per_query = relevant.groupby("query_id").size()
        return {
            "uri": self.uri,
            "products": len(self.products),
            "products_with_image": int(self.products["image_uri"].notna().sum()),
            "attribute_columns": self.attribute_columns,
            "queries": {s: int((self.queries["split"] == s).sum()) for s in SPLITS},
            "judgments": {g: int((self.judgments["grade"] == g).sum()) for g in GRADES},
            "relevant_per_query_median": float(per_query.median()) if len(per_query) else 0.0,
        }


def _frame_digest(df: pd.DataFrame, key: str | list[str]) -> bytes:
    ordered = df.sort_values(key, kind="stable").reset_index(drop=True)
    digest = hashlib.sha256()
    for column in sorted(ordered.columns):
        values = ordered[column].map(lambda v: "\x00" if _is_missing(v) else str(v))
        digest.update(column.encode() + b"\x1d" + "\x1f".join(values).encode() + b"\x1e")
    return digest.digest()


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def load_catalog(uri: str) -> Catalog:
    """Read, type-check and cross-check a catalog directory (local or s3://).

    Raises CatalogError naming the file, the rows and the rule for any breach of the
    format contract; raises before anything else happens, so bad input changes nothing.
    """
    root = _normalise_root(uri)
    files = table_files(root)
    if not files:
        raise CatalogError(root, "catalog directory does not exist or is empty")
    products_uri = find_table(root, "products", files)
    if products_uri is None:
        raise CatalogError(root, "no products table",
                           detail="expected products.parquet, products.csv or products.jsonl")
    queries_uri = find_table(root, "queries", files)
    judgments_uri = find_table(root, "judgments", files)
    if (queries_uri is None) != (judgments_uri is None):
        present = queries_uri or judgments_uri
        raise CatalogError(present, "queries and judgments come together",
                           detail="add the missing table or remove this one")
    products = _load_products(products_uri, root)
    queries, judgments = empty_queries(), empty_judgments()
    if queries_uri and judgments_uri:
        queries = _load_queries(queries_uri)
        judgments = _load_judgments(judgments_uri, queries, products)
    tables = {"products": products_uri, "queries": queries_uri, "judgments": judgments_uri}
    release_free_memory()  # the decode's and the checks' temporaries
    log.info("loaded catalog %s: %d products, %d queries, %d judgments",
             root, len(products), len(queries), len(judgments))
    return Catalog(root, products, queries, judgments,
                   {k: v for k, v in tables.items() if v})


def _normalise_root(uri: str) -> str:
    uri = str(uri)
    if storage.is_s3(uri):
        return uri.rstrip("/")
    storage.storage_for(uri)  # a URI of another scheme (http://) is refused by name
    return os.path.abspath(os.path.expanduser(uri))


def _require_columns(df: pd.DataFrame, uri: str, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CatalogError(uri, f"missing required column(s) {', '.join(missing)}",
                           detail=f"found columns: {', '.join(map(str, df.columns))}")


def _rows(mask: pd.Series) -> list[int]:
    """1-based data row numbers where ``mask`` is true (CSV line = row + 1)."""
    return [int(i) + 1 for i in mask[mask].index]


def _check_ids(df: pd.DataFrame, uri: str, column: str) -> pd.Series:
    """Ids must be present and unique; numbers are accepted and read as strings."""
    ids = df[column]
    blank = ids.isna() | (ids.astype(str).str.strip() == "")
    if blank.any():
        raise CatalogError(uri, f"{column} must not be empty", rows=_rows(blank))
    ids = ids.astype(str)
    duplicated = ids.duplicated(keep=False)
    if duplicated.any():
        first = ids[duplicated].iloc[0]
        raise CatalogError(uri, f"{column} must be unique", rows=_rows(duplicated),
                           detail=f"{first!r} appears {int((ids == first).sum())} times")
    return ids


def check_product_ids(ids: pd.Series, uri: str) -> None:
    """Raise CatalogError naming the rows whose product_id leaves PRODUCT_ID_PATTERN."""
    bad = ~ids.astype(str).str.fullmatch(PRODUCT_ID_PATTERN)
    if bad.any():
        raise CatalogError(uri, "product_id may hold only letters, digits and _ . : @ + - "
                           "(starting with a letter or digit, at most 128 characters)",
                           rows=_rows(bad), detail=f"found {ids[bad].iloc[0]!r}")


def _text_column(df: pd.DataFrame, uri: str, column: str, allow_null: bool) -> pd.Series:
    values = df[column] if column in df.columns else pd.Series([""] * len(df), index=df.index)
    null = values.isna()
    if null.any() and not allow_null:
        raise CatalogError(uri, f"{column} must not be null", rows=_rows(null))
    non_text = ~null & ~values.map(lambda v: isinstance(v, str))
    if non_text.any():
        raise CatalogError(uri, f"{column} must be text", rows=_rows(non_text))
    return values.fillna("").astype(str)


def _load_products(uri: str, root: str) -> pd.DataFrame:
    df = read_table(uri, PRODUCT_TEXT_COLUMNS).reset_index(drop=True)
    _require_columns(df, uri, ("product_id", "title"))
    df["product_id"] = _check_ids(df, uri, "product_id")
    check_product_ids(df["product_id"], uri)
    df["title"] = _text_column(df, uri, "title", allow_null=False)
    df["description"] = _text_column(df, uri, "description", allow_null=True)
    images = [v.strip() or None for v in _text_column(df, uri, "image", allow_null=True)]
    _check_relative_images_stay_inside(images, df["product_id"].tolist(), uri)
    df["image"] = pd.Series(images, index=df.index, dtype=object)
    df["image_uri"] = pd.Series([v and resolve_image(root, v) for v in images],
                                index=df.index, dtype=object)
    _check_image_uris_fit(df, uri)
    ordered = ["product_id", "title", "description", "image", "image_uri"]
    return df[ordered + [c for c in df.columns if c not in ordered]]


def _check_relative_images_stay_inside(images: list[str | None], product_ids: list[str],
                                       uri: str) -> None:
    """A relative image path may not climb out of the catalog directory with '..'."""
    leaving = pd.Series([bool(image) and _is_relative(image) and climbs_out(image)
                         for image in images], dtype=bool)
    if leaving.any():
        first = int(leaving.to_numpy().argmax())
        raise CatalogError(uri, "a relative image path must stay inside the catalog "
                           "directory (no '..'); give an absolute path or an s3:// URI "
                           "for a photo elsewhere", rows=_rows(leaving),
                           detail=f"product {product_ids[first]}: found {images[first]!r}")


def _check_image_uris_fit(products: pd.DataFrame, uri: str) -> None:
    """A photo's resolved location must fit the index's text field whole (a cut path
    would point at another file, or none)."""
    too_long = products["image_uri"].map(
        lambda v: isinstance(v, str) and len(v.encode()) > MAX_IMAGE_URI_BYTES)
    if too_long.any():
        first = int(too_long.to_numpy().argmax())
        raise CatalogError(uri, f"an image location may be at most {MAX_IMAGE_URI_BYTES} "
                           "bytes of UTF-8 once resolved against the catalog directory "
                           "(the index stores it whole)", rows=_rows(too_long),
                           detail=f"product {products['product_id'].iloc[first]}: "
                                  f"{len(products['image_uri'].iloc[first].encode())} bytes")


def climbs_out(image: str) -> bool:
    """True for a path with a '..' step (slashes either way)."""
    return ".." in PurePosixPath(str(image).replace("\\", "/")).parts


def _is_relative(image: str) -> bool:
    """A path relative to the catalog directory: not absolute, not s3:// or another URI."""
    return not (storage.is_uri(image) or os.path.isabs(image))


def resolve_image(root: str, image: str) -> str:
    """An image reference (relative, absolute or s3://) as a URI the storage can read."""
    if not _is_relative(image):
        return image  # other schemes are refused by name when read (and by validation)
    return storage.join(root, image)


def _load_queries(uri: str) -> pd.DataFrame:
    df = read_table(uri, QUERY_TEXT_COLUMNS).reset_index(drop=True)
    _require_columns(df, uri, ("query_id", "text", "split"))
    df["query_id"] = _check_ids(df, uri, "query_id")
    df["text"] = _text_column(df, uri, "text", allow_null=False)
    empty = df["text"].str.strip() == ""
    if empty.any():
        raise CatalogError(uri, "query text must not be empty", rows=_rows(empty))
    bad_split = ~df["split"].isin(SPLITS)
    if bad_split.any():
        value = df.loc[bad_split, "split"].iloc[0]
        raise CatalogError(uri, f"split must be one of {', '.join(SPLITS)}",
                           rows=_rows(bad_split), detail=f"found {_shown(value)}")
    return df


def _load_judgments(uri: str, queries: pd.DataFrame, products: pd.DataFrame) -> pd.DataFrame:
    df = read_table(uri, JUDGMENT_TEXT_COLUMNS).reset_index(drop=True)
    _require_columns(df, uri, ("query_id", "product_id", "grade"))
    for column in ("query_id", "product_id"):
        blank = df[column].isna() | (df[column].astype(str).str.strip() == "")
        if blank.any():
            raise CatalogError(uri, f"{column} must not be empty", rows=_rows(blank))
        df[column] = df[column].astype(str)
    df["grade"] = _check_grades(df["grade"], uri)
    _check_known(df, uri, "query_id", set(queries["query_id"]), "queries")
    _check_known(df, uri, "product_id", set(products["product_id"]), "products")
    pair = df.duplicated(["query_id", "product_id"], keep=False)
    if pair.any():
        raise CatalogError(uri, "each (query_id, product_id) pair must appear once",
                           rows=_rows(pair))
    return df


def _check_grades(grades: pd.Series, uri: str) -> pd.Series:
    numeric = pd.to_numeric(grades, errors="coerce")
    valid = numeric.notna() & (numeric == numeric.round()) & numeric.between(0, MAX_GRADE)
    if not valid.all():
        value = grades[~valid].iloc[0]
        raise CatalogError(uri, f"grade must be an integer from 0 to {MAX_GRADE}",
                           rows=_rows(~valid), detail=f"found {_shown(value)}")
    return numeric.astype("int8")


def _shown(value) -> str:
    """A cell's value as a person wrote it: 2.5, not np.float64(2.5); text quoted."""
    return repr(value.item() if hasattr(value, "item") else value)


def _check_known(df: pd.DataFrame, uri: str, column: str, known: set[str], table: str) -> None:
    unknown = ~df[column].isin(known)
    if unknown.any():
        value = df.loc[unknown, column].iloc[0]
        raise CatalogError(uri, f"{column} must refer to a row of the {table} table",
                           rows=_rows(unknown), detail=f"unknown {column} {value!r}")


def query_key(text: str) -> str:
    """How a typed query finds its judged twin (and logged searches group): case and
    spacing do not matter."""
    return " ".join(str(text).casefold().split())


def empty_queries() -> pd.DataFrame:
    return pd.DataFrame({"query_id": pd.Series(dtype=str), "text": pd.Series(dtype=str),
                         "split": pd.Series(dtype=str)})


def empty_judgments() -> pd.DataFrame:
    return pd.DataFrame({"query_id": pd.Series(dtype=str), "product_id": pd.Series(dtype=str),
                         "grade": pd.Series(dtype="int8")})


def write_catalog(out: str, products: pd.DataFrame, queries: pd.DataFrame,
                  judgments: pd.DataFrame, fmt: str = "parquet") -> str:
    """Write the three tables of a catalog into ``out`` (local or s3://)."""
    from fusion_model.data.tables import write_table

    root = _normalise_root(out)
    write_table(products.drop(columns=["image_uri"], errors="ignore"),
                storage.join(root, f"products.{fmt}"))
    write_table(queries, storage.join(root, f"queries.{fmt}"))
    write_table(judgments, storage.join(root, f"judgments.{fmt}"))
    return root
