"""The production shape without Docker: real servers on 127.0.0.1, started per session.

PostgreSQL (Debian's binaries; Airflow metadata, Celery results, MLflow backend store),
Redis (Debian's binary; the Celery broker), a moto S3 server (catalog, photos, MLflow
artifacts), ``mlflow server`` proxying artifacts to S3, the real Milvus standalone server
(``milvus-server`` from the ``milvus`` package: embedded etcd, local storage) and Airflow 3
with the CeleryExecutor as separate api-server, scheduler and dag-processor processes and
two ``airflow celery worker`` processes, one on the default queue and one on the training
queue, configured only through environment variables, as infra/compose.yaml configures it.
The two workers share no disk: each has its own ``AIRFLOW_HOME`` (feature cache, scratch
folder, logs), and tasks hand work over through the S3 work area (``fusion_work_dir``).
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
INSTALL_HINT = "run `bash infra/local/install-services.sh` (Debian's packages)"
TRAINING_QUEUE = "training"
# Which worker ran a task: each reports its own name as the task instance's hostname
# (Airflow's [core] hostname_callable), both run on this one host.
WORKER_IDENTITY = """import os


def name() -> str:
    return os.environ["FUSION_TEST_WORKER"]
"""


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


MILVUS_BUCKET = "milvus-segments"


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory, s3_server):
    """The real Milvus standalone server (``milvus-server``, fusion_model.index.standalone)
    on free ports, its segments in a bucket of the local S3 server (as a Milvus cluster
    keeps them in MinIO/S3; bulk import reads from there); yields its URI."""
    import boto3

    from fusion_model.index.standalone import (
        ObjectStorage,
        StandaloneServerError,
        standalone_server,
    )

    keys = s3_environment(s3_server)
    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
                 region_name=keys["AWS_DEFAULT_REGION"]).create_bucket(Bucket=MILVUS_BUCKET)
    storage = ObjectStorage(s3_server, MILVUS_BUCKET, keys["AWS_ACCESS_KEY_ID"],
                            keys["AWS_SECRET_ACCESS_KEY"])
    try:
        with standalone_server(tmp_path_factory.mktemp("milvus-standalone"),
                               storage=storage) as uri:
            yield uri
    except StandaloneServerError as error:
        pytest.fail(str(error))


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
    names = {"catalog": "shop", "artifacts": "mlflow-artifacts", "work": "fusion-work"}
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
def redis_server(tmp_path_factory) -> str:
    """redis-server on 127.0.0.1 without persistence; yields its URL (database 0)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(f"no redis-server on PATH; {INSTALL_HINT}")
    root, port = tmp_path_factory.mktemp("redis"), free_port()
    log = root / "redis.log"
    with log.open("w") as out:
        process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port),
                                    "--save", "", "--appendonly", "no", "--dir", str(root)],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for(lambda: _redis_answers(url), 60, "redis-server", logs=(log,))
        yield url
    finally:
        stop_process_tree(process)


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def airflow_stack(postgres, redis_server, mlflow_server, milvus_server, s3_server, buckets,
                  tmp_path_factory):
    """Airflow 3 on PostgreSQL with the CeleryExecutor (Redis broker): api-server,
    scheduler and dag-processor as separate processes, a Celery worker on the default
    queue and one on the training queue; the platform's settings come only from
    connections, variables and the environment."""
    root = tmp_path_factory.mktemp("airflow-prod")
    port = free_port()
    milvus_host, milvus_port = milvus_server.removeprefix("http://").split(":")
    mlflow_host, mlflow_port = mlflow_server.removeprefix("http://").split(":")
    work_uri = f"s3://{buckets['work']}/work"
    env = {**airflow_environment(clean_environment(), root / "home", port, work_uri),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres["airflow"],
           "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
           "AIRFLOW__CELERY__BROKER_URL": redis_server,
           "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + postgres["airflow"].replace(
               "postgresql+psycopg2://", "postgresql://"),
           "FUSION_TRAINING_QUEUE": TRAINING_QUEUE,
           # scheduled and asset-triggered runs: the short schedule
           "FUSION_CONFIG_NAME": "fast",
           # the scheduler creates asset-triggered runs only with its job schedule on; no
           # cron runs (catchup=False would start the latest missed one of each at once)
           "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
           "FUSION_TRAINING_CRON": "none", "FUSION_REFRESH_CRON": "none",
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
    (root / "identity").mkdir()
    (root / "identity" / "fusion_test_worker.py").write_text(WORKER_IDENTITY)
    worker_env = {**env, "PYTHONPATH": str(root / "identity"),
                  "AIRFLOW__CORE__HOSTNAME_CALLABLE": "fusion_test_worker.name"}
    components = {name: ([airflow, name], env)
                  for name in ("api-server", "scheduler", "dag-processor")}
    for queue, slots in (("default", 2), (TRAINING_QUEUE, 1)):
        components[f"worker-{queue}"] = (
            [airflow, "celery", "worker", "--queues", queue, "--concurrency", str(slots),
             "--celery-hostname", f"{queue}@%h", "--skip-serve-logs"],
            {**worker_env, "FUSION_TEST_WORKER": f"{queue}-worker",
             "AIRFLOW_HOME": str(root / f"disk-{queue}" / "home")})
    processes, logs = [], {}
    for name, (command, component_env) in components.items():
        logs[name] = root / f"{name}.log"
        with logs[name].open("w") as out:
            processes.append(subprocess.Popen(command, env=component_env, stdout=out,
                                              stderr=subprocess.STDOUT,
                                              start_new_session=True))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{base}/api/v2/version"), 300, "the Airflow API server",
                 logs=tuple(logs.values()))
        for queue in ("default", TRAINING_QUEUE):
            log = logs[f"worker-{queue}"]
            wait_for(lambda log=log: " ready." in log.read_text(errors="replace"), 180,
                     f"the Celery worker on queue {queue}", logs=(log,))
        yield {"base": base, "home": root / "home", "logs": list(logs.values()),
               "work_uri": work_uri, "root": root,
               "disks": {queue: root / f"disk-{queue}" for queue in ("default",
                                                                    TRAINING_QUEUE)},
               "catalog_uri": env["FUSION_CATALOG_URI"], "training_queue": TRAINING_QUEUE}
    finally:
        for process in processes:
            stop_process_tree(process)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
