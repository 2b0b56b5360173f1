"""Metrics, exact search and bootstrap against naive oracles on seeded inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from fusion_model.evaluation.bootstrap import bootstrap_mean, paired_bootstrap_difference
from fusion_model.evaluation.metrics import (
    mean_metrics,
    ndcg_at_k,
    per_query_table,
    query_metrics,
    recall_at_k,
    reciprocal_rank,
)
from fusion_model.evaluation.search import exact_top_k


def test_hand_computed_example():
    ranked = ["a", "b", "c", "d"]
    rel = {"b": 3, "d": 1, "z": 2}
    assert recall_at_k(ranked, rel, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, rel, 4, min_grade=2) == pytest.approx(1 / 2)
    assert reciprocal_rank(ranked, rel) == pytest.approx(1 / 2)
    dcg = 7 / math.log2(3) + 1 / math.log2(5)
    ideal = 7 / 1 + 3 / math.log2(3) + 1 / 2
    assert ndcg_at_k(ranked, rel, 4) == pytest.approx(dcg / ideal)
    metrics = query_metrics(ranked, rel, ks=(2,))
    assert metrics["recall_capped@2"] == pytest.approx(1 / 2)


def naive_ndcg(ranked, rel, k):
    def dcg(grades):
        return sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(grades))
    judged = list(rel)
    ideal = max(dcg([rel[p] for p in perm][:k]) for perm in itertools.permutations(judged))
    return dcg([rel.get(p, 0) for p in ranked[:k]]) / ideal if ideal else 0.0


@pytest.mark.parametrize("seed", range(20))
def test_metrics_match_naive_oracles(seed):
    rng = np.random.default_rng(seed)
    universe = [f"p{i}" for i in range(12)]
    ranked = list(rng.permutation(universe)[: rng.integers(1, 12)])
    judged = rng.choice(universe, size=rng.integers(1, 6), replace=False)
    rel = {p: int(rng.integers(0, 4)) for p in judged}
    for k in (1, 3, 5, 10):
        relevant = [p for p in rel if rel[p] >= 1]
        hits = len([p for p in ranked[:k] if p in relevant])
        assert recall_at_k(ranked, rel, k) == pytest.approx(hits / len(relevant) if relevant
                                                            else 0.0)
        assert ndcg_at_k(ranked, rel, k) == pytest.approx(naive_ndcg(ranked, rel, k))
    ranks = [i + 1 for i, p in enumerate(ranked) if rel.get(p, 0) >= 1]
    assert reciprocal_rank(ranked, rel) == pytest.approx(1 / ranks[0] if ranks else 0.0)


def test_perfect_ranking_scores_one_and_unranked_queries_zero():
    rel = {"a": 3, "b": 2}
    table = per_query_table({"q1": ["a", "b"]}, {"q1": rel, "q2": {"c": 1}}, ks=(1, 5))
    assert table["q1"]["ndcg@5"] == pytest.approx(1.0)
    assert table["q1"]["recall@5"] == 1.0 and table["q1"]["mrr"] == 1.0
    assert table["q2"]["recall@5"] == 0.0
    assert mean_metrics(table)["recall@5"] == pytest.approx(0.5)


@pytest.mark.parametrize("chunk", [1, 7, 50, 1000])
def test_chunked_exact_search_equals_full_sort(chunk):
    generator = torch.Generator().manual_seed(chunk)
    queries, products = torch.randn(9, 16, generator=generator), torch.randn(120, 16,
                                                                             generator=generator)
    scores, index = exact_top_k(queries, products, k=10, chunk_size=chunk)
    full = queries @ products.T
    expected = torch.argsort(full, dim=1, descending=True)[:, :10]
    assert torch.equal(index, expected)
    assert torch.allclose(scores, torch.gather(full, 1, expected))


def test_exact_search_with_k_larger_than_catalog():
    scores, index = exact_top_k(torch.eye(3), torch.eye(3), k=100, chunk_size=2)
    assert index.shape == (3, 3) and torch.equal(index[:, 0], torch.arange(3))


def test_bootstrap_intervals_cover_the_mean_and_detect_a_real_difference():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    better = np.clip(base + 0.05 + rng.normal(0, 0.02, 400), 0, 1)
    interval = paired_bootstrap_difference(better, base)
    assert interval.low > 0 and interval.low < interval.mean < interval.high
    same = paired_bootstrap_difference(base, base)
    assert same.low == same.high == 0.0
    single = bootstrap_mean(base)
    assert single.low < base.mean() < single.high
    with pytest.raises(ValueError, match="equal shapes"):
        paired_bootstrap_difference(base, base[:10])
