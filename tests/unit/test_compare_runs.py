"""benchmarks/compare_runs.py: seeds averaged per query before the paired comparison."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fusion_model.evaluation.evaluator import EvaluationResult


def run(scores: dict[str, float]) -> SimpleNamespace:
    """A stand-in for a TrainResult whose val and test score ``scores`` per query."""
    result = EvaluationResult({"ndcg@10": sum(scores.values()) / len(scores)},
                              {q: {"ndcg@10": s} for q, s in scores.items()})
    return SimpleNamespace(val=result, test=result)


def test_seeds_are_averaged_per_query_on_the_queries_all_runs_share():
    from benchmarks.compare_runs import comparison_rows, seed_mean, shared_queries

    base = [run({"a": 0.2, "b": 0.4, "c": 0.6}), run({"a": 0.4, "b": 0.6, "c": 0.8})]
    new = [run({"a": 0.5, "b": 0.7}), run({"a": 0.7, "b": 0.9})]
    ids = shared_queries(new, base, "test")
    assert ids == ["a", "b"]                                  # "c" is not in every run
    assert seed_mean(new, "test", "ndcg@10", ids) == pytest.approx([0.6, 0.8])
    rows = comparison_rows([("base", base), ("new", new)], "ndcg@10")
    assert rows[2].startswith("| base | 2 | 0.5000 | 0.5000 |")
    assert rows[3].startswith("| new | 2 | 0.7000 | 0.7000 | +0.3000")  # 0.7 - 0.4 on a, b
