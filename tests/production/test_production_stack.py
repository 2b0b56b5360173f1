"""Production mode, no Docker: the training DAG triggered through Airflow's REST API runs
on the CeleryExecutor (Redis broker, a default-queue and a training-queue worker) with its
metadata in PostgreSQL, reads the catalog and photos from S3, tracks and registers in an
``mlflow server`` (PostgreSQL backend, artifacts on S3), indexes into the real Milvus
standalone server, and promotes. Then ``catalog_refresh`` on a new snapshot moves the
serving alias and updates the ``catalog`` asset, the scheduler starts a training run on
exactly that snapshot, and a separate serving process keeps searching the serving alias
through both without a single failure."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from fusion_model import storage
from fusion_model.data.synthetic import generate_synthetic_catalog
from tests.airflow_api import TRAINING_DAG, AirflowApi
from tests.conftest import free_port, http_ok, stop_process_tree, wait_for
from tests.production.conftest import TRAINING_QUEUE, s3_client, s3_environment

pytestmark = pytest.mark.production

PRODUCTS = 400
RUN_TIMEOUT = 1200  # seconds for one DAG run


@pytest.fixture(scope="module")
def local_catalog(tmp_path_factory) -> Path:
    local = tmp_path_factory.mktemp("prod-catalog") / "catalog"
    generate_synthetic_catalog(str(local), n_products=PRODUCTS, n_queries=500, seed=9,
                               progress=False)
    return local


@pytest.fixture(scope="module")
def catalog_on_s3(s3_server, airflow_stack, local_catalog, monkeypatch_module) -> str:
    """A 400-product catalog where the deployment's ``FUSION_CATALOG_URI`` says it is."""
    for key, value in s3_environment(s3_server).items():
        monkeypatch_module.setenv(key, value)
    storage.copy_tree(str(local_catalog), airflow_stack["catalog_uri"], progress=False)
    return airflow_stack["catalog_uri"]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def api(airflow_stack) -> AirflowApi:
    api = AirflowApi(airflow_stack["base"], airflow_stack["home"])
    api.wait_until_parsed(300, tuple(airflow_stack["logs"]))
    return api


def run_conf(**extra) -> dict:
    """The packaged MiniLM and EfficientNet-Lite0 on the ``fast`` schedule; the catalog is
    the deployment's default (``FUSION_CATALOG_URI``), the feature cache its work dir's."""
    return {"config_name": "fast", "shards": 2, "primary_metric": "ndcg@10", **extra}


@pytest.fixture(scope="module")
def first_run(api, airflow_stack, catalog_on_s3):
    run_id = api.trigger(run_conf())
    return api.wait(run_id, RUN_TIMEOUT, tuple(airflow_stack["logs"]))


def test_training_dag_promotes_on_the_production_stack(first_run, mlflow_server,
                                                        milvus_server, postgres, s3_server,
                                                        buckets, airflow_stack):
    from fusion_model.index import milvus

    assert first_run["promote_or_reject"][0]["state"] == "success"
    assert len(first_run["index_shard"]) == 2
    assert_ran_on_the_right_workers(first_run)
    champion = registry_state(mlflow_server)
    assert champion["champion"] == "1"
    with milvus.MilvusIndex.open(milvus_server) as index:
        serving = index.resolve_alias("products_serving")
        assert serving.startswith("products_m1_") and index.count(serving) == PRODUCTS
    assert sql(postgres["airflow"], "SELECT count(*) FROM dag_run WHERE dag_id = %s",
               TRAINING_DAG) == 1
    assert sql(postgres["mlflow"], "SELECT count(*) FROM model_versions") >= 2
    artifacts = s3_keys(s3_server, buckets["artifacts"])
    assert any(k.endswith("MLmodel") for k in artifacts), artifacts[:20]
    assert_handed_over_through_s3(airflow_stack, s3_keys(s3_server, buckets["work"]))


def assert_handed_over_through_s3(stack: dict, work_keys: list[str]) -> None:
    """Validation parts, both stages, the feature cache and the partition manifest reached
    the S3 work area; the two workers kept separate disks: the training worker filled its
    own feature cache and holds no validation report, the default worker pulled only the
    stage-2 model (register) and never the checkpoints, and no shared work folder exists."""
    def has(pattern: str) -> bool:
        return any(re.fullmatch(pattern, key) for key in work_keys)

    for pattern in (r"work/runs/[^/]+/validation/parts/products-00001-of-00002\.npy",
                    r"work/runs/[^/]+/validation/validation\.json",
                    r"work/runs/[^/]+/stage1/model/model\.pt",
                    r"work/runs/[^/]+/stage2/result\.json",
                    r"work/partitions/[^/]+/2/shard-00001\.parquet",
                    r"work/features/text/.+", r"work/features/image/.+"):
        assert has(pattern), (pattern, work_keys[:30])
    training, default = (stack["disks"][TRAINING_QUEUE], stack["disks"]["default"])
    assert any(path.is_file() for path in (training / "home" / "fusion" / "cache").rglob("*"))
    assert not list(training.rglob("validation.json"))
    assert list(default.rglob("stage2/model/model.pt"))
    assert not list(default.rglob("checkpoints")) and not list(default.rglob("stage1"))
    assert not (stack["root"] / "work").exists()


def test_a_refreshed_snapshot_retrains_while_serving_keeps_answering(
        first_run, api, airflow_stack, local_catalog, catalog_on_s3, mlflow_server,
        milvus_server, tmp_path):
    """catalog_refresh re-embeds the changed products into a new collection and moves the
    serving alias; its ``catalog`` asset event makes the scheduler start the training DAG,
    which trains and registers exactly that snapshot and re-embeds the catalog.
    ``fusion-model serve`` answers a separate client throughout and follows the alias
    moves: not one search may fail, and none may mix encoders."""
    snapshot_uri = catalog_on_s3.rsplit("/", 1)[0] + "/snapshot-2"
    storage.copy_tree(str(retitled_snapshot(local_catalog, tmp_path / "snapshot-2")),
                      snapshot_uri, progress=False)
    before = {run["dag_run_id"] for run in training_runs(api)}
    with serving_client(mlflow_server, milvus_server, tmp_path) as out:
        refresh_id = api.trigger({"catalog_uri": snapshot_uri}, dag_id="catalog_refresh")
        refresh = api.wait(refresh_id, RUN_TIMEOUT, tuple(airflow_stack["logs"]),
                           dag_id="catalog_refresh")
        assert refresh["refresh"][0]["state"] == "success"
        triggered = wait_for(lambda: [r for r in training_runs(api)
                                      if r["dag_run_id"] not in before], 180,
                             "the asset-triggered training run", every=3)
        assert [r["run_type"] for r in triggered] == ["asset_triggered"]
        tasks = api.wait(triggered[0]["dag_run_id"], RUN_TIMEOUT,
                         tuple(airflow_stack["logs"]))
    assert_ran_on_the_right_workers(tasks)
    registered = latest_version(mlflow_server)
    assert registered.version == "2"
    assert registered.tags["catalog_uri"] == snapshot_uri
    from fusion_model.data.catalog import load_catalog

    assert registered.tags["catalog_fingerprint"] == load_catalog(snapshot_uri).fingerprint
    searches = searches_of(out)
    shards = shard_windows(tasks)
    during = [s for s in searches if any(a <= s["start"] and s["end"] <= b for a, b in shards)]
    assert len(during) >= 5, "no searches overlapped the re-embedding shards"
    served = {s["collection"] for s in searches}
    assert len(served) >= 2, f"the service never followed the alias: {served}"
    mixed = [s for s in searches if not s["collection"].startswith(f"products_m{s['version']}_")]
    assert mixed == [], f"a query encoder searched another version's vectors: {mixed[:3]}"
    print(f"\nserving during re-embedding: {latency_summary(during)}; "
          f"refresh and retraining: {latency_summary(searches)}; collections {sorted(served)}")


def retitled_snapshot(source: Path, out: Path) -> Path:
    """The catalog with ten products retitled (photos and judgments unchanged)."""
    from fusion_model.data.catalog import load_catalog, write_catalog

    catalog = load_catalog(str(source))
    products = catalog.products.copy()
    products.loc[:9, "title"] = [f"Retitled product {i}" for i in range(10)]
    shutil.copytree(source / "images", out / "images")
    write_catalog(str(out), products, catalog.queries, catalog.judgments)
    return out


def training_runs(api: AirflowApi) -> list[dict]:
    return api.get(f"/dags/{TRAINING_DAG}/dagRuns?limit=100")["dag_runs"]


def latest_version(tracking_uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    versions = client.search_model_versions("name = 'fusion_products'")
    return max(versions, key=lambda v: int(v.version))


def shard_windows(tasks: dict[str, list[dict]]) -> list[tuple[float, float]]:
    """(start, end) in epoch seconds of each index shard task instance."""
    return [(_epoch(ti["start_date"]), _epoch(ti["end_date"])) for ti in tasks["index_shard"]]


def assert_ran_on_the_right_workers(tasks: dict[str, list[dict]]) -> None:
    """Both training stages on the training-queue worker, everything else on the default
    one, and the index shards side by side (the default worker has two slots)."""
    for task_id, instances in tasks.items():
        training = task_id in ("train_stage1", "train_stage2")
        for ti in (ti for ti in instances if ti["state"] == "success"):
            assert ti["queue"] == (TRAINING_QUEUE if training else "default"), ti
            assert ti["hostname"] == (f"{TRAINING_QUEUE}-worker" if training
                                      else "default-worker"), (task_id, ti["hostname"])
    shards = shard_windows(tasks)
    assert max(start for start, _ in shards) < min(end for _, end in shards), \
        f"index shards ran one after the other: {shards}"


@contextlib.contextmanager
def serving_client(mlflow_server: str, milvus_server: str, out_dir: Path):
    """``fusion-model serve`` on the stack's MLflow and Milvus server, and a separate client
    process searching it in a loop; yields the JSONL file of its searches (each with
    start, end, hits, version and collection, or the error)."""
    out, stop_file = out_dir / "searches.jsonl", out_dir / "stop"
    port = free_port()
    service_log = out_dir / "serve.log"
    with service_log.open("w") as log_file:
        service = subprocess.Popen(
            [str(Path(sys.executable).with_name("fusion-model")), "serve", "--port",
             str(port), "--follow-interval", "1", "--no-access-log", "--config", "fast",
             f"index.uri={milvus_server}", f"registry.tracking_uri={mlflow_server}"],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    client = None
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 180,
                 "fusion-model serve to load the champion", logs=(service_log,))
        client = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("searcher.py")), "--url",
             f"http://127.0.0.1:{port}", "--out", str(out), "--stop", str(stop_file)],
            cwd=Path(__file__).parents[2])
        wait_for(lambda: out.exists() and out.read_text().count("\n") >= 3, 180,
                 "the serving process to answer", logs=(service_log,))
        yield out
    finally:
        stop_file.touch()
        if client is not None:
            client.wait(timeout=60)
        stop_process_tree(service)


def searches_of(out: Path) -> list[dict]:
    searches = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s for s in searches if "error" in s] == []
    assert all(s["hits"] == 5 for s in searches)
    return searches


def latency_summary(searches: list[dict]) -> str:
    import numpy as np

    ms = np.array([(s["end"] - s["start"]) * 1000 for s in searches])
    return (f"{len(ms)} searches of 3 queries, p50 {np.percentile(ms, 50):.1f} ms, "
            f"p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.1f} ms")


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def registry_state(tracking_uri: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    champion = client.get_model_version_by_alias("fusion_products", "champion")
    return {"champion": champion.version}


def sql(url: str, query: str, *params):
    import psycopg2

    dsn = url.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchone()[0]


def s3_keys(endpoint: str, bucket: str) -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]
