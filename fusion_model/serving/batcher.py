"""Dynamic batching of concurrent searches for the HTTP service.

Each ``/search`` request costs the service a query-encoder run and a gRPC search call
to Milvus; under load their fixed costs dominate, and one Python process runs out of
its core long before the encoder or Milvus do. ``SearchBatcher`` merges the requests
that wait while a batch runs and share (k, filter, model) into one
``ChampionSearcher.search_many`` call: one encoder pass and one search with many query
vectors. Alone, a request runs at once (no added delay); under load the batches grow
with the queue. Batches run in worker threads (the encoder and the gRPC call release
the GIL), so the event loop keeps parsing and answering HTTP meanwhile.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fusion_model.serving.searcher import SearchResult


@dataclass
class BatchStats:
    batches: int = 0
    searches: int = 0
    largest: int = 0


@dataclass(frozen=True)
class _Waiting:
    query: str
    future: asyncio.Future


class SearchBatcher:
    """Runs ``search_many(queries, k, filter_text, model)`` for concurrent requests in
    batches of up to ``max_batch`` queries, at most ``in_flight`` batches at a time."""

    def __init__(self, search_many, max_batch: int = 32, in_flight: int = 2):
        self._search_many = search_many
        self.max_batch, self.in_flight = max_batch, in_flight
        self.stats = BatchStats()
        self._waiting: dict[tuple, list[_Waiting]] = {}
        self._running = 0
        self._drains: set[asyncio.Task] = set()  # referenced, so none is collected mid-run
        self._executor = ThreadPoolExecutor(in_flight, thread_name_prefix="search-batch")

    async def search(self, query: str, k: int = 10, filter_text: str = "",
                     model: str | None = None) -> SearchResult:
        loop = asyncio.get_running_loop()
        waiting = _Waiting(query, loop.create_future())
        self._waiting.setdefault((k, filter_text, model), []).append(waiting)
        if self._running < self.in_flight:
            self._running += 1
            drain = loop.create_task(self._drain())
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await waiting.future

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _drain(self) -> None:
        """Run the waiting requests, a batch at a time, until none wait."""
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                key, batch = self._next_batch()
                self._count(len(batch))
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._run, key,
                                                          [w.query for w in batch])
                except Exception as error:  # noqa: BLE001 - every request of it gets it
                    outcomes = [error] * len(batch)
                _hand_out(batch, outcomes)
        finally:
            self._running -= 1

    def _next_batch(self) -> tuple[tuple, list[_Waiting]]:
        """The oldest group's first ``max_batch`` requests; the rest of it goes to the back
        of the line, so one busy filter cannot starve the others."""
        key = next(iter(self._waiting))
        group = self._waiting.pop(key)
        if len(group) > self.max_batch:
            self._waiting[key] = group[self.max_batch:]
        return key, group[:self.max_batch]

    def _count(self, size: int) -> None:
        """Batch statistics, kept on the event loop's thread only."""
        self.stats.batches += 1
        self.stats.searches += size
        self.stats.largest = max(self.stats.largest, size)

    def _run(self, key: tuple, queries: list[str]) -> list:
        """Results (or errors) in the order of ``queries``. A failing batch is retried one
        query at a time, so a bad request gets its own error and the others their hits."""
        k, filter_text, model = key
        try:
            return list(self._search_many(queries, k, filter_text, model))
        except Exception as error:  # noqa: BLE001 - handed to the requests, not swallowed
            if len(queries) == 1:
                return [error]
        return [self._run_one(query, k, filter_text, model) for query in queries]

    def _run_one(self, query: str, k: int, filter_text: str, model: str | None):
        try:
            return self._search_many([query], k, filter_text, model)[0]
        except Exception as error:  # noqa: BLE001 - handed to the request
            return error


def _hand_out(batch: list[_Waiting], outcomes: list) -> None:
    """Each waiting request its result or error; none is left waiting, even when a
    search returned fewer results than it was given queries."""
    missing = RuntimeError(f"the search returned {len(outcomes)} results for "
                           f"{len(batch)} queries")
    for i, waiting in enumerate(batch):
        if waiting.future.done():  # the client went away
            continue
        outcome = outcomes[i] if i < len(outcomes) else missing
        if isinstance(outcome, BaseException):
            waiting.future.set_exception(outcome)
        else:
            waiting.future.set_result(outcome)
