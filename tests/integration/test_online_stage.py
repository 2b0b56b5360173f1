"""The online stage after the offline gate: a passing version becomes the interleaved
``candidate``; recorded clicks then promote it (the same recoverable switch as the gate's),
withdraw it, or keep it waiting; each step is an audit record and shows in ``status``."""

from __future__ import annotations

import random

import pytest

from fusion_model.cli import main
from fusion_model.config import load_config
from fusion_model.errors import BadInputError
from fusion_model.feedback.events import EventLog, EventSettings
from fusion_model.index.base import open_index
from fusion_model.pipelines import steps
from fusion_model.registry.registry import CANDIDATE, CHAMPION, get_alias, version_tags
from tests.conftest import champion_and_challenger

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("online")
    made = champion_and_challenger(root, products=120, queries=30, seed=5, challenger_seed=4)
    events = str(root / "events")
    online = [*made["overrides"], "feedback.online=true", f"feedback.events={events}",
              "feedback.min_decided=20", "feedback.max_decided=400"]
    return {**made, "events": events, "online": online}


def interleaved_traffic(root: str, champion: str, candidate: str, searches: int,
                        candidate_clicked: float, seed: int) -> None:
    """Searches that interleaved ``candidate`` with ``champion``, one click each on a
    candidate pick with probability ``candidate_clicked``, else on a champion pick."""
    rng = random.Random(seed)
    log = EventLog(EventSettings(root), salt="test")
    for _ in range(searches):
        teams = ["A", "B", "A", "B"] if rng.random() < 0.5 else ["B", "A", "B", "A"]
        shown = [f"p{i}" for i in range(4)]
        search_id = log.search("red shirt", "champion", champion, "c", shown, None,
                               {"A": champion, "B": candidate, "teams": teams})
        team = "B" if rng.random() < candidate_clicked else "A"
        position = teams.index(team) + 1
        log.interaction({"search_id": search_id, "product_id": shown[position - 1],
                         "kind": "click", "position": position})
    log.flush()


def test_online_needs_an_event_store(platform):
    """Refused with a named error before anything moves: the champion, the serving alias,
    the candidate alias and the audit are as they were."""
    decision = steps.gate(platform["v2"], platform["catalog"], "tiny", platform["overrides"],
                          force_promote=True)
    before = steps.status("tiny", platform["overrides"], last=100)
    with pytest.raises(BadInputError, match="feedback.events"):
        steps.promote_or_reject(platform["v2"], decision, "tiny",
                                [*platform["overrides"], "feedback.online=true"])
    after = steps.status("tiny", platform["overrides"], last=100)
    assert get_alias("fusion_products", CANDIDATE) is None
    assert (after["serving"], after["history"], after["collections"]) == (
        before["serving"], before["history"], before["collections"])
    assert {a: v and v.version for a, v in after["aliases"].items()} == \
        {a: v and v.version for a, v in before["aliases"].items()}


def test_a_gated_version_waits_for_shoppers_then_is_promoted(platform, capsys):
    overrides, v2 = platform["online"], platform["v2"]
    name = "fusion_products"
    champion = get_alias(name, CHAMPION).version
    decision = steps.gate(v2, platform["catalog"], "tiny", overrides, force_promote=True)
    outcome = steps.promote_or_reject(v2, decision, "tiny", overrides)
    assert outcome["interleaving"] and not outcome["promoted"]
    assert get_alias(name, CANDIDATE).version == v2
    assert get_alias(name, CHAMPION).version == champion        # nothing served changed
    assert version_tags(get_alias(name, CANDIDATE))["online.state"] == "interleaving"

    interleaved_traffic(platform["events"], champion, v2, 10, 0.9, seed=1)
    assert steps.decide_online("tiny", overrides)["state"] == "waiting"  # 10 < min_decided
    assert main(["status", "--config", "tiny", *overrides]) == 0
    shown = capsys.readouterr().out
    assert f"candidate   fusion_products v{v2}" in shown
    assert "online      v" in shown and "interleaved searches" in shown

    interleaved_traffic(platform["events"], champion, v2, 60, 0.85, seed=2)
    outcome = steps.decide_online("tiny", overrides)
    assert outcome["state"] == "promoted", outcome
    assert get_alias(name, CHAMPION).version == v2 and get_alias(name, CANDIDATE) is None
    with open_index(load_config("tiny", overrides).index) as index:
        assert index.resolve_alias("products_serving") == platform["v2_collection"]
    history = steps.status("tiny", overrides, last=3)["history"]
    assert [h["decision"] for h in history][-2:] == ["interleave", "promote"]
    assert "shoppers prefer it" in history[-1]["reasons"][0]
    assert history[-1]["metrics"]["online.wins_candidate"] > \
        history[-1]["metrics"]["online.wins_champion"]


def test_a_candidate_shoppers_dislike_is_withdrawn_and_never_served(platform):
    from fusion_model.pipelines import online
    from fusion_model.registry.registry import candidate_for

    overrides, name = platform["online"], "fusion_products"
    champion = get_alias(name, CHAMPION).version
    older = "1" if champion != "1" else platform["v2"]
    config = load_config("tiny", overrides)
    candidate, tags = candidate_for(name, older)
    online.start(config, candidate, tags["milvus_collection"],
                 {"decision": "promote", "reasons": ["test"], "metrics": {}})
    interleaved_traffic(platform["events"], champion, older, 60, 0.15, seed=3)
    outcome = steps.decide_online("tiny", overrides)
    assert outcome["state"] == "withdrawn" and "prefer the champion" in \
        steps.status("tiny", overrides)["history"][-1]["reasons"][0]
    assert get_alias(name, CANDIDATE) is None
    assert get_alias(name, CHAMPION).version == champion
    assert version_tags(candidate)["online.state"] == "withdrawn"
    assert steps.decide_online("tiny", overrides)["state"] == "none"
