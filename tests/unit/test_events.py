"""Search events: append-only, date-partitioned JSON Lines parts written in batches off
the request path; interactions checked against the searches this service served."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from fusion_model.feedback.events import (
    INTERACTIONS,
    SEARCHES,
    EventLog,
    EventRejectedError,
    EventSettings,
    read_events,
)


@pytest.fixture()
def events(tmp_path) -> EventLog:
    return EventLog(EventSettings(str(tmp_path / "events"), flush_seconds=0.05),
                    salt="test-salt")


def served(events: EventLog, session: str | None = "shopper-42") -> str:
    return events.search("red shirt", "champion", "3", "products_m3_x", ["P1", "P2", "P3"],
                         session)


def test_searches_and_interactions_land_in_date_partitions(events, tmp_path):
    search_id = served(events)
    events.interaction({"search_id": search_id, "product_id": "P2", "kind": "click",
                        "position": 2})
    events.interaction({"search_id": search_id, "product_id": "P2", "kind": "purchase",
                        "position": 2})
    assert events.flush() == 3
    today = dt.datetime.now(dt.UTC).date().isoformat()
    parts = sorted(p.relative_to(tmp_path / "events").parts[:2]
                   for p in (tmp_path / "events").rglob("*.jsonl"))
    assert parts == [(INTERACTIONS, f"date={today}"), (SEARCHES, f"date={today}")]
    [search] = read_events(str(tmp_path / "events"), SEARCHES)
    assert search["search_id"] == search_id and search["product_ids"] == ["P1", "P2", "P3"]
    assert (search["query"], search["version"], search["collection"]) == \
        ("red shirt", "3", "products_m3_x")
    kinds = [e["kind"] for e in read_events(str(tmp_path / "events"), INTERACTIONS)]
    assert kinds == ["click", "purchase"]


def test_sessions_are_stored_only_as_salted_hashes(events, tmp_path):
    served(events, "shopper-42")
    served(events, "shopper-42")
    served(events, None)
    other = EventLog(EventSettings(str(tmp_path / "other")), salt="another-salt")
    served(other, "shopper-42")
    events.flush()
    other.flush()
    stored = "".join(p.read_text() for p in tmp_path.rglob("*.jsonl"))
    assert "shopper-42" not in stored
    mine = [r["session"] for r in read_events(str(tmp_path / "events"), SEARCHES)]
    theirs = [r["session"] for r in read_events(str(tmp_path / "other"), SEARCHES)]
    assert mine[0] == mine[1] and mine[2] is None  # the same shopper links up
    assert theirs[0] != mine[0]                      # another salt: unlinkable


@pytest.mark.parametrize("body, rule", [
    ({"search_id": "nope", "product_id": "P1", "kind": "click", "position": 1},
     "unknown search_id"),
    ({"product_id": "P1", "kind": "click", "position": 0}, "position must be"),
    ({"product_id": "P1", "kind": "click", "position": 4}, "position must be"),
    ({"product_id": "P1", "kind": "click", "position": True}, "position must be"),
    ({"product_id": "P1", "kind": "click", "position": "1"}, "position must be"),
    ({"product_id": "P1", "kind": "like", "position": 1}, "kind must be one of"),
    ({"product_id": "P3", "kind": "click", "position": 1}, "was not shown at position 1"),
    ({"product_id": 7, "kind": "click", "position": 1}, "must be strings"),
    ({"product_id": "P1", "kind": "click", "position": 1, "price": 9}, "unknown field"),
    (["not", "an", "object"], "JSON object"),
])
def test_bad_interactions_are_named_and_never_stored(events, tmp_path, body, rule):
    search_id = served(events)
    if isinstance(body, dict):
        body = {"search_id": search_id, **body}
    with pytest.raises(EventRejectedError, match=rule):
        events.interaction(body)
    events.flush()
    assert list(read_events(str(tmp_path / "events"), INTERACTIONS)) == []


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    events = EventLog(EventSettings(str(tmp_path / "events"), queue_size=2), salt="s")
    started = time.perf_counter()
    for _ in range(5):
        served(events)
    assert time.perf_counter() - started < 1.0
    assert events.dropped == 3
    assert events.flush() == 2


def test_the_writer_thread_writes_in_batches_and_close_flushes(tmp_path):
    events = EventLog(EventSettings(str(tmp_path / "events"), flush_seconds=30,
                                    batch_size=2), salt="s")
    events.start()
    for _ in range(5):
        served(events)
    events.close()  # long before the 30 s tick: close writes what is queued
    parts = list((tmp_path / "events").rglob("*.jsonl"))
    assert len(parts) == 3  # batches of 2, 2 and 1
    assert len(list(read_events(str(tmp_path / "events"), SEARCHES))) == 5


def test_retention_deletes_only_partitions_older_than_it(tmp_path):
    root = tmp_path / "events"
    events = EventLog(EventSettings(str(root), retention_days=30), salt="s")
    today = dt.date(2026, 12, 5)
    for days in (0, 29, 30, 31, 400):
        day = (today - dt.timedelta(days=days)).isoformat()
        for kind in (SEARCHES, INTERACTIONS):
            part = root / kind / f"date={day}" / "part-a-000001.jsonl"
            part.parent.mkdir(parents=True, exist_ok=True)
            part.write_text(json.dumps({"search_id": "x"}) + "\n")
    removed = events.prune(today)
    assert sorted({Path(u).parent.name for u in removed}) == ["date=2025-10-31",
                                                               "date=2026-11-04"]
    assert len(removed) == 4
    kept = sorted({p.parent.name for p in root.rglob("*.jsonl")})
    assert kept == ["date=2026-11-05", "date=2026-11-06", "date=2026-12-05"]
    assert events.prune(today) == []  # once a day


def test_the_live_view_is_bounded_and_out_of_the_collectors_sight():
    import gc

    from fusion_model.feedback.live import LiveFeedback

    live = LiveFeedback(max_queries=3, max_compared=2)
    for number in range(5):
        live.searched(f"s{number}", f"query {number}", ["a", "b"],
                      {"A": "1", "B": "2", "teams": ["A", "B"]})
    live.interacted("s4", "QUERY  4", "b", "click", 2)
    live.interacted("s0", "query 0", "a", "click", 1)      # evicted: no effect
    assert live.clickthrough("query 0") == {}
    assert live.clickthrough("query 4") == {"a": {"shown": 1, "clicked": 0},
                                            "b": {"shown": 1, "clicked": 1}}
    found = live.comparison("2")
    assert (found.searches, found.wins_b, found.wins_a) == (2, 1, 0)
    assert live.comparison("9") is None
    gc.collect()
    shown, clicked = live._queries["query 4"]
    assert not gc.is_tracked(shown) and not gc.is_tracked(clicked)
    assert all(not gc.is_tracked(teams) for teams in live._compared["2"].values())
