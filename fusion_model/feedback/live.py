"""What this service process has seen since it started, for the review page: each
query's impressions and clicks per product, and the running interleaved comparison. The
event store holds the complete record (``fusion-model feedback interleaving`` and
``feedback build`` read it); this view is bounded and per process."""

from __future__ import annotations

import threading
from collections import OrderedDict

from fusion_model.feedback.interleaving import Preference, preference, winner

MAX_QUERIES = 20_000         # queries whose click-through is kept (least recent go first)
MAX_PRODUCTS = 200           # products kept per query
MAX_COMPARED = 200_000       # interleaved searches kept per comparison


def query_key(text: str) -> str:
    """How typed queries group: case and spacing do not matter."""
    return " ".join(str(text).casefold().split())


class LiveFeedback:
    """Bounded counts of impressions and clicks, and interleaved searches' teams."""

    def __init__(self, max_queries: int = MAX_QUERIES, max_compared: int = MAX_COMPARED):
        self.max_queries = max_queries
        self.max_compared = max_compared
        self._lock = threading.Lock()
        self._queries: OrderedDict[str, dict[str, list[int]]] = OrderedDict()
        self._compared: dict[str, OrderedDict[str, tuple[list[str], set[int]]]] = {}

    def searched(self, search_id: str, query: str, product_ids: list[str],
                 interleaving: dict | None) -> None:
        key = query_key(query)
        with self._lock:
            counts = self._queries.pop(key, None) or {}
            for product in product_ids:
                if product in counts or len(counts) < MAX_PRODUCTS:
                    counts.setdefault(product, [0, 0])[0] += 1
            self._queries[key] = counts
            while len(self._queries) > self.max_queries:
                self._queries.popitem(last=False)
            if interleaving:
                compared = self._compared.setdefault(str(interleaving["B"]), OrderedDict())
                compared[search_id] = (list(interleaving["teams"]), set())
                while len(compared) > self.max_compared:
                    compared.popitem(last=False)

    def interacted(self, search_id: str, query: str, product_id: str, kind: str,
                   position: int) -> None:
        with self._lock:
            if kind == "click":
                counts = self._queries.get(query_key(query), {})
                if product_id in counts:
                    counts[product_id][1] += 1
            for compared in self._compared.values():
                if search_id in compared:
                    compared[search_id][1].add(position)

    def clickthrough(self, query: str) -> dict[str, dict[str, int]]:
        """``{product_id: {"shown": n, "clicked": c}}`` for a query (empty if unseen)."""
        with self._lock:
            counts = self._queries.get(query_key(query), {})
            return {p: {"shown": s, "clicked": c} for p, (s, c) in counts.items()}

    def comparison(self, candidate: str) -> Preference | None:
        """Shoppers' preference between the champion and ``candidate`` so far."""
        with self._lock:
            compared = list(self._compared.get(str(candidate), {}).values())
        if not compared:
            return None
        return preference(winner(teams, clicked) for teams, clicked in compared)
