"""The gate's review artifacts: the gallery (both models, decision header, relevance
threshold of the metrics, photo placeholders) and the segment table with a baseline."""

from __future__ import annotations

import re

import pandas as pd
from PIL import Image

from fusion_model.evaluation.evaluator import EvaluationResult
from fusion_model.registry.gallery import build_gallery, decision_header
from fusion_model.registry.tracking import segment_html, segment_table


def result(ndcg: list[float], segment_ndcg: float) -> EvaluationResult:
    per_query = {f"q{i}": {"ndcg@10": v, "recall@10": v / 2} for i, v in enumerate(ndcg)}
    metrics = {"ndcg@10": sum(ndcg) / len(ndcg), "recall@10": sum(ndcg) / len(ndcg) / 2}
    return EvaluationResult(metrics, per_query, {"visual_query": {
        "ndcg@10": segment_ndcg, "recall@10": 0.5, "queries": 2.0}})


def test_gallery_shows_both_models_the_decision_and_placeholders(tmp_path):
    photo = tmp_path / "a.jpg"
    Image.new("RGB", (40, 40), "red").save(photo)
    products = pd.DataFrame({"product_id": ["a", "b", "c"], "title": ["Red A", "B", "C"],
                             "image_uri": [str(photo), None, str(tmp_path / "gone.jpg")]})
    queries = {"q0": "red thing"}
    qrels = {"q0": {"a": 3, "b": 2}}
    decision = {"decision": "promote", "reasons": ["ndcg@10 gain +0.1"], "forced": False,
                "metrics": {"gain": 0.1, "gain_ci_low": 0.02, "gain_ci_high": 0.2,
                            "queries": 3}}
    header = decision_header(decision, {"challenger v2": result([0.9, 0.8, 0.7], 0.8),
                                        "champion v1": result([0.6, 0.7, 0.8], 0.7)},
                             "ndcg@10")
    page = build_gallery(queries, {"challenger v2": {"q0": ["a", "b", "c"]},
                                   "champion v1": {"q0": ["c", "a"]}}, qrels, products,
                         "m v2 vs champion v1", min_grade=3, header=header)
    assert "Gate decision: promote" in page and "ndcg@10 gain +0.1" in page
    assert "95% CI [+0.0200, +0.2000] over 3 test queries" in page
    assert page.count("class='label'>challenger v2<") == 1
    assert page.count("class='label'>champion v1<") == 1
    assert "grade &ge; 3" in page
    framed = re.findall(r"<img class='(\w*)'", page)
    assert framed == ["rel", "rel"]  # product a (grade 3) in both rows; b has grade 2
    assert page.count("no photo</div>") == 3  # b has none, c's file is missing (twice)
    assert "<th>challenger v2</th><td>0.4000 <small>[" in page  # recall@10 first


def test_segment_table_has_baseline_difference_and_integer_counts():
    table = segment_table(result([0.9, 0.8, 0.7], 0.8), result([0.6, 0.7, 0.8], 0.7))
    assert table["segment"].tolist() == ["all", "visual_query"]
    assert table["queries"].tolist() == [3, 2] and table["queries"].dtype.kind == "i"
    row = table.set_index("segment").loc["visual_query"]
    assert abs(row["ndcg@10 vs baseline"] - 0.1) < 1e-9 and row["ndcg@10 baseline"] == 0.7
    html = segment_html(table)
    assert "<td>3</td>" in html and "+0.1000" in html and "NaN" not in html
    assert "3.0000" not in html
    alone = segment_table(result([0.5, 0.5], 0.4))
    assert "baseline" not in " ".join(alone.columns) and not alone.isna().any().any()
