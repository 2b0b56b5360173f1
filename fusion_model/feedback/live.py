"""What this service process has seen since it started, for the review page: each
query's impressions and clicks per product, and the running interleaved comparison. The
event store holds the complete record (``fusion-model feedback interleaving`` and
``feedback build`` read it); this view is bounded and per process."""

from __future__ import annotations

import threading
from collections import OrderedDict

from fusion_model.data.catalog import query_key
from fusion_model.feedback.interleaving import Preference, preference, winner

MAX_QUERIES = 20_000         # queries whose click-through is kept (least recent go first)
MAX_PRODUCTS = 200           # products kept per query
MAX_COMPARED = 200_000       # interleaved searches kept per comparison


class LiveFeedback:
    """Bounded counts of impressions and clicks, and interleaved searches' teams. Kept in
    dicts of strings and ints only, which the garbage collector does not scan: a service
    holds hundreds of thousands of them."""

    def __init__(self, max_queries: int = MAX_QUERIES, max_compared: int = MAX_COMPARED):
        self.max_queries = max_queries
        self.max_compared = max_compared
        self._lock = threading.Lock()
        # query -> ({product: shown}, {product: clicked})
        self._queries: OrderedDict[str, tuple[dict[str, int], dict[str, int]]] = OrderedDict()
        # candidate -> {search_id: teams as "ABBA..."}, and the clicked positions as bits
        self._compared: dict[str, OrderedDict[str, str]] = {}
        self._clicked: dict[str, int] = {}

    def searched(self, search_id: str, query: str, product_ids: list[str],
                 interleaving: dict | None) -> None:
        key = query_key(query)
        with self._lock:
            shown, clicked = self._queries.pop(key, None) or ({}, {})
            for product in product_ids:
                if product in shown or len(shown) < MAX_PRODUCTS:
                    shown[product] = shown.get(product, 0) + 1
            self._queries[key] = (shown, clicked)
            while len(self._queries) > self.max_queries:
                self._queries.popitem(last=False)
            if interleaving:
                compared = self._compared.setdefault(str(interleaving["B"]), OrderedDict())
                compared[search_id] = "".join(interleaving["teams"])
                while len(compared) > self.max_compared:
                    gone, _ = compared.popitem(last=False)
                    self._clicked.pop(gone, None)

    def interacted(self, search_id: str, query: str, product_id: str, kind: str,
                   position: int) -> None:
        with self._lock:
            if kind == "click":
                shown, clicked = self._queries.get(query_key(query), ({}, {}))
                if product_id in shown:
                    clicked[product_id] = clicked.get(product_id, 0) + 1
            if any(search_id in compared for compared in self._compared.values()):
                self._clicked[search_id] = self._clicked.get(search_id, 0) | 1 << position

    def clickthrough(self, query: str) -> dict[str, dict[str, int]]:
        """``{product_id: {"shown": n, "clicked": c}}`` for a query (empty if unseen)."""
        with self._lock:
            shown, clicked = self._queries.get(query_key(query), ({}, {}))
            return {p: {"shown": n, "clicked": clicked.get(p, 0)} for p, n in shown.items()}

    def comparison(self, candidate: str) -> Preference | None:
        """Shoppers' preference between the champion and ``candidate`` so far."""
        with self._lock:
            compared = [(teams, self._clicked.get(search_id, 0)) for search_id, teams
                        in self._compared.get(str(candidate), {}).items()]
        if not compared:
            return None
        return preference(winner(list(teams), _positions(bits)) for teams, bits in compared)


def _positions(bits: int) -> list[int]:
    return [position for position in range(1, bits.bit_length()) if bits >> position & 1]
