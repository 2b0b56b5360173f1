"""The champion's searcher: one query encoder and one index connection for many searches.

``ChampionSearcher`` is what ``fusion-model search`` and ``fusion-model serve`` share. It
loads the champion's query encoder once and searches the collection recorded on that
champion (by name, not through the alias), so a query vector only ever meets vectors of
its own product encoder. ``follow()`` notices a promotion or rollback (the champion
alias moved and the serving alias points at its collection), loads the new encoder and
swaps it in; searches in flight finish on the state they started with, so no request
fails during the swap. While the champion's recorded collection is not the serving
alias target (mid-promotion, or a broken registry), it keeps what it serves and says why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from fusion_model import storage
from fusion_model.config import RunConfig
from fusion_model.data.catalog import PRODUCT_ID_PATTERN
from fusion_model.errors import BadInputError, NoChampionError, ServingMismatchError
from fusion_model.index.base import DISPLAY_FIELDS, PHOTO_WEIGHT, VectorIndex, open_index
from fusion_model.index.facets import TAG as FACETS_TAG
from fusion_model.index.facets import read_facets
from fusion_model.index.filters import to_milvus

log = logging.getLogger(__name__)
MAX_K = 100
MAX_QUERY_CHARS = 512
INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn"}  # control, format, surrogate, private, unassigned
VERSION_REFERENCE = re.compile(r"v?[0-9]{1,9}")
ALIAS_REFERENCE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
KEEP_OTHERS = 3  # versions other than the champion kept loaded for reviews


class SearchRequestError(BadInputError):
    """An empty query, a ``k`` out of range or a bad filter: the caller's to fix."""


class PhotoRefusedError(BadInputError):
    """A photo that is not served: a malformed product id, or a location outside the
    catalog's image roots."""


def recorded_roots(tags: dict[str, str]) -> tuple[str, ...]:
    """The image roots recorded on a version (its catalog directory for versions
    registered before roots were recorded)."""
    try:
        roots = json.loads(tags.get("image_roots") or "[]")
    except ValueError:
        roots = []
    if not isinstance(roots, list):
        roots = []
    legacy = [tags["catalog_uri"]] if tags.get("catalog_uri") else []
    return tuple(str(root) for root in roots) or tuple(legacy)


@dataclass(frozen=True)
class Served:
    """What one champion serves: its versions, its collection and its query encoder."""

    version: str
    query_version: str
    collection: str
    encode: object  # list[str] -> (N, dim) float32
    filter_fields: tuple[str, ...]
    display_fields: tuple[str, ...]
    image_roots: tuple[str, ...] = ()  # where its photos may be read from
    facets: dict = field(default_factory=dict)  # recorded values per filter field


@dataclass(frozen=True)
class SearchResult:
    hits: list[dict]
    version: str
    collection: str


def visible_text(text: str) -> str:
    """``text`` without control and format characters (NUL, zero-width spaces and joiners,
    direction marks), other whitespace as single spaces, stripped."""
    kept = (" " if char.isspace() else char for char in text
            if char.isspace() or unicodedata.category(char) not in INVISIBLE)
    return " ".join("".join(kept).split())


def check_request(query: str, k: int) -> str:
    """The query as searched (visible characters only), or SearchRequestError naming
    what is wrong."""
    if len(query or "") > 4 * MAX_QUERY_CHARS:  # before any per-character work
        raise SearchRequestError(f"the query has {len(query)} characters; at most "
                                 f"{MAX_QUERY_CHARS}")
    text = visible_text(query or "")
    if not text:
        raise SearchRequestError("the search query must not be empty: type what you are "
                                 "looking for" + (" (it holds only invisible characters)"
                                                  if (query or "").strip() else ""))
    if len(text) > MAX_QUERY_CHARS:
        raise SearchRequestError(f"the query has {len(text)} characters; at most "
                                 f"{MAX_QUERY_CHARS}")
    if not 1 <= k <= MAX_K:
        raise SearchRequestError(f"k must be between 1 and {MAX_K}, got {k}")
    return text


class _Pending:
    def __init__(self, texts: list[str]):
        self.texts = texts
        self.vectors: np.ndarray | None = None
        self.error: BaseException | None = None
        self.finished = threading.Event()

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    def finish(self, vectors: np.ndarray | None = None,
               error: BaseException | None = None) -> None:
        self.vectors, self.error = vectors, error
        self.finished.set()


class BatchingEncoder:
    """Encodes the queries of concurrent requests together: up to ``concurrency`` encoder
    runs at a time, and whoever starts one takes every request waiting (up to
    ``max_batch`` texts) along. Alone, a request is encoded at once; under load, one
    forward pass serves many requests."""

    def __init__(self, encode, max_batch: int = 64, concurrency: int = 1):
        self._encode, self.max_batch = encode, max_batch
        self._runs = threading.BoundedSemaphore(concurrency)
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        mine = _Pending(texts)
        with self._queue_lock:
            self._queue.append(mine)
        with self._runs:
            while not mine.done:  # a full batch ahead of it may leave it for the next run
                batch = self._take_waiting()
                if not batch:  # another run took it along: wait for that run
                    break
                self._encode_batch(batch)
        mine.finished.wait()
        if mine.error is not None:
            raise mine.error
        return mine.vectors

    def _take_waiting(self) -> list[_Pending]:
        with self._queue_lock:
            batch, size = [], 0
            while self._queue and (not batch or size + len(self._queue[0].texts)
                                   <= self.max_batch):
                size += len(self._queue[0].texts)
                batch.append(self._queue.pop(0))
        return batch

    def _encode_batch(self, batch: list[_Pending]) -> None:
        try:
            vectors = np.asarray(self._encode([t for p in batch for t in p.texts]))
        except BaseException as error:  # every waiting request gets the error
            for pending in batch:
                pending.finish(error=error)
            return
        start = 0
        for pending in batch:
            pending.finish(vectors[start:start + len(pending.texts)])
            start += len(pending.texts)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class QueryCache:
    """The vectors of the last ``size`` distinct query texts of one query encoder: a shop's
    head queries come back all day, and a repeated one skips the encoder. The misses of a
    call are encoded together (through ``encode``, e.g. a ``BatchingEncoder``)."""

    def __init__(self, encode, size: int, stats: CacheStats | None = None):
        self._encode, self.size = encode, size
        self.stats = stats or CacheStats()
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        found = self._lookup(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            fresh = dict(zip(missing, np.asarray(self._encode(missing))))
            self._store(fresh)
            found |= fresh
        with self._lock:
            self.stats.hits += len(texts) - len(missing)
            self.stats.misses += len(missing)
        return np.stack([found[t] for t in texts])

    @property
    def uncached(self):
        """The encoder behind the cache, for texts that are not shoppers' queries."""
        return self._encode

    def _lookup(self, texts: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            found = {t: self._vectors[t] for t in texts if t in self._vectors}
            for text in found:
                self._vectors.move_to_end(text)
        return found

    def _store(self, fresh: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._vectors.update(fresh)
            while len(self._vectors) > self.size:
                self._vectors.popitem(last=False)


def load_query_encoder(model_name: str, query_version: str, concurrency: int = 1):
    """The registered query encoder as a function of a list of texts (``concurrency``:
    callers it is compiled for, see ``FrozenTowers.encode_queries_concurrently``)."""
    from fusion_model.registry.pyfunc import load_registered_towers
    from fusion_model.registry.registry import query_model_name

    _, towers = load_registered_towers(f"models:/{query_model_name(model_name)}/{query_version}")
    towers.encode_queries_concurrently(concurrency)
    return lambda texts: towers.embed_queries(texts).numpy().astype(np.float32)


def _warm_up(encode, query_version: str) -> None:
    """Compile and run the query encoder once before it serves: otherwise the first
    requests after a start or a promotion wait for the compilation (about a second, more
    under load), and concurrent ones could each start it."""
    started = time.perf_counter()
    encode(["warm up"])
    log.info("query encoder v%s ready in %.1f s", query_version,
             time.perf_counter() - started)


TYPICAL_QUERIES = 32
WEAK_MATCH = 0.7  # a best score under this share of the typical one: no close match


class ChampionSearcher:
    """Searches the champion's collection with its query encoder; follows promotions."""

    def __init__(self, config: RunConfig, index: VectorIndex, query_cache: int = 0,
                 encoder_streams: int = 1, image_roots: tuple[str, ...] = ()):
        self.config = config
        self.image_roots = tuple(image_roots)  # extra places photos may be read from
        self.index = index
        self.query_cache = query_cache  # distinct query texts kept per encoder; 0: none
        self.encoder_streams = encoder_streams  # query-encoder runs at once
        self.cache_stats = CacheStats()
        self.served: Served | None = None
        self.problem: str | None = None  # why the last follow() kept (or has) nothing
        self._encoders: dict[str, object] = {}
        self._others: dict[str, Served] = {}
        self._follow_lock = threading.Lock()
        self._packs: OrderedDict[str, dict | None] = OrderedDict()  # version -> gate pack
        self._typical: dict[str, float | None] = {}  # version -> typical best score

    @classmethod
    @contextlib.contextmanager
    def open(cls, config: RunConfig, strict: bool = True, query_cache: int = 0,
             encoder_streams: int = 1, image_roots: tuple[str, ...] = ()):
        """A searcher with its own index connection, loaded (``strict``: raises when there
        is no champion or it is not the one being served; else it waits for one;
        ``query_cache``: query vectors kept per encoder, see ``QueryCache``;
        ``encoder_streams``: query-encoder runs at once, each on its share of the cores)."""
        from fusion_model.registry.connection import configure

        configure(config.registry.resolved_tracking_uri())
        with open_index(config.index) as index:
            searcher = cls(config, index, query_cache, encoder_streams, image_roots)
            searcher.follow(strict=strict)
            yield searcher

    def follow(self, strict: bool = False) -> bool:
        """Load the champion if it changed; True when it swapped. A champion that is not
        (yet) served keeps the current one; with ``strict`` it raises instead."""
        with self._follow_lock:
            try:
                wanted = self._wanted()
            except (NoChampionError, ServingMismatchError) as error:
                self.problem = str(error)
                if strict:
                    raise
                log.warning("keeping %s: %s", self._describe(), error)
                return False
            self.problem = None
            if self.served and (wanted[0], wanted[2]) == (self.served.version,
                                                          self.served.collection):
                return False
            self.served = self._load(*wanted)
            log.info("serving v%s (query encoder v%s) from %s", self.served.version,
                     self.served.query_version, self.served.collection)
            return True

    def _wanted(self) -> tuple[str, str, str, tuple[str, ...]]:
        """(version, query version, collection, image roots) of the champion, checked
        against the serving alias."""
        from fusion_model.registry.registry import (
            CHAMPION,
            candidate_for,
            get_alias,
            pending_switch,
        )

        name = self.config.registry.model_name
        champion = get_alias(name, CHAMPION)
        if champion is None:
            raise NoChampionError(name)
        candidate, tags = candidate_for(name, champion.version)
        recorded = tags.get("milvus_collection")
        target = self.index.resolve_alias(self.config.index.alias)
        if target != recorded:
            repair = ("a promotion, rollback or refresh was interrupted; run `fusion-model "
                      "recover` to complete it") if pending_switch(name) else (
                f"refusing to mix encoders. Run `fusion-model rollback {champion.version}` "
                "to re-align them")
            raise ServingMismatchError(
                f"serving alias {self.config.index.alias} -> {target}, but champion "
                f"v{champion.version} was indexed into {recorded}; {repair}")
        return (champion.version, candidate.query_version, recorded, recorded_roots(tags),
                tags.get(FACETS_TAG))

    def _load(self, version: str, query_version: str, collection: str,
              image_roots: tuple[str, ...], facets_text: str | None = None) -> Served:
        encode = self._encoders.get(query_version)
        if encode is None:
            encode = BatchingEncoder(load_query_encoder(
                self.config.registry.model_name, query_version, self.encoder_streams),
                concurrency=self.encoder_streams)
            _warm_up(encode, query_version)
            if self.query_cache > 0:
                encode = QueryCache(encode, self.query_cache, self.cache_stats)
            # the champion's and the reviewed versions' encoders; older ones end with
            # their last search
            self._encoders = {**dict(list(self._encoders.items())[-KEEP_OTHERS:]),
                              query_version: encode}
        available = set(self.index.fields(collection))
        fields = tuple(f for f in self.config.index.attribute_fields if f in available)
        return Served(version, query_version, collection, encode, fields,
                      tuple(f for f in (*DISPLAY_FIELDS, PHOTO_WEIGHT) if f in available),
                      (*image_roots, *self.image_roots), read_facets(facets_text, fields))

    def _describe(self) -> str:
        return f"v{self.served.version}" if self.served else "nothing"

    def current(self) -> Served:
        if self.served is None:
            raise NoChampionError(self.config.registry.model_name) if not self.problem \
                else ServingMismatchError(self.problem)
        return self.served

    def for_model(self, model: str | None = None) -> Served:
        """``champion`` (or nothing), ``challenger`` or a version number: what that model
        serves, its own collection searched with its own query encoder. Versions other
        than the champion are for reviews; they are loaded on first use."""
        from fusion_model.registry.registry import candidate_for, get_alias

        reference = (model or "champion").strip().lower()
        if reference == "champion":
            return self.current()
        name = self.config.registry.model_name
        if VERSION_REFERENCE.fullmatch(reference):
            reference = str(int(reference.removeprefix("v")))
        elif ALIAS_REFERENCE.fullmatch(reference):
            found = get_alias(name, reference)
            if found is None:
                raise SearchRequestError(f"model {model!r}: {name} has no {reference!r} alias")
            reference = found.version
        else:
            raise SearchRequestError(f"model {_shown(model)}: give champion, challenger or a "
                                     "version number")
        if self.served and reference == self.served.version:
            return self.served
        if reference not in self._others:
            candidate, tags = candidate_for(name, reference)
            collection = tags.get("milvus_collection", "")
            if not collection or not self.index.has_collection(collection):
                raise SearchRequestError(f"{name} v{reference} has no collection to search "
                                         f"({collection or 'never indexed'}"
                                         f"{' was pruned' if collection else ''})")
            others = dict(list(self._others.items())[-(KEEP_OTHERS - 1):])
            self._others = {**others, reference: self._load(
                reference, candidate.query_version, collection, recorded_roots(tags),
                tags.get(FACETS_TAG))}
        return self._others[reference]

    def search(self, query: str, k: int = 10, filter_text: str = "",
               model: str | None = None) -> SearchResult:
        """Top-``k`` products for ``query``: product_id, score, title, image_uri and the
        attribute fields. SearchRequestError for an empty query, ``k`` out of range or a
        bad filter (checked before any encoding)."""
        return self.search_many([query], k, filter_text, model)[0]

    def search_many(self, queries: list[str], k: int = 10, filter_text: str = "",
                    model: str | None = None) -> list[SearchResult]:
        served = self.for_model(model)
        texts = [check_request(q, k) for q in queries]
        expression = to_milvus(filter_text, list(served.filter_fields), served.facets)
        vectors = served.encode(texts)
        rows = self.index.search(served.collection, vectors, k, expression,
                                 [*served.filter_fields, *served.display_fields])
        return [SearchResult(hits, served.version, served.collection) for hits in rows]

    def review_pack(self, model: str | None = None) -> dict | None:
        """The gate's per-query results for the model's version (registry/review_pack.py),
        or None when it was never gated. Read once per version, checked."""
        from fusion_model.registry.registry import candidate_for
        from fusion_model.registry.review_pack import load_review_pack

        version = self.for_model(model).version
        if version not in self._packs:
            _, tags = candidate_for(self.config.registry.model_name, version)
            run_id = tags.get("run_id", "")
            self._packs[version] = load_review_pack(run_id) if re.fullmatch(
                r"[0-9a-f]{32}", run_id) else None
            while len(self._packs) > KEEP_OTHERS + 1:
                self._packs.popitem(last=False)
        return self._packs[version]

    def typical_top_score(self, model: str | None = None) -> float | None:
        """The median best score of up to ``TYPICAL_QUERIES`` judged queries (from the gate's
        pack) with this model: what a query that matches something scores. None when the
        version was never gated."""
        served = self.for_model(model)
        if served.version not in self._typical:
            pack = self.review_pack(model)
            texts = sorted(row["text"] for row in pack["queries"])[:TYPICAL_QUERIES] \
                if pack else []
            texts = [visible_text(t) for t in texts if visible_text(t)]
            scores = self._best_scores(served, texts) if texts else []
            self._typical[served.version] = float(np.median(scores)) if scores else None
        return self._typical[served.version]

    def _best_scores(self, served: Served, texts: list[str]) -> list[float]:
        """Each text's best score, past the query cache (its statistics are shoppers')."""
        encode = served.encode.uncached if isinstance(served.encode, QueryCache) \
            else served.encode
        rows = self.index.search(served.collection, encode(texts), 1, "", [])
        return [float(hits[0]["score"]) for hits in rows if hits]

    def image_uri(self, product_id: str, model: str | None = None) -> str | None:
        """The photo URI stored for ``product_id`` in the model's collection (None when
        the product is unknown or has no photo). PhotoRefusedError for an id that breaks
        the catalog's id rule (checked before any index query) and for a stored location
        outside the version's image roots (a symlink leading out included)."""
        if not re.fullmatch(PRODUCT_ID_PATTERN, product_id or ""):
            raise PhotoRefusedError(f"{_shown(product_id)} is not a product id (letters, "
                                    "digits and _ . : @ + -, at most 128 characters)")
        served = self.for_model(model)
        if "image_uri" not in served.display_fields:
            return None
        row = self.index.rows_of(served.collection, [product_id], ["image_uri"])
        uri = (row.get(product_id) or {}).get("image_uri") or None
        if uri is not None and not storage.is_within(uri, served.image_roots):
            log.warning("refused the photo of %s: %s is outside the image roots %s (add a "
                        "root with `fusion-model serve --image-root`)", product_id, uri,
                        list(served.image_roots))
            raise PhotoRefusedError(f"the photo of {product_id!r} is stored outside the "
                                    "catalog's image roots")
        return uri


def _shown(value: str | None, limit: int = 40) -> str:
    """A caller's value for a message: repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"
