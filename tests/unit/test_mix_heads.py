"""benchmarks/mix_heads.py: two heads' score mix, its weight chosen on val."""

from __future__ import annotations

import torch

from fusion_model.evaluation.evaluator import Evaluator


def split(qrels: dict[str, dict[str, int]], queries: torch.Tensor, products: torch.Tensor):
    ids = sorted(qrels)
    evaluator = Evaluator(ids, ids, qrels, [f"p{i}" for i in range(len(products))], {},
                          (10,), 1)
    return queries, products, evaluator


def test_the_mix_is_the_weighted_sum_of_scores_and_its_weight_is_chosen_on_val():
    from benchmarks.mix_heads import mix_report, mixed

    torch.manual_seed(0)
    products_a, products_b = torch.randn(30, 4), torch.randn(30, 6)
    queries_a, queries_b = torch.randn(8, 4), torch.randn(8, 6)
    qrels = {f"q{i}": {f"p{int(j)}": 1} for i, j in
             enumerate((queries_b @ products_b.T).argmax(1))}   # head b knows the answers
    a = {s: split(qrels, queries_a, products_a) for s in ("val", "test")}
    b = {s: split(qrels, queries_b, products_b) for s in ("val", "test")}
    alone = mixed(a["test"], b["test"], 0.0).per_query
    assert alone == a["test"][2].score_vectors(queries_a, products_a).per_query
    assert mixed(a["test"], b["test"], 1.0).metrics["ndcg@10"] == 1.0
    report = mix_report(a, b, steps=4)
    assert report["weight"] > 0 and report["test"][str(report["weight"])] == 1.0
    assert report["mix_minus"]["a"]["mean"] > 0 and report["mix_minus"]["b"]["mean"] == 0
