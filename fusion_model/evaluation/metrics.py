"""Ranking metrics as pure functions over ranked ids and graded relevance.

``ranked`` is a list of product ids, best first; ``relevance`` maps product id -> grade
(missing ids are grade 0). A product is *relevant* when its grade >= ``min_grade``.

- recall@k: relevant products in the top k / all relevant products.
- recall_capped@k: relevant in the top k / min(k, all relevant) (BEIR's capped recall; a
  perfect ranking scores 1 even when a query has more relevant products than k).
- ndcg@k: graded gain 2^grade - 1, log2 discount, ideal ranking from all judged grades.
- mrr: 1 / rank of the first relevant product (0 if none is retrieved).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10, 50, 100)


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int,
                min_grade: int = 1) -> float:
    relevant = {p for p, g in relevance.items() if g >= min_grade}
    if not relevant:
        return 0.0
    return sum(p in relevant for p in ranked[:k]) / len(relevant)


def capped_recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int,
                       min_grade: int = 1) -> float:
    relevant = {p for p, g in relevance.items() if g >= min_grade}
    if not relevant:
        return 0.0
    return sum(p in relevant for p in ranked[:k]) / min(k, len(relevant))


def dcg(grades: Iterable[int]) -> float:
    return sum((2 ** g - 1) / math.log2(rank + 2) for rank, g in enumerate(grades))


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    ideal = dcg(sorted(relevance.values(), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg(relevance.get(p, 0) for p in ranked[:k]) / ideal


def reciprocal_rank(ranked: Sequence[str], relevance: Mapping[str, int],
                    min_grade: int = 1) -> float:
    for rank, p in enumerate(ranked, start=1):
        if relevance.get(p, 0) >= min_grade:
            return 1.0 / rank
    return 0.0


def query_metrics(ranked: Sequence[str], relevance: Mapping[str, int],
                  ks: Sequence[int] = DEFAULT_KS, min_grade: int = 1) -> dict[str, float]:
    """Every metric for one query, keyed like ``recall@10``."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranked, relevance, k, min_grade)
        out[f"recall_capped@{k}"] = capped_recall_at_k(ranked, relevance, k, min_grade)
        out[f"ndcg@{k}"] = ndcg_at_k(ranked, relevance, k)
    out["mrr"] = reciprocal_rank(ranked, relevance, min_grade)
    return out


def per_query_table(rankings: Mapping[str, Sequence[str]],
                    qrels: Mapping[str, Mapping[str, int]], ks: Sequence[int] = DEFAULT_KS,
                    min_grade: int = 1) -> dict[str, dict[str, float]]:
    """``{query_id: {metric: value}}`` for every judged query (unranked ones score 0)."""
    return {qid: query_metrics(rankings.get(qid, []), rel, ks, min_grade)
            for qid, rel in qrels.items()}


def mean_metrics(table: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Average each metric over queries."""
    if not table:
        return {}
    names = next(iter(table.values())).keys()
    return {m: float(np.mean([row[m] for row in table.values()])) for m in names}
