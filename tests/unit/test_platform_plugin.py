"""plugins/fusion_platform.py: Airflow connections, variables and environment -> settings."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.conftest import REPO

AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3",
            "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")


@pytest.fixture()
def platform(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "plugins"))
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    for key in (*AWS_KEYS, "FUSION_CATALOG_URI", "FUSION_TRAINING_QUEUE", "FUSION_CONFIG_NAME",
                "FUSION_TRAINING_CRON", "FUSION_LOCAL_DIR", "FUSION_RUNTIME_DEVICE",
                "FUSION_SCRATCH_DIR", "AIRFLOW_CONN_FUSION_MILVUS",
                "AIRFLOW_CONN_FUSION_MLFLOW", "AIRFLOW_CONN_FUSION_S3",
                "AIRFLOW_VAR_FUSION_WORK_DIR", "AIRFLOW_VAR_FUSION_ARTIFACT_LOCATION",
                "AIRFLOW_VAR_FUSION_KEEP_RUNS", "AIRFLOW_VAR_FUSION_RUN_RETENTION_DAYS"):
        monkeypatch.setenv(key, "")  # restored after the test, even if the plugin sets it
        monkeypatch.delenv(key)
    sys.modules.pop("fusion_platform", None)
    import fusion_platform

    return fusion_platform


def test_without_connections_everything_lives_under_the_work_dir(platform, tmp_path):
    base = tmp_path / "airflow" / "fusion"
    assert platform.platform_overrides() == [
        f"train.cache_dir={base / 'cache'}", f"index.uri={base / 'milvus.db'}",
        f"registry.tracking_uri=sqlite:///{base / 'mlflow.db'}",
        f"registry.artifact_location={base / 'mlartifacts'}"]
    assert platform.default_catalog_uri() == "demo/catalog"


def test_connections_point_at_servers_and_the_server_keeps_its_artifacts(platform,
                                                                         monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_FUSION_MILVUS", json.dumps(
        {"conn_type": "http", "host": "milvus", "port": 19530, "password": "root:pw"}))
    monkeypatch.setenv("AIRFLOW_CONN_FUSION_MLFLOW", json.dumps(
        {"conn_type": "http", "host": "mlflow", "port": 5000}))
    monkeypatch.setenv("AIRFLOW_VAR_FUSION_WORK_DIR", "/shared/work")
    monkeypatch.setenv("FUSION_CATALOG_URI", "s3://shop/catalogs/current")
    overrides = platform.platform_overrides()
    assert overrides[-2:] == ["index.uri=http://milvus:19530",
                              "registry.tracking_uri=http://mlflow:5000"]
    assert not any("root:pw" in o for o in overrides)  # the token never is a config value
    monkeypatch.delenv("FUSION_MILVUS_TOKEN", raising=False)
    platform.default_args()["pre_execute"]({})
    assert os.environ.pop("FUSION_MILVUS_TOKEN") == "root:pw"
    assert not any(o.startswith("registry.artifact_location") for o in overrides)
    assert overrides[0] == "train.cache_dir=/shared/work/cache"
    assert platform.default_catalog_uri() == "s3://shop/catalogs/current"
    monkeypatch.setenv("AIRFLOW_VAR_FUSION_ARTIFACT_LOCATION", "s3://ml/artifacts")
    assert platform.platform_overrides()[-1] == "registry.artifact_location=s3://ml/artifacts"


def test_an_s3_work_area_keeps_the_local_stores_on_the_worker_disk(platform, monkeypatch,
                                                                   tmp_path):
    monkeypatch.setenv("AIRFLOW_VAR_FUSION_WORK_DIR", "s3://work-bucket/work")
    monkeypatch.setenv("FUSION_LOCAL_DIR", str(tmp_path / "disk"))
    monkeypatch.setenv("FUSION_RUNTIME_DEVICE", "auto")
    assert platform.work_uri("runs", "r1") == "s3://work-bucket/work/runs/r1"
    assert platform.local_work_dir() == tmp_path / "disk"
    overrides = platform.platform_overrides()
    assert overrides[:3] == [f"train.cache_dir={tmp_path / 'disk' / 'cache'}",
                             f"index.uri={tmp_path / 'disk' / 'milvus.db'}",
                             "runtime.device=auto"]
    monkeypatch.delenv("FUSION_SCRATCH_DIR", raising=False)
    platform.default_args()["pre_execute"]({})
    assert os.environ.pop("FUSION_SCRATCH_DIR") == str(tmp_path / "disk" / "scratch")


def test_every_task_exports_the_s3_connection_before_it_runs(platform, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_FUSION_S3", json.dumps(
        {"conn_type": "aws", "login": "key", "password": "secret",
         "extra": {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"}}))
    args = platform.default_args()
    args["pre_execute"]({})
    assert {k: os.environ[k] for k in AWS_KEYS} == {
        "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_ENDPOINT_URL_S3": "http://minio:9000", "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000",
        "AWS_DEFAULT_REGION": "eu-west-1"}


def test_training_tasks_go_to_the_configured_queue_only_when_one_is_set(platform,
                                                                        monkeypatch):
    assert platform.training_task_args() == {}
    monkeypatch.setenv("FUSION_TRAINING_QUEUE", "gpu")
    assert platform.training_task_args() == {"queue": "gpu"}


def test_runs_nobody_filled_a_form_for_use_the_deployments_config(platform, monkeypatch):
    assert platform.config_name_param().value == "default"
    monkeypatch.setenv("FUSION_CONFIG_NAME", "fast")
    assert platform.config_name_param().value == "fast"
    assert platform.offered_configs() == ["default", "fast"]  # tiny has random weights
    monkeypatch.setenv("FUSION_CONFIG_NAME", "tiny")
    assert platform.offered_configs() == ["default", "fast", "tiny"]  # the deployment's own
    monkeypatch.setenv("FUSION_CONFIG_NAME", "fastest")
    with pytest.raises(ValueError, match=r"FUSION_CONFIG_NAME='fastest'.*default, fast, tiny"):
        platform.config_name_param()


def test_run_retention_comes_from_variables_with_named_errors(platform, monkeypatch):
    assert platform.run_retention() == (5, 7.0)
    monkeypatch.setenv("AIRFLOW_VAR_FUSION_KEEP_RUNS", "2")
    monkeypatch.setenv("AIRFLOW_VAR_FUSION_RUN_RETENTION_DAYS", "0.5")
    assert platform.run_retention() == (2, 0.5)
    monkeypatch.setenv("AIRFLOW_VAR_FUSION_KEEP_RUNS", "all")
    with pytest.raises(ValueError, match="fusion_keep_runs='all': expected a number"):
        platform.run_retention()

def test_cron_schedules_come_from_the_environment(platform, monkeypatch):
    assert platform.cron_schedule("FUSION_TRAINING_CRON", "0 3 * * 1") == "0 3 * * 1"
    monkeypatch.setenv("FUSION_TRAINING_CRON", "30 2 * * *")
    assert platform.cron_schedule("FUSION_TRAINING_CRON", "0 3 * * 1") == "30 2 * * *"
    monkeypatch.setenv("FUSION_TRAINING_CRON", "None")
    assert platform.cron_schedule("FUSION_TRAINING_CRON", "0 3 * * 1") is None
    monkeypatch.setenv("FUSION_TRAINING_CRON", "every monday")
    with pytest.raises(ValueError, match=r"FUSION_TRAINING_CRON='every monday' is not a cron"):
        platform.cron_schedule("FUSION_TRAINING_CRON", "0 3 * * 1")


def test_index_shard_concurrency_and_pool_come_from_the_environment(platform, monkeypatch):
    assert platform.index_shard_task_args() == {"max_active_tis_per_dag": 4,
                                                "pool": "default_pool"}
    monkeypatch.setenv("FUSION_INDEX_SHARD_CONCURRENCY", "12")
    monkeypatch.setenv("FUSION_INDEX_POOL", "embedding")
    assert platform.index_shard_task_args() == {"max_active_tis_per_dag": 12,
                                                "pool": "embedding"}
    for bad in ("0", "four", "-2"):
        monkeypatch.setenv("FUSION_INDEX_SHARD_CONCURRENCY", bad)
        with pytest.raises(ValueError, match=f"FUSION_INDEX_SHARD_CONCURRENCY='{bad}'"):
            platform.index_shard_task_args()


def test_bad_input_fails_a_task_at_once_and_other_errors_keep_retries(platform):
    from airflow.sdk.exceptions import AirflowFailException

    from fusion_model.errors import CatalogError

    def raising(exc):
        @platform.step_task(doc_md="test")
        def step(params=None):
            raise exc
        return step.function

    with pytest.raises(AirflowFailException, match=r"CatalogError: p.csv, row 2: bad id"):
        raising(CatalogError("p.csv", "bad id", rows=[2]))(params={})
    with pytest.raises(ConnectionError):  # a server briefly down: retried by Airflow
        raising(ConnectionError("refused"))(params={})


def test_an_asset_triggered_run_trains_the_announced_snapshot(platform):
    """catalog_refresh puts URI + fingerprint on the asset event; the run it triggers takes
    them from the newest event, not from whatever $FUSION_CATALOG_URI points at."""
    from types import SimpleNamespace

    outlet_events = {platform.CATALOG_ASSET: SimpleNamespace(extra={})}
    platform.announce_snapshot(outlet_events, {"catalog_uri": "s3://shop/2026-11-21",
                                               "catalog_fingerprint": "f" * 64})
    old = SimpleNamespace(extra={"catalog_uri": "s3://shop/2026-11-20",
                                 "catalog_fingerprint": "e" * 64})
    events = {platform.CATALOG_ASSET: [old, outlet_events[platform.CATALOG_ASSET]]}
    assert platform.catalog_snapshot("s3://shop/current", events) == {
        "catalog_uri": "s3://shop/2026-11-21", "catalog_fingerprint": "f" * 64,
        "source": "asset event"}
    for manual in (None, {}, {platform.CATALOG_ASSET: [SimpleNamespace(extra=None)]}):
        assert platform.catalog_snapshot("s3://shop/current", manual) == {
            "catalog_uri": "s3://shop/current", "catalog_fingerprint": None,
            "source": "run params"}


def test_a_snapshot_that_changed_since_its_announcement_is_refused(synthetic_catalog):
    from fusion_model.data.catalog import load_catalog
    from fusion_model.pipelines import steps

    fingerprint = load_catalog(str(synthetic_catalog)).fingerprint
    assert steps.load_snapshot(str(synthetic_catalog), fingerprint).fingerprint == fingerprint
    with pytest.raises(steps.SnapshotChangedError, match="not the snapshot 000000000000"):
        steps.train_stage1(str(synthetic_catalog), "unused", fingerprint="0" * 64)
