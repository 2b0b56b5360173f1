"""The service's search batcher merges concurrent requests that share (k, filter, model)
into one search call, hands each request its own result, and keeps one bad request from
failing the others."""

from __future__ import annotations

import asyncio
import time

import pytest

from fusion_model.serving.batcher import SearchBatcher
from fusion_model.serving.searcher import SearchRequestError, SearchResult


class SlowSearch:
    """``search_many`` that takes 50 ms per call and records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int, str, str | None]] = []

    def __call__(self, queries, k, filter_text, model):
        self.calls.append((list(queries), k, filter_text, model))
        time.sleep(0.05)
        if any(q.startswith("bad") for q in queries):
            raise SearchRequestError(f"cannot search {[q for q in queries if q.startswith('bad')]}")
        return [SearchResult([{"product_id": f"{q}@{k}", "score": 1.0}], "1", "c")
                for q in queries]


def run(batcher: SearchBatcher, requests: list[tuple]) -> list:
    async def all_of_them():
        return await asyncio.gather(*(batcher.search(*r) for r in requests),
                                    return_exceptions=True)
    try:
        return asyncio.run(all_of_them())
    finally:
        batcher.close()


def test_concurrent_requests_share_search_calls_and_get_their_own_hits():
    search = SlowSearch()
    requests = [(f"q{i}", 10, "", None) for i in range(40)]
    results = run(SearchBatcher(search, max_batch=16, in_flight=1), requests)
    assert [r.hits[0]["product_id"] for r in results] == [f"q{i}@10" for i in range(40)]
    sizes = [len(call[0]) for call in search.calls]
    assert sum(sizes) == 40 and max(sizes) <= 16
    assert len(search.calls) <= 4  # the first alone, then batches of what waited


def test_a_lone_request_is_searched_at_once():
    search = SlowSearch()
    started = time.perf_counter()
    [result] = run(SearchBatcher(search), [("shoes", 5, "", None)])
    assert result.hits[0]["product_id"] == "shoes@5"
    assert search.calls == [(["shoes"], 5, "", None)]
    assert time.perf_counter() - started < 1.0


def test_requests_with_different_k_filter_or_model_are_never_merged():
    search = SlowSearch()
    requests = [("a", 5, "", None), ("b", 10, "", None), ("c", 10, "colour == 'red'", None),
                ("d", 10, "", "2"), ("e", 10, "", None)]
    results = run(SearchBatcher(search, in_flight=1), requests)
    assert [r.hits[0]["product_id"] for r in results] == ["a@5", "b@10", "c@10", "d@10", "e@10"]
    for queries, k, filter_text, model in search.calls:
        keys = {(r[1], r[2], r[3]) for r in requests if r[0] in queries}
        assert keys == {(k, filter_text, model)}


def test_a_bad_request_gets_its_error_and_the_others_their_hits():
    search = SlowSearch()
    requests = [("warm-up", 10, "", None)] + [(f"q{i}", 10, "", None) for i in range(5)] \
        + [("bad one", 10, "", None)]
    results = run(SearchBatcher(search, in_flight=1), requests)
    assert isinstance(results[-1], SearchRequestError) and "bad one" in str(results[-1])
    assert [r.hits[0]["product_id"] for r in results[1:-1]] == [f"q{i}@10" for i in range(5)]
    assert any(len(call[0]) > 1 for call in search.calls)  # it was batched, then retried


@pytest.mark.parametrize("in_flight", [1, 3])
def test_every_request_is_answered_whatever_the_concurrency(in_flight):
    search = SlowSearch()
    batcher = SearchBatcher(search, max_batch=4, in_flight=in_flight)
    results = run(batcher, [(f"q{i}", 10, "", None) for i in range(30)])
    assert sorted(r.hits[0]["product_id"] for r in results) == sorted(f"q{i}@10"
                                                                       for i in range(30))
    assert batcher.stats.searches == 30 and batcher.stats.largest <= 4


def test_no_request_is_left_waiting_when_a_search_returns_too_few_results():
    def short(queries, k, filter_text, model):
        time.sleep(0.02)
        return [SearchResult([], "1", "c")][:len(queries) - 1]
    results = run(SearchBatcher(short, in_flight=1), [(f"q{i}", 10, "", None)
                                                      for i in range(6)])
    assert any(isinstance(r, RuntimeError) and "results for" in str(r) for r in results)
    assert all(isinstance(r, (RuntimeError, SearchResult)) for r in results)
