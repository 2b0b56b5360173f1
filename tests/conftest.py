"""Shared fixtures: small catalogs, the real Myntra sample, a local S3 server."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MYNTRA_SOURCE = Path(os.environ.get("FUSION_MYNTRA_SOURCE",
                                    REPO.parent / "shared" / "data" / "myntra-fashion"))
IKEA_SOURCE = Path(os.environ.get("FUSION_IKEA_SOURCE",
                                  REPO.parent / "shared" / "data" / "ikea-interior"))
FLIPKART_SOURCE = Path(os.environ.get("FUSION_FLIPKART_SOURCE",
                                      REPO.parent / "shared" / "data" / "flipkart-products"))

# The content tag cache of this test session (not the user's ~/.cache): subprocesses the
# tests start inherit it.
os.environ.setdefault("FUSION_CONTENT_TAG_CACHE",
                      str(Path(tempfile.mkdtemp(prefix="fusion-tags-")) / "tags.sqlite"))


@pytest.fixture(scope="session")
def synthetic_catalog(tmp_path_factory) -> Path:
    """A 300-product synthetic catalog (parquet) shared by read-only tests."""
    from fusion_model.data.synthetic import generate_synthetic_catalog

    out = tmp_path_factory.mktemp("synthetic") / "catalog"
    generate_synthetic_catalog(str(out), n_products=300, seed=7, progress=False)
    return out


@pytest.fixture(scope="session")
def myntra_source() -> Path:
    if not (MYNTRA_SOURCE / "styles.csv").is_file():
        pytest.fail(f"Myntra sample not found at {MYNTRA_SOURCE}; set FUSION_MYNTRA_SOURCE")
    return MYNTRA_SOURCE


@pytest.fixture(scope="session")
def ikea_source() -> Path:
    if not (IKEA_SOURCE / "products.json").is_file():
        pytest.fail(f"IKEA sample not found at {IKEA_SOURCE}; set FUSION_IKEA_SOURCE")
    return IKEA_SOURCE


@pytest.fixture(scope="session")
def flipkart_source() -> Path:
    if not (FLIPKART_SOURCE / "products.csv").is_file():
        pytest.fail(f"Flipkart sample not found at {FLIPKART_SOURCE}; set FUSION_FLIPKART_SOURCE")
    return FLIPKART_SOURCE


def tiny_overrides(root: Path) -> list[str]:
    """Overrides on the packaged ``tiny`` config keeping every store under ``root``: one
    epoch per stage, Milvus Lite, MLflow on SQLite with local artifacts."""
    return [f"train.cache_dir={root / 'cache'}", "train.stage1.epochs=1",
            "train.stage2.epochs=1", f"index.uri={root / 'milvus.db'}",
            f"registry.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"registry.artifact_location={root / 'artifacts'}"]


def promote_tiny(root: Path, products: int, queries: int, seed: int,
                 *extra: str) -> tuple[str, list[str]]:
    """A synthetic catalog under ``root`` and its champion v1 (``fusion-model lifecycle
    --force-promote`` on the tiny config); returns the catalog and the overrides."""
    from fusion_model.cli import main
    from fusion_model.data.synthetic import generate_synthetic_catalog

    catalog = generate_synthetic_catalog(str(root / "catalog"), n_products=products,
                                         n_queries=queries, seed=seed, progress=False)
    overrides = tiny_overrides(root)
    assert main(["lifecycle", "--catalog", catalog, "--work-dir", str(root / "run"),
                 "--force-promote", "--config", "tiny", *overrides, *extra]) == 0
    return catalog, overrides


def champion_and_challenger(root: Path, products: int, queries: int, seed: int,
                            challenger_seed: int) -> dict:
    """``promote_tiny``'s champion v1, then a v2 trained with ``challenger_seed``,
    registered (the challenger) and indexed: root, catalog, overrides, v2 and its
    collection."""
    from fusion_model.pipelines import steps

    catalog, overrides = promote_tiny(root, products=products, queries=queries, seed=seed)
    second = [*overrides, f"train.seed={challenger_seed}"]
    steps.train(catalog, str(root / "v2"), "tiny", second)
    version = steps.register(str(root / "v2"), catalog, "tiny", second)["version"]
    collection = steps.index(version, catalog, "tiny", second)["collection"]
    return {"root": root, "catalog": catalog, "overrides": overrides, "v2": version,
            "v2_collection": collection}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str, every: float = 1.0, logs: tuple = ()):
    """Poll ``check`` until it returns something truthy; fail naming what never came and
    showing the tail of each log file given."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    tails = "\n".join(f"--- {p} ---\n{_tail(p)}" for p in logs)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f}s\n{tails}")


def _tail(path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return str(error)


def http_ok(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=5).status_code < 500
    except requests.RequestException:
        return False


def stop_process_tree(process) -> None:
    """SIGINT to every process of the tree (children first), SIGTERM what is left, then
    SIGKILL the whole process group (``start_new_session=True``), so that nothing an
    Airflow component forked outlives the test."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(process.pid)
        tree = root.children(recursive=True) + [root]
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGINT)
        _, alive = psutil.wait_procs(tree, timeout=30)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        psutil.wait_procs(alive, timeout=15)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto) on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3_bucket(s3_server, monkeypatch) -> str:
    """A fresh bucket on the local S3 server, with the AWS environment pointing at it."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"catalogs-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """``milvus-lite server`` on 127.0.0.1 (a network URI, as a Milvus server would be)."""
    import subprocess
    import sys
    import time

    port = free_port()
    data = tmp_path_factory.mktemp("milvus-server")
    binary = Path(sys.executable).with_name("milvus-lite")
    process = subprocess.Popen([str(binary), "server", "--data-dir", str(data), "--host",
                                "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("milvus-lite server did not start within 60 s")
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


def pytest_unconfigure(config):
    """milvus-lite logs from an atexit hook after pytest closed its streams; keep quiet."""
    logging.raiseExceptions = False


class Uvicorn:
    """The app on a real uvicorn server in a thread, on a free loopback port."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
