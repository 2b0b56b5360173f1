"""A catalog as retrieval data: product ids and texts, and per split the queries, their
judged products (qrels) and positives. Training, evaluation, the benchmark and the gate
all read a catalog through ``build_data``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fusion_model.data.catalog import Catalog
from fusion_model.data.judging import assign_splits
from fusion_model.errors import FusionModelError

log = logging.getLogger(__name__)


def product_text(title: str, description: str) -> str:
    """What the text tower reads for a product."""
    return f"{title}. {description}".strip() if description else title


@dataclass
class QuerySet:
    ids: list[str]
    texts: list[str]
    positives: list[np.ndarray]          # product indices with grade >= min_positive_grade
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class RetrievalData:
    product_ids: list[str]
    product_texts: list[str]
    image_uris: list[str | None]
    splits: dict[str, QuerySet]


def build_data(catalog: Catalog, min_positive_grade: int) -> RetrievalData:
    """Index products and split queries; carve a val split from train when there is none."""
    if not catalog.has_queries:
        raise FusionModelError(f"{catalog.uri}: training and evaluation need queries and "
                               "judgments tables (see docs/catalog.md)")
    products = catalog.products
    position = pd.Index(products["product_id"])  # ids are unique (the loader checks)
    queries = catalog.queries.copy()
    if not (queries["split"] == "val").any():
        train = queries["split"] == "train"
        carved = assign_splits(queries.loc[train, "query_id"].tolist(), salt="carve-val")
        queries.loc[train, "split"] = ["val" if s != "train" else "train" for s in carved]
        log.info("no val split: carved %d val queries from train", int((queries["split"]
                                                                          == "val").sum()))
    judged = catalog.judgments
    splits = {}
    for split in ("train", "val", "test"):
        subset = queries[queries["split"] == split]
        ids = subset["query_id"].tolist()
        rel = judged[judged["query_id"].isin(set(ids))]
        qrels: dict[str, dict[str, int]] = {}
        for qid, pid, grade in rel[["query_id", "product_id", "grade"]].itertuples(index=False):
            qrels.setdefault(qid, {})[pid] = int(grade)
        positives = [np.sort(position.get_indexer(
            [p for p, g in qrels.get(q, {}).items() if g >= min_positive_grade]
        ).astype(np.int64)) for q in ids]
        splits[split] = QuerySet(ids, subset["text"].tolist(), positives, qrels)
    if not splits["test"].ids:
        raise FusionModelError(f"{catalog.uri}: no query has split 'test'; evaluation, the "
                               "benchmark and the gate need test queries (mark about 15% of "
                               "the queries as test)")
    if not any(len(p) for p in splits["train"].positives):
        raise FusionModelError(f"{catalog.uri}: no train query has a product of grade >= "
                               f"{min_positive_grade}; lower train.min_positive_grade")
    return RetrievalData(products["product_id"].tolist(),
                         [product_text(t, d) for t, d in zip(products["title"],
                                                             products["description"])],
                         products["image_uri"].tolist(), splits)


def data_for(catalog: Catalog, config) -> RetrievalData:
    """``build_data`` with the positive grade of ``config`` (a RunConfig) on this catalog."""
    return build_data(catalog, config.for_catalog(catalog.max_grade).train.min_positive_grade)
