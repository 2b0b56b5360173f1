"""Shared fixtures: small catalogs, the real Myntra sample, a local S3 server."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MYNTRA_SOURCE = Path(os.environ.get("FUSION_MYNTRA_SOURCE",
                                    REPO.parent / "shared" / "data" / "myntra-fashion"))


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
