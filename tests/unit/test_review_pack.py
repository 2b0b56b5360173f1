"""The gate's per-query pack for the review page: ordered by the candidate's loss, read
back defensively (principle 14: the service trusts nothing it reads at request time)."""

from __future__ import annotations

import math

from fusion_model.data.catalog import query_key
from fusion_model.registry.review_pack import (
    MAX_GRADED,
    MAX_TEXT,
    build_review_pack,
    check_review_pack,
)


def pack() -> dict:
    candidate = {"q1": {"ndcg@10": 0.9}, "q2": {"ndcg@10": 0.2}, "q3": {"ndcg@10": 0.5}}
    reference = {"q1": {"ndcg@10": 0.4}, "q2": {"ndcg@10": 0.7}, "q3": {"ndcg@10": 0.6}}
    qrels = {"q1": {"a": 1, "b": 3, "z": 0}, "q2": {"c": 2}, "q3": {}}
    return build_review_pack("4", "champion v3", "ndcg@10", ["q1", "q2", "q3", "q4"],
                             ["red shirt", "Blue  Jeans", "bag", "unjudged"], candidate,
                             reference, qrels)


def test_queries_are_ordered_by_the_candidates_loss_with_their_grades():
    built = pack()
    assert built["version"] == "4" and built["baseline"] == "champion v3"
    assert [row["query_id"] for row in built["queries"]] == ["q2", "q3", "q1"]
    worst = built["queries"][0]
    assert worst["difference"] == -0.5 and worst["candidate"] == 0.2
    assert built["queries"][2]["grades"] == {"b": 3, "a": 1}  # grade 0 is not relevant
    assert check_review_pack(built) == built


def test_a_pack_of_another_shape_or_size_is_refused_or_trimmed():
    assert check_review_pack(None) is None
    assert check_review_pack({"queries": "x", "metric": "m", "baseline": "b"}) is None
    assert check_review_pack({"queries": [], "metric": 3, "baseline": "b"}) is None
    rows = [{"text": "ok", "candidate": 1, "baseline": 0, "difference": 1, "grades": {}},
            {"text": "nan", "candidate": math.nan, "baseline": 0, "difference": 0,
             "grades": {}},
            {"text": 5, "candidate": 1, "baseline": 0, "difference": 1, "grades": {}},
            {"text": "grades", "candidate": 1, "baseline": 0, "difference": 1,
             "grades": {"p": 2, "bad": "3", "neg": -1, "x" * 300: 1,
                        **{f"g{i}": 1 for i in range(MAX_GRADED + 50)}}},
            {"text": "<b>" * 400, "candidate": 1, "baseline": 0, "difference": 1,
             "grades": {}}]
    checked = check_review_pack({"queries": rows, "metric": "ndcg@10", "baseline": "b"})
    assert [row["text"][:6] for row in checked["queries"]] == ["ok", "grades", "<b><b>"]
    grades = checked["queries"][1]["grades"]
    assert grades["p"] == 2 and not {"bad", "neg", "x" * 300} & set(grades)
    assert len(grades) <= MAX_GRADED
    assert len(checked["queries"][2]["text"]) == MAX_TEXT


def test_a_typed_query_finds_its_judged_twin_whatever_its_case_and_spacing():
    assert query_key("  Blue   JEANS ") == query_key("blue jeans") == "blue jeans"
