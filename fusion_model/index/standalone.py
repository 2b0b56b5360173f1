"""A throw-away Milvus standalone server on this machine, for tests and benchmarks.

The ``milvus`` package on PyPI (2.3.5, a dev dependency) ships the real Milvus standalone
server with embedded etcd and local storage as ``milvus-server``. ``standalone_server``
starts it on free ports, waits until a client can list collections, yields its URI and
stops it again, including its child ``milvus run standalone`` (stopping the wrapper alone
would leave that running). Its gRPC ports listen on all interfaces (Milvus 2.3 has no
listen-address setting); the URI it yields is on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fusion_model.errors import FusionModelError

log = logging.getLogger(__name__)

PORT_FLAGS = ("etcd", "root-coord", "proxy", "proxy-internal", "query-coord", "query-node",
              "index-coord", "index-node", "data-coord", "data-node")
ETCD_PEER_PORT = 2380  # milvus-server cannot move the embedded etcd's peer port


class StandaloneServerError(FusionModelError):
    """The local Milvus standalone server could not start."""


@dataclass(frozen=True)
class ObjectStorage:
    """An S3-protocol store (MinIO, S3, moto) for the server's segments, in place of its
    local disk: what a Milvus cluster runs on, and where bulk import reads its files."""

    endpoint: str         # http://host:port
    bucket: str
    access_key: str
    secret_key: str
    root_path: str = "files"
    region: str = "us-east-1"

    def server_flags(self) -> list[str]:
        """``milvus-server --extra-config`` flags that put its storage there."""
        parsed = urllib.parse.urlsplit(self.endpoint)
        settings = {"common.storageType": "minio", "minio.address": parsed.hostname,
                    "minio.port": parsed.port or (443 if parsed.scheme == "https" else 80),
                    "minio.useSSL": str(parsed.scheme == "https").lower(),
                    "minio.bucketName": self.bucket, "minio.rootPath": self.root_path,
                    "minio.accessKeyID": self.access_key,
                    "minio.secretAccessKey": self.secret_key, "minio.region": self.region}
        return [flag for key, value in settings.items()
                for flag in ("--extra-config", f"{key}={value}")]


@contextlib.contextmanager
def standalone_server(data_dir: Path, timeout: float = 240,
                      storage: ObjectStorage | None = None) -> Iterator[str]:
    """Run ``milvus-server`` with its data under ``data_dir`` (segments in ``storage``
    when given); yields ``http://127.0.0.1:port``."""
    binary = shutil.which("milvus-server", path=str(Path(sys.executable).parent)) \
        or shutil.which("milvus-server")
    if binary is None:
        raise StandaloneServerError("milvus-server not found: install the dev extra "
                                    "(`milvus` package, make setup)")
    if _listening(ETCD_PEER_PORT):
        raise StandaloneServerError(
            f"127.0.0.1:{ETCD_PEER_PORT} is in use: the embedded etcd of milvus-server binds "
            "that peer port unconditionally, so another Milvus standalone server (`milvus "
            "run standalone`) is probably running; stop it first")
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = {flag: _free_port() for flag in PORT_FLAGS}
    command = [binary, "--data", str(data_dir)]
    for flag, port in ports.items():
        command += [f"--{flag}-port", str(port)]
    if storage is not None:
        command += storage.server_flags()
    server_log = data_dir / "milvus-server.log"
    with server_log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    uri = f"http://127.0.0.1:{ports['proxy']}"
    try:
        _wait_until_answering(uri, process, timeout, data_dir)
        log.info("Milvus standalone server at %s (data %s)", uri, data_dir)
        yield uri
    finally:
        _stop(process)


@contextlib.contextmanager
def lite_server(data_dir: Path, timeout: float = 60) -> Iterator[str]:
    """Run ``milvus-lite server`` on 127.0.0.1 with its data under ``data_dir`` (several
    processes share one Milvus Lite store through it); yields its URI."""
    binary = Path(sys.executable).with_name("milvus-lite")
    if not binary.exists():
        raise StandaloneServerError(f"{binary} not found: install the package (make setup)")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    with (data_dir / "milvus-lite-server.log").open("w") as out:
        process = subprocess.Popen([str(binary), "server", "--data-dir", str(data_dir),
                                    "--host", "127.0.0.1", "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(uri, process, timeout, data_dir)
        yield uri
    finally:
        _stop(process)


def _wait_until_answering(uri: str, process: subprocess.Popen, timeout: float,
                          data_dir: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _answers(uri):
            return
        time.sleep(2)
    server_log = data_dir / "logs" / "milvus-stdout.log"
    tail = server_log.read_text(errors="replace").splitlines()[-15:] \
        if server_log.exists() else []
    raise StandaloneServerError(f"Milvus standalone did not answer at {uri} within "
                                f"{timeout:.0f} s; its log ({server_log}) ends:\n"
                                + "\n".join(tail))


def _answers(uri: str) -> bool:
    from fusion_model.index.milvus import MilvusIndex

    try:
        with MilvusIndex.open(uri) as index:
            index.list_collections()
        return True
    except Exception:  # noqa: BLE001 - not up yet, whatever the client says
        return False


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the whole session (wrapper and ``milvus run standalone``), SIGKILL what
    is left after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        if _group_gone(process, wait):
            return


def _group_gone(process: subprocess.Popen, wait: float) -> bool:
    deadline = time.monotonic() + wait
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=wait)
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
