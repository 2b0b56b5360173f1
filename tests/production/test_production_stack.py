"""Production mode, no Docker: the training DAG triggered through Airflow's REST API runs
on the LocalExecutor with its metadata in PostgreSQL, reads the catalog and photos from
S3, tracks and registers in an ``mlflow server`` (PostgreSQL backend, artifacts on S3),
indexes into a Milvus server URI, and promotes. A second run re-embeds the catalog while
a separate serving process keeps searching the serving alias without a single failure."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from fusion_model import storage
from fusion_model.data.synthetic import generate_synthetic_catalog
from tests.airflow_api import TRAINING_DAG, AirflowApi
from tests.conftest import wait_for
from tests.production.conftest import s3_client, s3_environment

pytestmark = pytest.mark.production

PRODUCTS = 400
RUN_TIMEOUT = 1200  # seconds for one DAG run


@pytest.fixture(scope="module")
def catalog_on_s3(s3_server, airflow_stack, monkeypatch_module, tmp_path_factory) -> str:
    """A 400-product catalog where the deployment's ``FUSION_CATALOG_URI`` says it is."""
    for key, value in s3_environment(s3_server).items():
        monkeypatch_module.setenv(key, value)
    local = tmp_path_factory.mktemp("prod-catalog") / "catalog"
    generate_synthetic_catalog(str(local), n_products=PRODUCTS, n_queries=500, seed=9,
                               progress=False)
    storage.copy_tree(str(local), airflow_stack["catalog_uri"], progress=False)
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
    return {"config_name": "fast", "epochs_stage1": 3, "epochs_stage2": 3, "shards": 2,
            "primary_metric": "ndcg@10", **extra}


@pytest.fixture(scope="module")
def first_run(api, airflow_stack, catalog_on_s3):
    run_id = api.trigger(run_conf())
    return api.wait(run_id, RUN_TIMEOUT, tuple(airflow_stack["logs"]))


def test_training_dag_promotes_on_the_production_stack(first_run, mlflow_server,
                                                        milvus_server, postgres, s3_server,
                                                        buckets):
    from fusion_model.index import milvus

    assert first_run["promote_or_reject"][0]["state"] == "success"
    assert len(first_run["index_shard"]) == 2
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


def test_serving_keeps_answering_while_the_next_run_re_embeds(
        first_run, api, airflow_stack, catalog_on_s3, mlflow_server,
        milvus_server, tmp_path):
    from fusion_model.index import milvus

    out, stop_file = tmp_path / "searches.jsonl", tmp_path / "stop"
    searcher = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("searcher.py")), "--tracking-uri",
         mlflow_server, "--milvus-uri", milvus_server, "--out", str(out),
         "--stop", str(stop_file)], cwd=Path(__file__).parents[2])
    try:
        wait_for(lambda: out.exists() and out.read_text().count("\n") >= 3, 180,
                 "the serving process to answer")
        # one stage-2 epoch fewer: a different model (training is deterministic, so the
        # same settings would give the same weights and register as the same version)
        run_id = api.trigger(run_conf(force_promote=True, epochs_stage2=2))
        tasks = api.wait(run_id, RUN_TIMEOUT, tuple(airflow_stack["logs"]))
    finally:
        stop_file.touch()
        searcher.wait(timeout=60)
    searches = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s for s in searches if "error" in s] == []
    assert all(hits == [5, 5, 5] for s in searches for hits in [s["hits"]])
    shards = [(_epoch(ti["start_date"]), _epoch(ti["end_date"])) for ti in tasks["index_shard"]]
    during = [s for s in searches if any(a <= s["start"] and s["end"] <= b for a, b in shards)]
    assert len(during) >= 5, "no searches overlapped the re-embedding shards"
    print(f"\nserving during re-embedding: {latency_summary(during)}; "
          f"whole run: {latency_summary(searches)}")
    with milvus.MilvusIndex.open(milvus_server) as index:
        assert index.resolve_alias("products_serving").startswith("products_m2_")
    assert {s["collection"].split("_")[1] for s in searches} == {"m1", "m2"}


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
