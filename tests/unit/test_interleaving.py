"""Team-draft interleaving, its credit and preference test, and the shopper simulator:
the test holds its level in A/A comparisons and finds a better ranker."""

from __future__ import annotations

import random

import pytest

from fusion_model.feedback.interleaving import (
    A,
    B,
    preference,
    sign_test,
    team_draft,
    winner,
)
from fusion_model.feedback.simulator import Shopper, simulate_interactions


def test_team_draft_shows_each_product_once_and_keeps_the_teams_even():
    rng = random.Random(0)
    a = ["p1", "p2", "p3", "p4", "p5", "p6"]
    b = ["p3", "p7", "p1", "p8", "p9", "p2"]
    for _ in range(200):
        shown, teams = team_draft(a, b, 6, rng)
        assert len(shown) == len(set(shown)) == 6
        assert abs(teams.count(A) - teams.count(B)) <= 1
        assert shown[0] in ("p1", "p3")          # one of the two top products first
        for product, team in zip(shown, teams):  # credited to a list that holds it
            assert product in (a if team == A else b)
        assert {"p1", "p3"} <= set(shown[:3])


def test_team_draft_of_one_ranking_is_that_ranking_with_random_teams():
    rng = random.Random(1)
    ranking = [f"p{i}" for i in range(10)]
    teams_seen = set()
    for _ in range(50):
        shown, teams = team_draft(ranking, ranking, 10, rng)
        assert shown == ranking
        teams_seen.add(tuple(teams))
    assert len(teams_seen) > 10


def test_team_draft_fills_from_the_longer_list():
    shown, teams = team_draft(["x"], ["y", "z", "w"], 4, random.Random(2))
    assert sorted(shown) == ["w", "x", "y", "z"] and teams.count(A) == 1


def test_a_search_goes_to_the_team_with_more_credited_clicks():
    teams = [A, B, A, B]
    assert winner(teams, [1, 3]) == A
    assert winner(teams, [2]) == B
    assert winner(teams, [1, 2]) is None and winner(teams, []) is None
    assert winner(teams, [1, 1, 1, 2]) is None   # one click per position counts
    assert winner(teams, [9]) is None            # outside the list: no credit


def test_preference_counts_wins_and_tests_them():
    found = preference([B] * 60 + [A] * 40 + [None] * 30)
    assert (found.wins_a, found.wins_b, found.ties, found.searches) == (40, 60, 30, 130)
    assert found.share_b == pytest.approx(0.6)
    assert found.low < 0.6 < found.high and found.high - found.low < 0.2
    assert found.p_value == pytest.approx(sign_test(60, 100)) and 0.05 < found.p_value < 0.06
    assert found.prefers() is None and found.prefers(alpha=0.1) == B
    assert preference([]).p_value == 1.0


def simulated_experiment(rng, better: bool, searches: int) -> str | None:
    """Interleave a ranker with itself (A/A) or with a better one, clicks by grade."""
    outcomes = []
    for _ in range(searches):
        products = [f"p{i}" for i in range(20)]
        grades = {p: rng.choice((0, 0, 0, 1, 2, 3)) for p in products}
        noisy = sorted(products, key=lambda p: grades[p] + rng.gauss(0, 2.0), reverse=True)
        champion = noisy
        candidate = sorted(products, key=lambda p: grades[p] + rng.gauss(0, 1.0),
                           reverse=True) if better else noisy
        shown, teams = team_draft(champion, candidate, 10, rng)
        clicks = [pos for pos, _, kind in simulate_interactions(shown, grades, Shopper(), rng)
                  if kind == "click"]
        outcomes.append(winner(teams, clicks))
    return preference(outcomes).prefers()


def test_a_over_a_false_preferences_stay_at_the_tests_level():
    rng = random.Random(3)
    runs = 300
    false = sum(simulated_experiment(rng, better=False, searches=200) is not None
                for _ in range(runs))
    assert false / runs <= 0.08  # 5% nominal; 0.08 is 2.4 binomial sd above it


def test_a_better_ranker_is_preferred():
    rng = random.Random(4)
    found = [simulated_experiment(rng, better=True, searches=400) for _ in range(20)]
    assert found.count(B) >= 18 and A not in found


def test_shoppers_click_relevant_products_more_and_examine_less_down_the_list():
    rng = random.Random(5)
    shown = [f"p{i}" for i in range(10)]

    def clicks(grades):
        return [pos for pos, _, kind in simulate_interactions(shown, grades, Shopper(), rng)
                if kind == "click"]

    relevant = [clicks({p: 3 for p in shown}) for _ in range(3000)]
    irrelevant = [clicks({p: 0 for p in shown}) for _ in range(3000)]
    at_top = sum(1 in c for c in relevant)
    at_bottom = sum(10 in c for c in relevant)
    assert at_top > 3 * at_bottom                   # examined less down the list
    assert sum(map(len, irrelevant)) < 0.2 * sum(map(len, relevant))


def test_the_service_reads_the_candidate_alias_off_the_request_path(monkeypatch):
    """First use reads the registry; later reads answer from memory and refresh on a
    background thread once ``recheck_seconds`` passed; the champion itself is no candidate."""
    import threading
    import time
    from types import SimpleNamespace

    from fusion_model.registry import registry
    from fusion_model.serving.interleaver import Interleaver

    answers = iter(["5", "6", "6"])
    calls = []
    released = threading.Event()

    def get_alias(name, alias):
        calls.append(threading.current_thread().name)
        if len(calls) > 1:
            released.wait(5)
        return SimpleNamespace(version=next(answers))

    monkeypatch.setattr(registry, "get_alias", get_alias)
    searcher = SimpleNamespace(config=SimpleNamespace(registry=SimpleNamespace(
        model_name="m")), served=SimpleNamespace(version="6"))
    interleaver = Interleaver(searcher, 0.5, recheck_seconds=0.05, seed=1)
    assert interleaver.candidate() == "5" and calls == ["MainThread"]
    time.sleep(0.06)
    started = time.perf_counter()
    assert interleaver.candidate() == "5"          # stale: answered at once
    assert time.perf_counter() - started < 0.5
    released.set()
    for _ in range(100):
        if interleaver._candidate is None:
            break
        time.sleep(0.01)
    assert calls[1] == "candidate-alias" and interleaver.candidate() is None  # "6" serves
    assert interleaver.pick() is None
