"""The production shape without Docker: real servers on 127.0.0.1, started per session.

PostgreSQL (Debian's binaries; Airflow metadata + MLflow backend store), a moto S3 server
(catalog, photos, MLflow artifacts), ``mlflow server`` proxying artifacts to S3, the real
Milvus standalone server (``milvus-server`` from the ``milvus`` package: embedded etcd,
local storage) and Airflow 3 with the LocalExecutor on PostgreSQL as separate api-server,
scheduler and dag-processor processes, configured only through environment variables, as
infra/compose.yaml configures it.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.airflow_api import airflow_environment
from tests.conftest import REPO, free_port, http_ok, stop_process_tree, wait_for

BIN = Path(sys.executable).parent
INSTALL_HINT = "run `bash infra/local/install-postgres.sh` (Debian's postgresql package)"


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parts[-3]))
    if not found:
        pytest.fail(f"no PostgreSQL server binaries under /usr/lib/postgresql; {INSTALL_HINT}")
    return Path(found[-1]).parent


def _as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the package's ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres():
    """A throw-away cluster on 127.0.0.1 with password-protected ``airflow`` and ``mlflow``
    databases; yields their SQLAlchemy URLs."""
    bindir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="fusion-pg-"))  # outside pytest's 0700 tmp dirs
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    subprocess.run(_as_postgres_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                                      "--auth-local=trust", "--auth-host=scram-sha-256",
                                      "-E", "UTF8", "--no-instructions"]),
                   check=True, capture_output=True, timeout=120)
    log = root / "postgres.log"
    with log.open("w") as out:
        server = subprocess.Popen(_as_postgres_user(
            [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
             "-k", str(root), "-c", "max_connections=200"]), stdout=out, stderr=subprocess.STDOUT)
    try:
        yield _init_databases(bindir, root, port, log)
    finally:
        server.terminate()  # runuser passes SIGTERM on: a fast shutdown of the cluster
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _init_databases(bindir: Path, root: Path, port: int, log: Path) -> dict[str, str]:
    """Wait for the server, then run the compose stack's own first-start script."""
    ready = [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"]
    wait_for(lambda: subprocess.run(ready).returncode == 0, 60, "PostgreSQL", logs=(log,))
    passwords = {"AIRFLOW_DB_PASSWORD": secrets.token_hex(12),
                 "MLFLOW_DB_PASSWORD": secrets.token_hex(12)}
    subprocess.run(["bash", str(REPO / "infra" / "postgres" / "init-databases.sh")],
                   env={**os.environ, **passwords, "POSTGRES_USER": "postgres",
                        "PGHOST": str(root), "PGPORT": str(port),
                        "PATH": f"{bindir}:{os.environ.get('PATH', '')}"},
                   check=True, capture_output=True, timeout=60)
    return {name: f"postgresql+psycopg2://{name}:{passwords[f'{name.upper()}_DB_PASSWORD']}"
                  f"@127.0.0.1:{port}/{name}" for name in ("airflow", "mlflow")}


MILVUS_PORT_FLAGS = ("etcd", "root-coord", "proxy", "proxy-internal", "query-coord",
                     "query-node", "index-coord", "index-node", "data-coord", "data-node")
ETCD_PEER_PORT = 2380  # not configurable from milvus-server's command line


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """The real Milvus standalone server (``milvus-server``), every port chosen free; yields
    its URI. Its gRPC ports listen on all interfaces (Milvus 2.3 has no listen-address
    setting); clients here use 127.0.0.1 only. Stopping it stops its child ``milvus run
    standalone`` too (the wrapper alone would leave it running)."""
    if not _port_free(ETCD_PEER_PORT):
        pytest.fail(f"127.0.0.1:{ETCD_PEER_PORT} is in use: milvus 2.3.5's embedded etcd "
                    "binds that peer port unconditionally, so another Milvus standalone "
                    "server (`milvus run standalone`) is probably running; stop it")
    data = tmp_path_factory.mktemp("milvus-standalone")
    ports = {flag: free_port() for flag in MILVUS_PORT_FLAGS}
    command = [str(BIN / "milvus-server"), "--data", str(data)]
    for flag, port in ports.items():
        command += [f"--{flag}-port", str(port)]
    log = data / "milvus-server.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    uri = f"http://127.0.0.1:{ports['proxy']}"
    try:
        wait_for(lambda: _milvus_answers(uri), 240, "the Milvus standalone server",
                 every=2, logs=(log, data / "logs" / "milvus-stdout.log"))
        yield uri
    finally:
        stop_process_tree(process)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _milvus_answers(uri: str) -> bool:
    from fusion_model.index.milvus import MilvusIndex

    try:
        with MilvusIndex.open(uri) as index:
            index.list_collections()
        return True
    except Exception:  # noqa: BLE001 - not up yet, whatever the client says
        return False


def s3_environment(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL_S3": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


def clean_environment() -> dict[str, str]:
    """This process's environment without anything that would bypass the deployment's
    own settings (AWS keys, MLflow URIs, Airflow config left by other tests)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "MLFLOW_", "AIRFLOW", "FUSION_"))}


@pytest.fixture(scope="session")
def buckets(s3_server) -> dict[str, str]:
    client = s3_client(s3_server)
    names = {"catalog": "shop", "artifacts": "mlflow-artifacts"}
    for bucket in names.values():
        client.create_bucket(Bucket=bucket)
    return names


def s3_client(endpoint: str):
    """A boto3 S3 client for the test's S3 server (keys given here, not from the env)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")


@pytest.fixture(scope="session")
def mlflow_server(postgres, s3_server, buckets, tmp_path_factory) -> str:
    """``mlflow server``: PostgreSQL backend store, artifacts proxied to the S3 bucket."""
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "mlflow.log"
    env = {**clean_environment(), **s3_environment(s3_server)}
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", postgres["mlflow"],
             "--artifacts-destination", f"s3://{buckets['artifacts']}/mlflow"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{uri}/health"), 180, "mlflow server", logs=(log,))
        yield uri
    finally:
        stop_process_tree(process)  # uvicorn and the job consumers are its children


@pytest.fixture(scope="session")
def airflow_stack(postgres, mlflow_server, milvus_server, s3_server, buckets,
                  tmp_path_factory):
    """Airflow 3 on PostgreSQL with the LocalExecutor: api-server, scheduler and
    dag-processor as separate processes; the platform's settings come only from
    connections and variables in the environment."""
    root = tmp_path_factory.mktemp("airflow-prod")
    port = free_port()
    milvus_host, milvus_port = milvus_server.removeprefix("http://").split(":")
    mlflow_host, mlflow_port = mlflow_server.removeprefix("http://").split(":")
    env = {**airflow_environment(clean_environment(), root / "home", port, root / "work"),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres["airflow"],
           "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
           "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
           "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
           "AIRFLOW__API__WORKERS": "1",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
           "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
           "FUSION_CATALOG_URI": f"s3://{buckets['catalog']}/catalogs/current",
           "AIRFLOW_CONN_FUSION_MILVUS": json.dumps(
               {"conn_type": "http", "host": milvus_host, "port": int(milvus_port)}),
           "AIRFLOW_CONN_FUSION_MLFLOW": json.dumps(
               {"conn_type": "http", "host": mlflow_host, "port": int(mlflow_port)}),
           "AIRFLOW_CONN_FUSION_S3": json.dumps(
               {"conn_type": "aws", "login": "testing", "password": "testing",
                "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}})}
    airflow = str(BIN / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=600)
    processes, logs = [], []
    for component in ("api-server", "scheduler", "dag-processor"):
        log = root / f"{component}.log"
        logs.append(log)
        with log.open("w") as out:
            processes.append(subprocess.Popen([airflow, component], env=env, stdout=out,
                                              stderr=subprocess.STDOUT,
                                              start_new_session=True))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{base}/api/v2/version"), 300, "the Airflow API server",
                 logs=tuple(logs))
        yield {"base": base, "home": root / "home", "logs": logs,
               "catalog_uri": env["FUSION_CATALOG_URI"]}
    finally:
        for process in processes:
            stop_process_tree(process)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
