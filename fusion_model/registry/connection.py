"""Pointing MLflow at the tracking store, with a fast failure for an unreachable server.

A light module: the search service and the promotion steps connect through it without
importing the training run's logging (``registry.tracking``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fusion_model.errors import RegistryUnavailableError

PROBE_TIMEOUT_S = 5.0
_reachable: set[str] = set()


def configure(tracking_uri: str | None) -> None:
    """Point MLflow at ``tracking_uri`` (sqlite:///..., http://..., a directory).

    An http(s) server is probed once per process, so an unreachable one fails within
    seconds with RegistryUnavailableError instead of after minutes of client retries."""
    import mlflow

    if not sys.stderr.isatty():  # artifact transfer bars: a terminal's only
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if tracking_uri:
        if tracking_uri.startswith("sqlite:///"):
            _make_parent(Path(tracking_uri.removeprefix("sqlite:///")), tracking_uri)
        elif tracking_uri.startswith(("http://", "https://")):
            probe_server(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)


def _make_parent(path: Path, uri: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryUnavailableError(f"MLflow store {uri}: cannot create {path.parent} "
                                       f"({exc.strerror}); set registry.tracking_uri to a "
                                       "writable place") from exc


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise RegistryUnavailableError unless the tracking server at ``uri`` answers."""
    import urllib.error
    import urllib.request

    if uri in _reachable:
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # it answered (a proxy without /health, an auth wall): reachable
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryUnavailableError(
            f"MLflow tracking server {uri} is not reachable ({reason}); start it (`mlflow "
            "server`), or point registry.tracking_uri / MLFLOW_TRACKING_URI elsewhere"
        ) from exc
    _reachable.add(uri)
