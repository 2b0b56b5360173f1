"""``fusion-model serve``: the champion's search as an HTTP service, with a review page.

Endpoints (JSON unless said otherwise):

- ``GET /search?q=&k=&filter=&model=&session=&review=``: hits with product_id, score,
  title, attributes and ``image_url``; ``model`` is ``champion`` (default), ``challenger``
  or a version. With ``--events`` each search gets a ``search_id`` (``review=true``, the
  review page's searches: not recorded, never interleaved).
- ``POST /events``: a shopper's click, cart or purchase on a recorded search's result.
- ``GET /feedback?q=``: this process's click-through of ``q``'s products and the running
  interleaved comparison.
- ``GET /products/{id}/image?model=``: the product's photo, from local disk or S3.
- ``GET /versions``: champion, challenger and what is served, for the review page.
- ``GET /healthz`` (the process answers), ``GET /readyz`` (a champion is loaded; a later
  champion that is not yet the alias target is reported in ``problem``), ``GET /metrics``
  (Prometheus text format).
- ``GET /``: the review page (a search box, photo grids, two models side by side).

A bad query, ``k`` or filter is a 400 with a message; no champion, or one that is not
served, a 503. With ``FUSION_SERVE_TOKEN`` set every endpoint but the health checks wants
``Authorization: Bearer <token>``. A background thread follows promotions and rollbacks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import gc
import hashlib
import hmac
import json
import logging
import random
import re
import threading
import time
from importlib import resources
from urllib.parse import quote

from fusion_model import storage
from fusion_model.errors import (
    BadInputError,
    FusionModelError,
    IndexUnavailableError,
    NoChampionError,
    RegistryUnavailableError,
    ServingMismatchError,
    StorageError,
)
from fusion_model.feedback.events import (
    MAX_EVENT_BYTES,
    MAX_ID_CHARS,
    EventLog,
    EventSettings,
)
from fusion_model.index.base import PHOTO_WEIGHT
from fusion_model.index.filters import example_filter
from fusion_model.photos import ImageDecodeError, open_photo, reencode
from fusion_model.serving.batcher import BatchStats, SearchBatcher
from fusion_model.serving.interleaver import Interleaver
from fusion_model.serving.searcher import (
    MAX_K,
    WEAK_MATCH,
    ChampionSearcher,
    PhotoRefusedError,
    check_request,
    visible_text,
)

log = logging.getLogger(__name__)
TOKEN_ENV = "FUSION_SERVE_TOKEN"
OPEN_PATHS = ("/healthz", "/readyz")
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
MAX_PHOTO_SIDE = 1024
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNAVAILABLE = (NoChampionError, ServingMismatchError, IndexUnavailableError,
               RegistryUnavailableError)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import (
            GC_COLLECTOR,
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            Info,
            ProcessCollector,
        )

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds
        self.registry.register(GC_COLLECTOR)      # python_gc_collections_total, per generation
        self.requests = Counter("fusion_search_requests", "HTTP requests",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("fusion_search_errors", "Requests answered with 5xx",
                              ["endpoint"], registry=self.registry)
        self.latency = Histogram("fusion_search_latency_seconds",
                                 "Request latency in the service", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.champion = Gauge("fusion_champion_version", "Champion version being served",
                              registry=self.registry)
        self.served = Info("fusion_serving", "What is served", registry=self.registry)
        self.swaps = Counter("fusion_champion_swaps", "Champion changes followed",
                             registry=self.registry)
        self.cache = Gauge("fusion_query_cache", "Query texts answered from the query-vector "
                           "cache (hit) or encoded (miss) since the start", ["result"],
                           registry=self.registry)
        self.batching = Gauge("fusion_search_batching", "Searches run since the start and "
                              "the batches they ran in (one encoder pass and one index call "
                              "each)", ["count"], registry=self.registry)

    def show(self, searcher: ChampionSearcher, batches: BatchStats | None = None) -> None:
        if batches is not None:
            self.batching.labels("searches").set(batches.searches)
            self.batching.labels("batches").set(batches.batches)
        self.cache.labels("hit").set(searcher.cache_stats.hits)
        self.cache.labels("miss").set(searcher.cache_stats.misses)
        served = searcher.served
        if served is not None:
            self.champion.set(float(served.version))
            self.served.info({"collection": served.collection, "version": served.version,
                              "query_version": served.query_version})

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Follower:
    """Calls ``searcher.follow()`` every ``interval`` seconds in a daemon thread."""

    def __init__(self, searcher: ChampionSearcher, metrics: Metrics, interval: float):
        self.searcher, self.metrics, self.interval = searcher, metrics, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="follow-champion", daemon=True)

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.searcher.follow():
                    self.metrics.swaps.inc()
            except Exception:  # noqa: BLE001 - keep serving what is loaded; retry next tick
                log.exception("following the champion failed; still serving %s",
                              self.searcher.served and f"v{self.searcher.served.version}")
                self.searcher.problem = "following the champion failed (see the log)"
            self.metrics.show(self.searcher)


def create_app(searcher: ChampionSearcher, follow_interval: float = 5.0,
               token: str | None = None, max_batch: int = 32,
               allowed_hosts: tuple[str, ...] | None = DEFAULT_HOSTS,
               events: EventLog | None = None, interleaver: Interleaver | None = None,
               explore: float = 0.0, explore_depth: int = 0):
    """The FastAPI application over a loaded ``searcher`` (``max_batch``: concurrent
    searches merged into one encoder pass and one index call; 1 for none;
    ``allowed_hosts``: the ``Host`` header values answered, None for any; ``events``:
    where served searches and ``POST /events`` interactions are recorded, None: off;
    ``interleaver``: interleaves the registry's candidate with the champion on a share of
    the searches, which needs ``events``; ``explore``: the share of recorded champion
    searches whose results are shown in a random order, the randomised traffic that tells
    how much a rank is seen apart from what it shows; ``explore_depth``: an explored search
    shows its k products drawn at random from the top ``explore_depth`` (0: the top k
    itself), so that the logs also judge products the champion ranks just below the page)."""
    check_token(token)
    if not 0 <= explore <= 1:
        raise BadInputError(f"--explore {explore}: a share of searches in [0, 1]")
    if not 0 <= explore_depth <= MAX_K:
        raise BadInputError(f"--explore-depth {explore_depth}: 0 (the page itself) to {MAX_K}")
    shuffler = random.Random()
    if interleaver is not None and events is None:
        raise BadInputError("interleaving needs event logging: without the recorded clicks "
                            "no comparison can be decided (add --events DIR_OR_S3)")
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    metrics = Metrics()
    batcher = SearchBatcher(searcher.search_many, max_batch)
    metrics.show(searcher, batcher.stats)
    follower = Follower(searcher, metrics, follow_interval)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        follower.start()
        if events is not None:
            events.start()
        yield
        follower.stop()
        batcher.close()
        if events is not None:
            await asyncio.to_thread(events.close)

    # no /docs: Swagger UI loads scripts from a CDN, which the page policy forbids
    app = FastAPI(title="fusion-model search", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    page = (resources.files("fusion_model.serving") / "review.html").read_text()
    app.add_middleware(GuardAndMeasure, metrics=metrics, token=token,
                       allowed_hosts=allowed_hosts, page_policy=page_policy(page))

    @app.exception_handler(FusionModelError)
    async def named_error(_request: Request, error: FusionModelError):
        status = 503 if isinstance(error, UNAVAILABLE) else 400 \
            if isinstance(error, BadInputError) else 500
        return JSONResponse({"error": str(error), "kind": type(error).__name__}, status)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(_request: Request, error: RequestValidationError):
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}"
                            for e in error.errors())
        return JSONResponse({"error": reasons, "kind": "SearchRequestError"}, 400)

    @app.get("/search")
    async def search(q: str = "", k: int = Query(10, ge=1, le=MAX_K), filter: str = "",
                     model: str = "champion",
                     session: str = Query("", max_length=MAX_ID_CHARS),
                     review: bool = False):
        """``review``: a reviewer's search (the review page): never interleaved, never
        recorded, so it neither skews the comparison nor the logged click-through."""
        started = time.perf_counter()
        check_request(q, k)  # a bad request never joins (and fails) a batch
        versus = interleaver.pick() if interleaver is not None and model == "champion" \
            and not review else None
        exploring = bool(explore) and versus is None and events is not None and not review \
            and shuffler.random() < explore
        depth = max(k, explore_depth) if exploring else k
        result, shown, interleaving = await _searched(q, depth, filter, model, versus)
        if exploring:  # one search's page drawn from the top `depth`, its ranks randomised
            shown = shuffler.sample(shown, min(k, len(shown)))
        took_ms = round((time.perf_counter() - started) * 1000, 2)
        typical = await asyncio.to_thread(searcher.typical_top_score, model)
        best = float(result.hits[0]["score"]) if result.hits else None
        search_id = None if events is None or review else events.search(
            q, model, result.version, result.collection,
            [hit["product_id"] for hit, _ in shown], session or None, interleaving)
        return _json({"query": q, "k": k, "filter": filter, "model": model,
                      "search_id": search_id,
                      "version": result.version, "collection": result.collection,
                      "took_ms": took_ms,
                      "typical_top_score": None if typical is None else round(typical, 4),
                      "weak_match": bool(typical and best is not None
                                         and best < WEAK_MATCH * typical),
                      "hits": [_hit(hit, version) for hit, version in shown]})

    async def _searched(q: str, k: int, filter_text: str, model: str, versus: str | None):
        """The search's result, its hits each with the version that found it, and the
        interleaving record (None when only ``model`` was searched). A candidate that
        fails leaves the champion's results alone."""
        if versus is None:
            result, other = await batcher.search(q, k, filter_text, model), None
        else:
            result, other = await asyncio.gather(batcher.search(q, k, filter_text, model),
                                                 batcher.search(q, k, filter_text, versus),
                                                 return_exceptions=True)
            if isinstance(result, BaseException):
                raise result
            if isinstance(other, BaseException):
                log.warning("interleaving skipped: candidate v%s failed: %s", versus, other)
                other = None
        if other is None or other.version == result.version:
            return result, [(hit, result.version) for hit in result.hits], None
        shown, interleaving = interleaver.merge(result, other, k)
        return result, shown, interleaving

    async def interaction(request):
        """A shopper's click, add-to-cart or purchase on a result of a served search."""
        if events is None:
            return JSONResponse({"error": "event logging is off: start the service with "
                                          "`fusion-model serve --events DIR_OR_S3`"}, 404)
        body = await _limited_body(request, MAX_EVENT_BYTES)
        if body is None:
            return JSONResponse({"error": f"an event is at most {MAX_EVENT_BYTES} bytes"},
                                413)
        try:
            parsed = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "the body is not JSON", "kind": "EventRejectedError"},
                                400)
        event = events.interaction(parsed)  # EventRejectedError: 400, nothing stored
        return JSONResponse({"accepted": event.kind, "search_id": event.search_id}, 202)

    interaction.__annotations__["request"] = Request  # the class: FastAPI injects it
    app.post("/events")(interaction)

    @app.get("/feedback")
    def feedback(q: str = Query("", max_length=512)):
        """What shoppers did in this process: ``q``'s click-through per shown product and
        the running comparison of the interleaved candidate (empty when logging is off)."""
        return _feedback(events, interleaver, q)

    @app.get("/products/{product_id}/image")
    def image(product_id: str, model: str = "champion"):
        try:
            uri = searcher.image_uri(product_id, model)
        except PhotoRefusedError as error:
            return JSONResponse({"error": str(error), "kind": "PhotoRefusedError"}, 404)
        if uri is None:
            return JSONResponse({"error": f"product {product_id!r} has no photo in "
                                          f"{searcher.for_model(model).collection}"}, 404)
        try:
            photo, media_type = fresh_photo(uri)
        except (OSError, StorageError, ImageDecodeError) as error:
            log.warning("photo of %s: %s", product_id, error)
            return JSONResponse({"error": f"the photo of {product_id!r} cannot be served"},
                                404)
        return Response(photo, media_type=media_type,
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/versions")
    def versions():
        return _versions(searcher)

    @app.get("/review")
    def review(model: str = "challenger", q: str = "", regressions: int = Query(
            REGRESSIONS_SHOWN, ge=0, le=MAX_REGRESSIONS)):
        """The gate's results for ``model``: its metric beside the baseline's per query,
        the queries it loses most on, and with ``q`` that query's grades."""
        return _review(searcher, model, q, regressions)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        served = searcher.served  # a problem while serving (mid-promotion) keeps it ready
        body = {"ready": served is not None,
                "version": served and served.version,
                "collection": served and served.collection, "problem": searcher.problem}
        return JSONResponse(body, 200 if body["ready"] else 503)

    @app.get("/metrics")
    def prometheus():
        metrics.show(searcher, batcher.stats)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse)
    def review_page():
        return page

    return app


async def _limited_body(request, limit: int) -> bytes | None:
    """The request body, or None once it exceeds ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


ROUTES = frozenset({"/search", "/events", "/feedback", "/versions", "/review", "/healthz",
                    "/readyz", "/metrics", "/", "/openapi.json"})


def _endpoint_of(path: str) -> str:
    """A bounded metrics label: the route a path matches, or ``other``."""
    if path.startswith("/products/") and path.endswith("/image"):
        return "/products/{product_id}/image"
    return path if path in ROUTES else "other"


def page_policy(page: str) -> str:
    """The review page's Content-Security-Policy: its own inline script and style (by
    hash) and nothing else; photos from this origin (blob: when a token is in use)."""
    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(
            body.encode()).digest()).decode() + "'" for body in bodies)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src "
            f"{hashes('style')}; img-src 'self' blob:; connect-src 'self'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


DATA_POLICY = "default-src 'none'; frame-ancestors 'none'; sandbox"
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-resource-policy", b"same-origin"))


class GuardAndMeasure:
    """ASGI middleware around every request: the ``Host`` check (against DNS rebinding),
    the bearer-token check, the security headers on every response, and the request
    metrics by route. (A plain ASGI class: Starlette's ``BaseHTTPMiddleware`` costs a
    task and a stream per request.)"""

    def __init__(self, app, metrics: Metrics, token: str | None,
                 allowed_hosts: tuple[str, ...] | None = DEFAULT_HOSTS,
                 page_policy: str = DATA_POLICY):
        self.app, self.metrics, self.token = app, metrics, token
        self.allowed_hosts = None if allowed_hosts is None else {
            h.lower() for h in allowed_hosts}
        self.page_policy = page_policy.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        path, started, status = scope["path"], time.perf_counter(), 500
        policy = self.page_policy if path == "/" else DATA_POLICY.encode()

        async def send_secured(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS,
                                      (b"content-security-policy", policy)]
            await send(message)

        try:
            headers = Headers(scope=scope)
            if not self._host_allowed(headers.get("host", "")):
                await JSONResponse({"error": "this Host is not served; allow it with "
                                             "`fusion-model serve --allowed-host`"}, 400)(
                    scope, receive, send_secured)
            elif self.token and path not in OPEN_PATHS and not _authorised(headers,
                                                                            self.token):
                await JSONResponse({"error": "missing or wrong bearer token"}, 401,
                                   headers={"WWW-Authenticate": "Bearer"})(
                    scope, receive, send_secured)
            else:
                await self.app(scope, receive, send_secured)
        finally:
            self._note(_endpoint_of(path), status, time.perf_counter() - started)

    def _host_allowed(self, host: str) -> bool:
        if self.allowed_hosts is None:
            return True
        return host_name(host) in self.allowed_hosts

    def _note(self, endpoint: str, status: int, seconds: float) -> None:
        self.metrics.latency.labels(endpoint).observe(seconds)
        self.metrics.requests.labels(endpoint, str(status)).inc()
        if status >= 500:
            self.metrics.errors.labels(endpoint).inc()


def host_name(host: str) -> str:
    """The name in a ``Host`` header, without the port ([::1]:80 -> ::1), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def hosts_for(bound: str, extra: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The ``Host`` values a service bound to ``bound`` answers: localhost's names, the
    bound address, ``extra`` (``*`` alone: any host). Names are compared without a port,
    so ``shop.example:8080`` in ``extra`` allows ``shop.example`` on any port."""
    if "*" in extra:
        return None
    names = {*DEFAULT_HOSTS, host_name(bound), *(host_name(h) for h in extra)}
    if bound in ("0.0.0.0", "::"):
        import socket

        names.add(socket.gethostname().lower())
        names.add(socket.getfqdn().lower())
    return tuple(sorted(names))


def check_token(token: str | None) -> None:
    """A bearer token a client can send: printable ASCII without spaces (RFC 6750)."""
    if token and not re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", token):
        raise BadInputError(f"${TOKEN_ENV} must be printable ASCII without spaces (letters, "
                            "digits and - . _ ~ + / =), as a bearer token is sent")


def fresh_photo(uri: str) -> tuple[bytes, str]:
    """The photo at ``uri`` decoded and written anew as JPEG or PNG (at most
    ``MAX_PHOTO_SIDE`` pixels a side): whatever the file holds besides pixels, and
    whatever its name says, only an image reaches the browser."""
    photo = open_photo(storage.read_bytes(uri), uri=uri, draft=MAX_PHOTO_SIDE)
    return reencode(photo, MAX_PHOTO_SIDE)


def _json(body: dict):
    """A JSON response through orjson (FastAPI's default encoder walks every value)."""
    import orjson
    from starlette.responses import Response

    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")


def _authorised(headers, token: str) -> bool:
    given = headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    sent = value.strip().encode("utf-8", "surrogateescape")  # any bytes compare, none raise
    return scheme.lower() == "bearer" and hmac.compare_digest(sent, token.encode())


def _hit(hit: dict, version: str) -> dict:
    shown = {k: v for k, v in hit.items() if k not in ("image_uri", PHOTO_WEIGHT)}
    shown["score"] = round(float(hit["score"]), 6)
    shown["image_url"] = (f"/products/{quote(hit['product_id'], safe='')}/image"
                          f"?model={version}" if hit.get("image_uri") else None)
    if PHOTO_WEIGHT in hit:
        shown[PHOTO_WEIGHT] = _share(hit[PHOTO_WEIGHT])
    return shown


def _share(stored: object) -> float | None:
    """A stored photo weight as a number in [0, 1]; None when absent or not one (the
    index is read as untrusted input)."""
    try:
        value = float(str(stored)[:16])
    except ValueError:
        return None
    return round(value, 3) if 0.0 <= value <= 1.0 else None


def _versions(searcher: ChampionSearcher) -> dict:
    from fusion_model.registry.registry import CHALLENGER, get_alias

    challenger = get_alias(searcher.config.registry.model_name, CHALLENGER)
    served = searcher.served
    versions = {v for v in (served and served.version, challenger and challenger.version) if v}
    return {"model": searcher.config.registry.model_name,
            "links": {v: _links(searcher.config.registry.model_name, v) for v in versions},
            "champion": served and served.version,
            "challenger": challenger and challenger.version,
            "collection": served and served.collection,
            "filter_fields": list(served.filter_fields) if served else [],
            "filter_values": {f: d["values"] for f, d in served.facets.items()}
            if served else {},
            "example_filter": example_filter(list(served.filter_fields), served.facets)
            if served else ""}


def _feedback(events: EventLog | None, interleaver: Interleaver | None, query: str) -> dict:
    if events is None:
        return {"recording": False, "clickthrough": {}, "comparison": None}
    candidate = interleaver.candidate() if interleaver is not None else None
    found = events.live.comparison(candidate) if candidate else None
    comparison = None if candidate is None else {
        "candidate": candidate, "share": interleaver.share,
        **({"searches": found.searches, "wins_candidate": found.wins_b,
            "wins_champion": found.wins_a, "candidate_share": round(found.share_b, 4),
            "low": round(found.low, 4), "high": round(found.high, 4),
            "p_value": found.p_value} if found else {"searches": 0})}
    return {"recording": True, "clickthrough": events.live.clickthrough(visible_text(query))
            if query else {}, "comparison": comparison}


def _links(name: str, version: str) -> dict[str, str]:
    """Where a version is described: its MLflow page, its run's gate review artifacts and
    the Airflow run that trained it (those that are known; MLflow on a file or SQLite
    store without ``$FUSION_MLFLOW_UI_URL`` has no page)."""
    from fusion_model.registry.registry import candidate_for, run_artifacts_url, version_url

    _, tags = candidate_for(name, version)
    links = {"mlflow": version_url(name, version)}
    run_id = tags.get("run_id", "")
    if re.fullmatch(r"[0-9a-f]{32}", run_id) and links["mlflow"]:
        links["gate_review"] = run_artifacts_url(run_id)
    airflow = tags.get("airflow.url", "")
    if airflow.startswith(("http://", "https://")):
        links["airflow"] = airflow
    return {k: v for k, v in links.items() if v}


REGRESSIONS_SHOWN, MAX_REGRESSIONS = 15, 200


def _review(searcher: ChampionSearcher, model: str, query: str, regressions: int) -> dict:
    from fusion_model.data.catalog import query_key

    version = searcher.for_model(model).version
    pack = searcher.review_pack(model)
    if pack is None:
        return {"version": version, "gated": False}
    rows = pack["queries"]
    losing = [{k: row[k] for k in ("text", "candidate", "baseline", "difference")}
              for row in rows[:regressions] if row["difference"] < 0]
    body = {"version": version, "gated": True, "metric": pack["metric"],
            "baseline": pack["baseline"], "queries": len(rows), "regressions": losing}
    if query:
        key = query_key(visible_text(query)[:512])
        body["query"] = next((row for row in rows if query_key(row["text"]) == key), None)
    return body


class CannotListenError(BadInputError):
    """The address to serve on cannot be used: an unknown host, or a port in use."""


def check_can_listen(host: str, port: int) -> None:
    """CannotListenError naming the address and why, when ``host:port`` cannot be bound."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as error:
        hint = ("is another `fusion-model serve` running? choose another --port"
                if error.errno == errno.EADDRINUSE else
                "give --host an address of this machine (127.0.0.1 by default, 0.0.0.0 "
                "for every interface)")
        raise CannotListenError(f"cannot serve on {host}:{port}: "
                                f"{error.strerror or error}; {hint}") from error


def serve(config, host: str = "127.0.0.1", port: int = 8080, follow_interval: float = 5.0,
          token: str | None = None, access_log: bool = True, query_cache: int = 0,
          max_batch: int = 32, encoder_streams: int = 1,
          allowed_hosts: tuple[str, ...] = (), image_roots: tuple[str, ...] = (),
          events: EventSettings | None = None, interleave: float = 0.0,
          explore: float = 0.0, explore_depth: int = 0) -> None:
    """Load the champion and serve until interrupted (``query_cache``: query vectors kept
    per encoder, 0 for none; ``max_batch``: see ``create_app``; ``encoder_streams``: see
    ``ChampionSearcher.open``; ``allowed_hosts``: Host values answered besides localhost
    and ``host``; ``image_roots``: places photos may be read from besides each version's
    recorded roots; ``events``: where searches and interactions are recorded;
    ``interleave``: the share of searches that interleave the registry's candidate with the
    champion, 0 for none; ``explore``, ``explore_depth``: see ``create_app``)."""
    import uvicorn

    check_token(token)
    if (interleave or explore) and events is None:
        raise BadInputError("--interleave and --explore need --events: both only serve the "
                            "recorded clicks")
    check_can_listen(host, port)  # before seconds of loading, not after
    with ChampionSearcher.open(config, strict=False, query_cache=query_cache,
                               encoder_streams=encoder_streams,
                               image_roots=image_roots) as searcher:
        app = create_app(searcher, follow_interval, token, max_batch,
                         hosts_for(host, allowed_hosts),
                         None if events is None else EventLog(events),
                         Interleaver(searcher, interleave) if interleave else None,
                         explore, explore_depth)
        if events is not None:
            log.info("recording searches and POST /events interactions under %s (kept %d "
                     "days)%s", events.root, events.retention_days,
                     f"; interleaving the candidate on {interleave:.0%} of searches"
                     if interleave else "")
        if searcher.served is None:
            log.warning("not ready: %s; /readyz answers 503 until a champion is served "
                        "(checked every %.0f s)", searcher.problem, follow_interval)
        log.info("serving %s of %s on http://%s:%d (review page at /; up to %d concurrent "
                 "searches merged, query cache %d texts)",
                 f"v{searcher.served.version}" if searcher.served else "nothing yet",
                 config.registry.model_name, host, port, max_batch, query_cache)
        # the loaded encoders, tokenizers and libraries are millions of objects that live
        # as long as the process: out of the collector's sight, a full collection no
        # longer walks them in the middle of a search
        gc.freeze()
        uvicorn.run(app, host=host, port=port, access_log=access_log,
                    log_level="info", timeout_graceful_shutdown=5)
