"""What training needs from a catalog: texts, photos, positives, and per-epoch batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from fusion_model.data.catalog import Catalog
from fusion_model.data.judging import assign_splits
from fusion_model.errors import FusionModelError
from fusion_model.features import product_text

log = logging.getLogger(__name__)


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
    position = {pid: i for i, pid in enumerate(products["product_id"])}
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
        positives = [np.array(sorted(position[p] for p, g in qrels.get(q, {}).items()
                                     if g >= min_positive_grade), dtype=np.int64) for q in ids]
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


def epoch_pairs(positives: list[np.ndarray], per_query: int, batch_size: int,
                rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled (query index, positive product index) batches for one epoch.

    Each query contributes up to ``per_query`` distinct positives; a batch never holds the
    same product twice (a repeat moves to a later batch), so in-batch negatives are real.
    """
    pairs = []
    for q, pos in enumerate(positives):
        if len(pos):
            chosen = rng.choice(pos, size=min(per_query, len(pos)), replace=False)
            pairs += [(q, int(p)) for p in chosen]
    order = rng.permutation(len(pairs))
    batches: list[list[tuple[int, int]]] = []
    open_batches: list[tuple[list, set]] = []
    for i in order:
        q, p = pairs[i]
        for batch, seen in open_batches:
            if p not in seen and len(batch) < batch_size:
                batch.append((q, p))
                seen.add(p)
                break
        else:
            open_batches.append(([(q, p)], {p}))
        while open_batches and len(open_batches[0][0]) == batch_size:
            batches.append(open_batches.pop(0)[0])
        if len(open_batches) > 4:  # bound the search; flush the fullest
            batches.append(open_batches.pop(0)[0])
    batches += [b for b, _ in open_batches if len(b) >= 2]
    return [(np.array([q for q, _ in b]), np.array([p for _, p in b])) for b in batches]


def known_positive_mask(query_index: np.ndarray, product_index: np.ndarray,
                        positive_sets: list[set[int]]) -> np.ndarray:
    """(B, P) True where product j is a judged positive of query i."""
    return np.array([[p in positive_sets[q] for p in product_index] for q in query_index],
                    dtype=bool)
