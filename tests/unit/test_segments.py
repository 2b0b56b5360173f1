"""Query segments come from eval.segments; the gate reports guarded segments it cannot check."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fusion_model.config import ConfigError, GateConfig, load_config
from fusion_model.evaluation.evaluator import EvaluationResult, SegmentRule, query_segments
from fusion_model.gate import decide

QUERIES = pd.DataFrame({"query_id": ["q1", "q2", "q3"], "attributes": [
    json.dumps({"colour": "red", "category": "shirt"}), json.dumps({"gender": "men"}),
    json.dumps({"colour": "blue"})]})
PRODUCTS = pd.DataFrame({"product_id": ["p1", "p2", "p3"],
                         "title": ["Red shirt", "Shirt", "Men shoes"]})
JUDGMENTS = pd.DataFrame({"query_id": ["q1", "q3", "q3"], "product_id": ["p1", "p2", "p3"],
                          "grade": [3, 3, 3]})


def test_segments_are_named_attribute_predicates():
    segments = query_segments(QUERIES, PRODUCTS, JUDGMENTS,
                              ("coloured=any:colour", "for_someone=any:gender,age",
                               "colourless_titles=title_lacks:colour", "branded=any:brand"))
    assert segments == {"coloured": {"q1", "q3"}, "for_someone": {"q2"},
                        "colourless_titles": {"q3"}, "branded": set()}


@pytest.mark.parametrize("spec", ["nameless", "x=every:colour", "x=any:", "=any:colour",
                                  "x=title_lacks:colour,pattern"])
def test_a_malformed_segment_is_refused_by_the_config(spec):
    from fusion_model.checks import load_checked_config

    with pytest.raises(ValueError, match="NAME=any:ATTR"):
        SegmentRule.parse(spec)
    with pytest.raises(ConfigError, match="eval.segments"):
        load_checked_config("default", [f"eval.segments=[{spec!r}]"])


def test_the_gate_reports_a_guarded_segment_absent_from_the_catalog():
    per_query = {f"q{i}": {"recall@10": 0.5 + 0.01 * i} for i in range(30)}
    better = {q: {"recall@10": v["recall@10"] + 0.1} for q, v in per_query.items()}
    challenger = EvaluationResult({"recall@10": 0.75}, better,
                                  {"visual_query": {"recall@10": 0.8, "queries": 30.0}})
    champion = EvaluationResult({"recall@10": 0.65}, per_query,
                                {"visual_query": {"recall@10": 0.7, "queries": 30.0}})
    decision = decide(challenger, champion, "champion", GateConfig())
    assert decision.decision == "promote"
    assert any("guarded segment text_only_attribute: no test query" in r
               for r in decision.reasons)
    assert not any("visual_query: no test query" in r for r in decision.reasons)


def test_one_evaluator_binds_a_split_and_scores_vectors_and_rankings(synthetic_catalog):
    import torch

    from fusion_model.data.catalog import load_catalog
    from fusion_model.data.retrieval import data_for
    from fusion_model.evaluation.evaluator import Evaluator

    catalog = load_catalog(str(synthetic_catalog))
    config = load_config("default", ["eval.segments=['coloured=any:colour']"])
    evaluator = Evaluator.for_split(catalog, config, data_for(catalog, config), "test")
    assert set(evaluator.segments) == {"coloured"} and evaluator.segments["coloured"]
    perfect = {q: sorted(evaluator.qrels[q], key=evaluator.qrels[q].get, reverse=True)
               for q in evaluator.query_ids if q in evaluator.qrels}
    result = evaluator.score_rankings(perfect)
    assert result.metrics["ndcg@10"] == pytest.approx(1.0) and "coloured" in result.segments
    queries = torch.nn.functional.normalize(torch.randn(len(evaluator.query_ids), 8), dim=-1)
    products = torch.nn.functional.normalize(torch.randn(len(evaluator.product_ids), 8), dim=-1)
    assert evaluator.score_vectors(queries, products).metrics["ndcg@10"] < 0.5
