"""benchmarks/feedback_sim.py: pages of any size, and the true-grade bounds of the traffic."""

from __future__ import annotations

import pandas as pd

from fusion_model.data.catalog import load_catalog, write_catalog
from fusion_model.feedback.judgments import build_judgments, read_click_log


def catalog_of(tmp_path, products: int = 30):
    ids = [f"p{i}" for i in range(products)]
    frame = pd.DataFrame({"product_id": ids, "title": [f"item {i}" for i in range(products)],
                          "description": [""] * products, "image": [None] * products})
    queries = pd.DataFrame({"query_id": ["t1", "v1", "s1"],
                            "text": ["Red Shirt", "green shoe", "black bag"],
                            "split": ["train", "val", "test"]})
    judgments = pd.DataFrame({"query_id": ["t1", "t1", "v1", "s1"],
                              "product_id": ["p0", "p15", "p2", "p3"],
                              "grade": [3, 2, 3, 3]}).astype({"grade": "int8"})
    return load_catalog(write_catalog(str(tmp_path / "catalog"), frame, queries, judgments))


def test_a_page_of_twenty_is_logged_and_read_to_its_last_rank(tmp_path):
    from benchmarks.feedback_sim import simulate_traffic

    catalog = catalog_of(tmp_path)
    ranking = {"t1": [f"p{i}" for i in range(30)]}
    root = str(tmp_path / "events")
    simulate_traffic(root, ranking, {"t1": "Red Shirt"}, {"t1": {"p0": 3, "p15": 2}}, 50,
                     explore=0.0, seed=0, popularity_seed=1, page_size=20)
    cells = read_click_log(root, max_rank=20).cells
    assert cells["rank"].max() == 20 and set(cells["product_id"]) == set(ranking["t1"][:20])
    assert catalog.queries_in("train")["query_id"].tolist() == ["t1"]


def test_true_grades_replace_the_logged_ones_and_unjudged_pairs_get_zero(tmp_path):
    from benchmarks.feedback_sim import simulate_traffic, with_true_grades

    catalog = catalog_of(tmp_path)
    root = str(tmp_path / "events")
    simulate_traffic(root, {"t1": [f"p{i}" for i in range(30)]}, {"t1": "red  SHIRT"},
                     {"t1": {"p0": 3}}, 40, explore=0.0, seed=0, popularity_seed=1,
                     page_size=20)
    every_pair = build_judgments(read_click_log(root, max_rank=20), "none", 1, 0.0)
    graded = with_true_grades(every_pair, catalog).judgments
    truth = dict(zip(graded["product_id"], graded["grade"]))
    assert len(truth) == 20                      # every shown pair, whatever its clicks
    assert truth["p0"] == 3 and truth["p15"] == 2 and truth["p7"] == 0
    assert (graded["query"] == "red shirt").all()  # the logged query, its judged twin's grades


def test_every_simulated_search_and_click_reaches_the_log(tmp_path, monkeypatch):
    """The simulator writes as it goes: no record is dropped when a round makes more
    records than the event log's queue holds (a page of 10 all relevant: ~8 per search)."""
    import json
    from pathlib import Path

    from benchmarks import feedback_sim

    monkeypatch.setattr(feedback_sim, "FLUSH_EVERY", 50)
    root = tmp_path / "events"
    grades = {f"p{i}": 3 for i in range(10)}
    feedback_sim.simulate_traffic(str(root), {"t1": [f"p{i}" for i in range(10)]},
                                  {"t1": "red shirt"}, {"t1": grades}, 400, explore=0.0,
                                  seed=0, popularity_seed=1)

    def records(kind: str) -> list[dict]:
        return [json.loads(line) for part in Path(root, kind).rglob("*.jsonl")
                for line in part.read_text().splitlines()]

    searches, interactions = records("searches"), records("interactions")
    assert len(searches) == 400
    assert len(interactions) > 50 * 21  # more than the queue holds between two writes
    assert {i["search_id"] for i in interactions} <= {s["search_id"] for s in searches}


def test_explored_pages_aimed_at_the_unjudged_show_the_least_seen_products(tmp_path):
    """With the logged evidence, an explored page of 5 from the top 15 shows products
    seen least so far (the 10 never shown, here); without it, a random 5 of the 15."""
    from benchmarks.feedback_sim import logged_evidence, simulate_traffic

    ranking = {"t1": [f"p{i}" for i in range(15)]}
    first = str(tmp_path / "first")
    simulate_traffic(first, ranking, {"t1": "red shirt"}, {"t1": {"p0": 3}}, 60,
                     explore=0.0, seed=0, popularity_seed=1, page_size=5)
    evidence = logged_evidence(first, "none", 5)
    assert set(evidence["red shirt"]) == {f"p{i}" for i in range(5)}
    aimed, plain = str(tmp_path / "aimed"), str(tmp_path / "plain")
    for root, seen in ((aimed, evidence), (plain, None)):
        simulate_traffic(root, ranking, {"t1": "red shirt"}, {"t1": {"p0": 3}}, 60,
                         explore=1.0, seed=1, popularity_seed=1, explore_depth=15,
                         page_size=5, evidence=seen)
    never_shown = {f"p{i}" for i in range(5, 15)}
    assert set(read_click_log(aimed, max_rank=5).cells["product_id"]) <= never_shown
    assert set(read_click_log(plain, max_rank=5).cells["product_id"]) & \
        {f"p{i}" for i in range(5)}
