"""``fusion-model serve``: the champion's search as an HTTP service, with a review page.

Endpoints (JSON unless said otherwise):

- ``GET /search?q=&k=&filter=&model=``: hits with product_id, score, title, attributes
  and ``image_url``; ``model`` is ``champion`` (default), ``challenger`` or a version.
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

import contextlib
import errno
import hmac
import logging
import mimetypes
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
from fusion_model.serving.batcher import BatchStats, SearchBatcher
from fusion_model.serving.searcher import MAX_K, ChampionSearcher, check_request

log = logging.getLogger(__name__)
TOKEN_ENV = "FUSION_SERVE_TOKEN"
OPEN_PATHS = ("/healthz", "/readyz")
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNAVAILABLE = (NoChampionError, ServingMismatchError, IndexUnavailableError,
               RegistryUnavailableError)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            Info,
            ProcessCollector,
        )

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds
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
               token: str | None = None, max_batch: int = 32):
    """The FastAPI application over a loaded ``searcher`` (``max_batch``: concurrent
    searches merged into one encoder pass and one index call; 1 for none)."""
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
        yield
        follower.stop()
        batcher.close()

    app = FastAPI(title="fusion-model search", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)

    app.add_middleware(GuardAndMeasure, metrics=metrics, token=token)

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
                     model: str = "champion"):
        started = time.perf_counter()
        check_request(q, k)  # a bad request never joins (and fails) a batch
        result = await batcher.search(q, k, filter, model)
        return _json({"query": q, "k": k, "filter": filter, "model": model,
                      "version": result.version, "collection": result.collection,
                      "took_ms": round((time.perf_counter() - started) * 1000, 2),
                      "hits": [_hit(hit, result.version) for hit in result.hits]})

    @app.get("/products/{product_id}/image")
    def image(product_id: str, model: str = "champion"):
        uri = searcher.image_uri(product_id, model)
        if uri is None:
            return JSONResponse({"error": f"product {product_id!r} has no photo in "
                                          f"{searcher.for_model(model).collection}"}, 404)
        try:
            photo = storage.read_bytes(uri)
        except (OSError, StorageError) as error:
            log.warning("photo of %s: %s", product_id, error)
            return JSONResponse({"error": f"the photo of {product_id!r} cannot be read "
                                          f"({error})"}, 404)
        return Response(photo, media_type=mimetypes.guess_type(uri)[0] or "image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/versions")
    def versions():
        return _versions(searcher)

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
        return (resources.files("fusion_model.serving") / "review.html").read_text()

    return app


def _endpoint_of(path: str) -> str:
    """A bounded label: image URLs share one."""
    return "/products/image" if path.startswith("/products/") else path


class GuardAndMeasure:
    """ASGI middleware: the bearer-token check and the request metrics. (A plain ASGI
    class: Starlette's ``BaseHTTPMiddleware`` costs a task and a stream per request.)"""

    def __init__(self, app, metrics: Metrics, token: str | None):
        self.app, self.metrics, self.token = app, metrics, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        path, started, status = scope["path"], time.perf_counter(), 500

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.token and path not in OPEN_PATHS and not _authorised(
                    Headers(scope=scope), self.token):
                await JSONResponse({"error": "missing or wrong bearer token"}, 401,
                                   headers={"WWW-Authenticate": "Bearer"})(
                    scope, receive, send_and_note)
            else:
                await self.app(scope, receive, send_and_note)
        finally:
            self._note(_endpoint_of(path), status, time.perf_counter() - started)

    def _note(self, endpoint: str, status: int, seconds: float) -> None:
        self.metrics.latency.labels(endpoint).observe(seconds)
        self.metrics.requests.labels(endpoint, str(status)).inc()
        if status >= 500:
            self.metrics.errors.labels(endpoint).inc()


def _json(body: dict):
    """A JSON response through orjson (FastAPI's default encoder walks every value)."""
    import orjson
    from starlette.responses import Response

    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")


def _authorised(headers, token: str) -> bool:
    given = headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token)


def _hit(hit: dict, version: str) -> dict:
    shown = {k: v for k, v in hit.items() if k != "image_uri"}
    shown["score"] = round(float(hit["score"]), 6)
    shown["image_url"] = (f"/products/{quote(hit['product_id'], safe='')}/image"
                          f"?model={version}" if hit.get("image_uri") else None)
    return shown


def _versions(searcher: ChampionSearcher) -> dict:
    from fusion_model.registry.registry import CHALLENGER, get_alias

    challenger = get_alias(searcher.config.registry.model_name, CHALLENGER)
    served = searcher.served
    return {"model": searcher.config.registry.model_name,
            "champion": served and served.version,
            "challenger": challenger and challenger.version,
            "collection": served and served.collection,
            "filter_fields": list(served.filter_fields) if served else []}


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
          max_batch: int = 32, encoder_streams: int = 1) -> None:
    """Load the champion and serve until interrupted (``query_cache``: query vectors kept
    per encoder, 0 for none; ``max_batch``: see ``create_app``; ``encoder_streams``: see
    ``ChampionSearcher.open``)."""
    import uvicorn

    check_can_listen(host, port)  # before seconds of loading, not after
    with ChampionSearcher.open(config, strict=False, query_cache=query_cache,
                               encoder_streams=encoder_streams) as searcher:
        app = create_app(searcher, follow_interval, token, max_batch)
        if searcher.served is None:
            log.warning("not ready: %s; /readyz answers 503 until a champion is served "
                        "(checked every %.0f s)", searcher.problem, follow_interval)
        log.info("serving %s of %s on http://%s:%d (review page at /; up to %d concurrent "
                 "searches merged, query cache %d texts)",
                 f"v{searcher.served.version}" if searcher.served else "nothing yet",
                 config.registry.model_name, host, port, max_batch, query_cache)
        uvicorn.run(app, host=host, port=port, access_log=access_log,
                    log_level="info", timeout_graceful_shutdown=5)
