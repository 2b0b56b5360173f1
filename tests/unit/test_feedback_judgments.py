"""Judgments from search logs: the position-based click model recovers how often each
rank is seen and grades what shoppers like better than raw click-through; the snapshot
keeps val and test hand-judged and needs enough evidence per query and pair."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from fusion_model.data.catalog import load_catalog, write_catalog
from fusion_model.feedback.events import EventLog, EventSettings
from fusion_model.feedback.interleaving import team_draft
from fusion_model.feedback.judgments import (
    PRIOR_GRID,
    ClickLog,
    build_judgments,
    credible_grades,
    fit_prior,
    grade_of,
    judged_snapshot,
    read_click_log,
)
from fusion_model.feedback.simulator import Shopper, simulate_interactions


def simulated_log(searches: int, seed: int = 0, shuffled: float = 0.2
                  ) -> tuple[ClickLog, dict]:
    """100 queries of 30 products with random grades, ranked by a noisy ranker; a share
    of searches interleaves it with a second noisy ranker (what moves products between
    ranks). Returns the log and the true grades."""
    rng = random.Random(seed)
    truth = {}
    for q in range(100):
        products = [f"q{q}p{i}" for i in range(30)]
        grades = {p: rng.choice((0, 0, 0, 1, 2, 3)) for p in products}
        rankings = [sorted(products, key=lambda p: grades[p] + rng.gauss(0, 2), reverse=True)
                    for _ in range(2)]
        truth[f"query {q}"] = (grades, rankings)
    shown, clicks, counts = Counter(), Counter(), Counter()
    for _ in range(searches):
        query = rng.choice(list(truth))
        grades, (a, b) = truth[query]
        products = team_draft(a, b, 10, rng)[0] if rng.random() < shuffled else a[:10]
        counts[query] += 1
        clicked = {p for p, _, kind in simulate_interactions(products, grades, Shopper(), rng)}
        for rank, product in enumerate(products, 1):
            shown[(query, product, rank)] += 1
            clicks[(query, product, rank)] += rank in clicked
    cells = pd.DataFrame([(*k, n, clicks[k]) for k, n in shown.items()],
                         columns=["query", "product_id", "rank", "shown", "clicked"])
    return ClickLog(cells, counts, {q: q for q in counts}, Counter()), truth


def true_grades(judgments: pd.DataFrame, truth: dict) -> np.ndarray:
    return np.array([truth[q][0][p] for q, p in zip(judgments["query"],
                                                    judgments["product_id"])])


def test_the_click_model_recovers_examination_and_beats_raw_click_through():
    log, truth = simulated_log(30_000)
    corrected = build_judgments(log, "em", min_searches=20, min_examinations=5)
    raw = build_judgments(log, "none", min_searches=20, min_examinations=5)
    examined = Shopper().examine ** np.arange(10)
    assert np.abs(corrected.theta[:10] - examined).max() < 0.05
    exact = {name: (built.judgments["grade"].to_numpy()
                    == true_grades(built.judgments, truth)).mean()
             for name, built in (("em", corrected), ("raw", raw))}
    assert exact["em"] > 0.85 and exact["em"] > exact["raw"] + 0.3, exact
    assert (raw.theta == 1).all()


def test_thin_evidence_is_not_judged():
    log, _ = simulated_log(3_000)
    strict = build_judgments(log, "em", min_searches=40, min_examinations=5)
    loose = build_judgments(log, "em", min_searches=5, min_examinations=1)
    assert strict.queries_too_rare > 90 and strict.queries_judged < 10
    assert loose.queries_judged == 100 and len(loose.judgments) > len(strict.judgments)
    assert (strict.judgments["examinations"] >= 5).all()


def test_credible_grades_judge_fewer_pairs_more_exactly_than_fixed_floors():
    log, truth = simulated_log(10_000)
    floors = build_judgments(log, "em", min_searches=20, min_examinations=5)
    credible = build_judgments(log, "em", min_searches=20, min_examinations=5,
                               confidence=0.8)
    exact = {name: (built.judgments["grade"].to_numpy()
                    == true_grades(built.judgments, truth)).mean()
             for name, built in (("floors", floors), ("credible", credible))}
    assert exact["credible"] > exact["floors"] + 0.05, exact
    assert len(credible.judgments) > 0.5 * len(floors.judgments)
    stricter = build_judgments(log, "em", min_searches=20, min_examinations=5,
                               confidence=0.95)
    assert len(stricter.judgments) < len(credible.judgments)
    raw = build_judgments(log, "none", min_searches=20, min_examinations=5, confidence=0.8)
    assert (raw.judgments["examinations"] >= 5).all()   # raw click-through: the floors


def test_the_fitted_prior_finds_how_attractive_pairs_usually_are():
    rng = np.random.default_rng(0)
    attractive = rng.random(2000) < 0.3            # 30% liked (0.85), the rest not (0.05)
    gamma = np.where(attractive, 0.85, 0.05)
    views = rng.integers(1, 40, 2000)
    clicks = rng.binomial(views, gamma)
    log_likelihoods = (clicks[:, None] * np.log(PRIOR_GRID)
                       + (views - clicks)[:, None] * np.log1p(-PRIOR_GRID))
    prior = fit_prior(log_likelihoods)
    assert abs(prior[PRIOR_GRID >= 0.7].sum() - 0.3) < 0.03
    assert prior[(PRIOR_GRID > 0.2) & (PRIOR_GRID < 0.7)].sum() < 0.05
    grades = credible_grades(log_likelihoods, prior, 0.9)
    assert (grades[attractive & (views >= 20)] == 3).all()
    assert (grades[~attractive & (views >= 20)] == 0).all()
    # no evidence: the prior alone, which here is split 70/30, grades nothing at 0.9
    assert credible_grades(np.zeros((1, len(PRIOR_GRID))), prior, 0.9).tolist() == [-1]


def test_grades_start_at_their_floors():
    assert grade_of(np.array([0.0, 0.19, 0.2, 0.5, 0.7, 0.99])).tolist() == [0, 0, 1, 2, 3, 3]


@pytest.fixture
def small_catalog(tmp_path) -> str:
    products = pd.DataFrame({"product_id": [f"p{i}" for i in range(6)],
                             "title": [f"item {i}" for i in range(6)],
                             "description": [""] * 6, "image": [None] * 6})
    queries = pd.DataFrame({"query_id": ["t1", "t2", "v1", "s1"],
                            "text": ["Red Shirt", "blue dress", "green shoe", "black bag"],
                            "split": ["train", "train", "val", "test"]})
    judgments = pd.DataFrame({"query_id": ["t1", "t2", "v1", "s1"],
                              "product_id": ["p0", "p1", "p2", "p3"],
                              "grade": [3, 2, 3, 3]}).astype({"grade": "int8"})
    return write_catalog(str(tmp_path / "catalog"), products, queries, judgments)


def logged_searches(root: str, query: str, shown: list[str], clicked_rank: int, n: int
                    ) -> None:
    events = EventLog(EventSettings(root), salt="s")
    for _ in range(n):
        search_id = events.search(query, "champion", "1", "c", shown, None)
        events.interaction({"search_id": search_id, "product_id": shown[clicked_rank - 1],
                            "kind": "click", "position": clicked_rank})
    events.flush()


def test_the_snapshot_judges_train_queries_from_logs_and_keeps_val_and_test(
        small_catalog, tmp_path):
    root = str(tmp_path / "events")
    logged_searches(root, "red  SHIRT", ["p4", "p0", "p5"], 2, 30)   # a train query
    logged_searches(root, "green shoe", ["p2", "p0"], 1, 30)          # a val query
    logged_searches(root, "yellow hat", ["p5", "p1", "gone"], 1, 30)  # a new query
    logged_searches(root, "rare query", ["p1"], 1, 3)                 # too rare
    built = build_judgments(read_click_log(root), "none", min_searches=20,
                            min_examinations=5)
    summary = judged_snapshot(load_catalog(small_catalog), built, str(tmp_path / "new"))
    assert (summary["queries_held_out"], summary["new_queries"],
            summary["queries_too_rare"]) == (1, 1, 1)
    snapshot = load_catalog(summary["catalog"])
    grades = {(q, p): g for q, p, g in snapshot.judgments.itertuples(index=False)}
    assert grades[("t1", "p0")] == 3 and grades[("t1", "p4")] == 0   # clicked vs passed by
    assert ("t2", "p1") not in grades and "t2" not in set(snapshot.queries["query_id"])
    assert grades[("v1", "p2")] == 3 and ("v1", "p0") not in grades  # hand-made, kept
    assert grades[("s1", "p3")] == 3
    new = snapshot.queries[snapshot.queries["text"] == "yellow hat"]
    assert new["split"].tolist() == ["train"] and new["query_id"].str.startswith("log-").all()
    assert not any(p == "gone" for _, p in grades)                   # deleted products
    kept = judged_snapshot(load_catalog(small_catalog), built, str(tmp_path / "kept"),
                           keep_labels=True)
    assert ("t2", "p1") in {(q, p) for q, p, _ in
                            load_catalog(kept["catalog"]).judgments.itertuples(index=False)}


def test_pooling_gives_a_broader_query_its_refinements_top_grade_products(tmp_path):
    root = str(tmp_path / "events")
    logged_searches(root, "black backpacks for men", ["p1", "p2"], 1, 30)  # p1: grade 3
    logged_searches(root, "black backpacks", ["p4", "p2"], 1, 30)           # its own p4
    logged_searches(root, "backpacks  BLACK", ["p3"], 1, 30)               # same words
    logged_searches(root, "backpacks", ["p5"], 1, 2)                        # too rare alone
    logged_searches(root, "red backpacks", ["p6", "p2"], 1, 30)
    clicks = read_click_log(root)
    plain = build_judgments(clicks, "none", min_searches=20, min_examinations=5)
    pooled = build_judgments(clicks, "none", min_searches=20, min_examinations=5,
                             pool_refinements=True)

    def grades(built) -> dict:
        return {(q, p): g for q, p, g in
                built.judgments[["query", "product_id", "grade"]].itertuples(index=False)}

    before, after = grades(plain), grades(pooled)
    assert ("black backpacks", "p1") not in before
    assert "backpacks" not in {q for q, _ in before}
    # a broader query gets its refinements' top-grade products; both word orders do
    for broad in ("black backpacks", "backpacks black"):
        assert after[(broad, "p1")] == 3
    assert {p for q, p in after if q == "backpacks"} == {"p1", "p3", "p4", "p6"}
    # never from broad to narrow, nor between queries of the same words or other words
    assert {p for q, p in after if q == "black backpacks for men"} == {"p1", "p2"}
    assert ("black backpacks", "p3") not in after and ("backpacks black", "p4") not in after
    assert ("black backpacks", "p6") not in after
    assert ("backpacks", "p2") not in after                  # grade 0 does not travel
    assert {k: v for k, v in after.items() if k in before} == before
    assert pooled.queries_judged == plain.queries_judged + 1
    assert pooled.queries_too_rare == plain.queries_too_rare - 1 == 0
    origin = pooled.judgments.set_index(["query", "product_id"])["pooled_from"]
    assert origin[("backpacks", "p1")] == "black backpacks for men"
    assert origin[("black backpacks", "p4")] == ""


def test_the_cli_builds_a_snapshot_and_reads_an_interleaved_comparison(
        small_catalog, tmp_path, capsys):
    from fusion_model.cli import main

    root = str(tmp_path / "events")
    logged_searches(root, "red shirt", ["p4", "p0", "p5"], 2, 25)
    events = EventLog(EventSettings(root), salt="s")
    for number in range(30):   # v7 interleaved: its picks (B) clicked in 24 of 30
        teams = ["A", "B", "A"] if number % 2 else ["B", "A", "B"]
        search_id = events.search("blue dress", "champion", "6", "c", ["p1", "p2", "p3"],
                                  None, {"A": "6", "B": "7", "teams": teams})
        position = teams.index("B" if number < 24 else "A") + 1
        events.interaction({"search_id": search_id, "product_id": ["p1", "p2", "p3"][
            position - 1], "kind": "click", "position": position})
    events.flush()
    out = str(tmp_path / "snapshot")
    assert main(["feedback", "build", "--catalog", small_catalog, "--out", out,
                 "--events", root, "--config", "tiny", "feedback.min_searches=20"]) == 0
    assert "2 queries judged from 55 searches" in capsys.readouterr().out
    logged_searches(root, "shirt", ["p5"], 1, 3)    # too rare alone; "red shirt" refines it
    pooled = str(tmp_path / "pooled")
    assert main(["feedback", "build", "--catalog", small_catalog, "--out", pooled,
                 "--events", root, "--config", "tiny", "feedback.min_searches=20",
                 "feedback.pool_refinements=true"]) == 0
    assert "3 queries judged from 58 searches" in capsys.readouterr().out
    snapshot = load_catalog(pooled)
    shirt = snapshot.queries.loc[snapshot.queries["text"] == "shirt", "query_id"].item()
    assert snapshot.qrels("train")[shirt] == {"p0": 3}
    assert main(["feedback", "interleaving", "--events", root, "--version", "7",
                 "--config", "tiny"]) == 0
    shown = capsys.readouterr().out
    assert "candidate won 24, champion 6" in shown and "candidate preferred" in shown
    assert main(["feedback", "build", "--catalog", small_catalog, "--out", out,
                 "--events", str(tmp_path / "none"), "--config", "tiny"]) == 2
    assert "no recorded searches" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("feedback.share=0", "feedback.share"), ("feedback.alpha=0.7", "feedback.alpha"),
    ("feedback.grade_floors=[0.5,0.2,0.7]", "grade_floors"),
    ("feedback.position_bias=cascade", "position_bias"),
    ("feedback.min_decided=50000", "min_decided"),
    ("feedback.confidence=0.4", "feedback.confidence=0.4")])
def test_feedback_settings_are_checked(override, message):
    from fusion_model.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config("tiny", override.split())


def test_too_little_evidence_is_a_named_error_that_says_which_rule(small_catalog, tmp_path,
                                                                    capsys):
    from fusion_model.cli import main

    root = str(tmp_path / "events")
    logged_searches(root, "red shirt", ["p4", "p0", "p5"], 2, 3)   # under min_searches 5
    out = str(tmp_path / "snapshot")
    assert main(["feedback", "build", "--catalog", small_catalog, "--out", out,
                 "--events", root, "--config", "tiny"]) == 2
    error = capsys.readouterr().err
    assert "feedback.min_searches=5" in error and "feedback.confidence=0.7" in error
    assert not (tmp_path / "snapshot").exists()          # no snapshot for the DAG to publish
    assert main(["feedback", "build", "--catalog", small_catalog, "--out", out,
                 "--events", root, "--config", "tiny", "feedback.confidence=0"]) == 2
    assert "feedback.min_examinations=5.0" in capsys.readouterr().err
    assert not (tmp_path / "snapshot").exists()
