"""End to end with dag.test(): SQLite Airflow, real Milvus Lite, real MLflow (SQLite) and
the catalog on a local S3 server. A good run promotes; a worse run is rejected and changes
nothing; a corrupted catalog stops at validation and changes nothing."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from fusion_model import storage
from fusion_model.data.synthetic import generate_synthetic_catalog
from fusion_model.index import milvus

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

COMMON = {"config_name": "fast", "primary_metric": "ndcg@10", "shards": 2,
          "extra_overrides": ["train.stage1.positives_per_query=4",
                              "train.stage2.positives_per_query=4"]}


@pytest.fixture(scope="module")
def s3_catalog(airflow_home, s3_server, tmp_path_factory):
    import boto3

    os.environ.update({"AWS_ENDPOINT_URL_S3": s3_server, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="shop")
    local = tmp_path_factory.mktemp("dag-catalog") / "catalog"
    generate_synthetic_catalog(str(local), n_products=400, n_queries=500, seed=9,
                               progress=False)
    storage.copy_tree(str(local), "s3://shop/catalog", progress=False)
    corrupted = "s3://shop/corrupted"
    storage.copy_tree(str(local), corrupted, progress=False)
    products = pd.read_parquet(local / "products.parquet")
    products.loc[1, "product_id"] = products.loc[0, "product_id"]
    storage.write_bytes(f"{corrupted}/products.parquet", products.to_parquet(index=False))
    storage.write_bytes(f"{corrupted}/{products.loc[5, 'image']}", b"")
    return {"good": "s3://shop/catalog", "corrupted": corrupted}


def run_training(dagbag, **conf):
    dag = dagbag.dags["multimodal_retrieval_training"]
    run = dag.test(run_conf={**COMMON, **conf})
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


def platform_state(airflow_home) -> dict:
    import mlflow

    from fusion_model.registry import registry

    mlflow.set_tracking_uri(f"sqlite:///{airflow_home / 'fusion' / 'mlflow.db'}")
    champion = registry.get_alias("fusion_products", "champion")
    with milvus.MilvusIndex.open(str(airflow_home / "fusion" / "milvus.db")) as index:
        alias = index.resolve_alias("products_serving")
        count = index.count(alias) if alias != "products_serving" else 0
    versions = mlflow.MlflowClient().search_model_versions("name='fusion_products'")
    return {"champion": champion and champion.version, "alias": alias, "count": count,
            "versions": len(versions)}


MLFLOW_UI = "http://mlflow.example:5000"
AIRFLOW_UI = "http://airflow.example:8080"


@pytest.fixture(scope="module")
def first_run(dagbag, s3_catalog, airflow_home):
    os.environ.update({"FUSION_MLFLOW_UI_URL": MLFLOW_UI, "AIRFLOW__API__BASE_URL": AIRFLOW_UI,
                       "FUSION_REVIEW_URL": "http://search.example:8080"})
    try:
        run, states = run_training(dagbag, catalog_uri=s3_catalog["good"], epochs_stage1=3,
                                   epochs_stage2=3)
    finally:
        for name in ("FUSION_MLFLOW_UI_URL", "AIRFLOW__API__BASE_URL", "FUSION_REVIEW_URL"):
            del os.environ[name]
    return run, states


def test_good_run_trains_registers_indexes_and_promotes(first_run, airflow_home):
    run, states = first_run
    assert run.state == "success", states
    state = platform_state(airflow_home)
    assert state["champion"] == "1" and state["alias"].startswith("products_m1_")
    assert state["count"] == 400


def test_mlflow_and_airflow_link_both_ways(first_run, airflow_home):
    """The version names its Airflow run (tags, description with the run's URL and the
    review page); the run's tasks link to the MLflow version and its review artifacts."""
    import mlflow
    from fusion_platform import MlflowReviewLink, MlflowVersionLink

    run, _ = first_run
    platform_state(airflow_home)  # points MLflow at the platform's store
    version = mlflow.MlflowClient().get_model_version("fusion_products", "1")
    assert version.tags["airflow.dag_id"] == "multimodal_retrieval_training"
    assert version.tags["airflow.run_id"] == run.run_id
    assert version.tags["airflow.url"].startswith(f"{AIRFLOW_UI}/dags/multimodal_retrieval_"
                                                  "training/runs/")
    assert version.tags["airflow.url"] in version.description
    assert "http://search.example:8080/?left=champion&right=1" in version.description
    assert version.description.startswith("**Champion** since ")  # promoted by this run
    assert "challenger" not in version.aliases
    training_run = mlflow.MlflowClient().get_run(version.tags["run_id"])
    assert training_run.data.tags["airflow.run_id"] == run.run_id
    gate = next(ti for ti in run.get_task_instances() if ti.task_id == "gate")
    assert MlflowVersionLink().get_link(None, ti_key=gate.key) == \
        f"{MLFLOW_UI}/#/models/fusion_products/versions/1"
    review = MlflowReviewLink().get_link(None, ti_key=gate.key)
    assert review.startswith(f"{MLFLOW_UI}/#/experiments/") and review.endswith(
        f"/runs/{version.tags['run_id']}/artifacts")


def test_worse_model_is_rejected_and_nothing_changes(first_run, dagbag, s3_catalog,
                                                     airflow_home, monkeypatch):
    before = platform_state(airflow_home)
    # keep no older run at all: the first run's models and checkpoints go, its results stay
    monkeypatch.setenv("AIRFLOW_VAR_FUSION_KEEP_RUNS", "0")
    monkeypatch.setenv("AIRFLOW_VAR_FUSION_RUN_RETENTION_DAYS", "0")
    run, states = run_training(dagbag, catalog_uri=s3_catalog["good"], epochs_stage1=0,
                               epochs_stage2=0)
    assert run.state == "success", states
    after = platform_state(airflow_home)
    assert (after["champion"], after["alias"]) == (before["champion"], before["alias"])
    assert after["versions"] == before["versions"] + 1  # registered as challenger only
    first = airflow_home / "fusion" / "runs" / first_run[0].run_id
    assert states["tidy_runs"] == "success"
    assert not (first / "stage2" / "checkpoints").exists()
    assert not (first / "stage2" / "model").exists()
    assert (first / "stage2" / "result.json").is_file()
    assert (first / "validation" / "validation.json").is_file()


def test_corrupted_catalog_stops_at_validation(first_run, dagbag, s3_catalog, airflow_home):
    before = platform_state(airflow_home)
    run, states = run_training(dagbag, catalog_uri=s3_catalog["corrupted"])
    assert run.state == "failed"
    assert states["validate"] == "failed"
    assert all(states[t] == "upstream_failed" for t in ("train_stage1", "register", "gate",
                                                         "promote_or_reject"))
    assert platform_state(airflow_home) == before


def test_catalog_refresh_announces_the_snapshot_it_validated(first_run, dagbag, s3_catalog,
                                                             airflow_home):
    """The `catalog` asset event names the URI and fingerprint of what the refresh
    validated; the training run it triggers resolves exactly that snapshot."""
    import sys
    from types import SimpleNamespace

    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    from fusion_model.data.catalog import load_catalog

    run = dagbag.dags["catalog_refresh"].test(run_conf={"catalog_uri": s3_catalog["good"],
                                                       "config_name": "fast"})
    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    with create_session() as session:
        event = session.query(AssetEvent).order_by(AssetEvent.id.desc()).first()
        extra = dict(event.extra)
    fingerprint = load_catalog(s3_catalog["good"]).fingerprint
    assert extra == {"catalog_uri": s3_catalog["good"], "catalog_fingerprint": fingerprint}
    platform = sys.modules["fusion_platform"]
    snapshot = platform.catalog_snapshot("s3://shop/elsewhere",
                                         {platform.CATALOG_ASSET: [SimpleNamespace(extra=extra)]})
    assert (snapshot["catalog_uri"], snapshot["catalog_fingerprint"]) == (
        s3_catalog["good"], fingerprint)


def simulated_traffic(catalog_uri: str, events_uri: str, queries: int, searches: int,
                      seed: int = 0) -> None:
    """Shoppers (``feedback/simulator.py``) search ``queries`` train queries ``searches``
    times each; the lists mix the judged products with others, in a varying order; clicks
    follow the catalog's grades. Written where the service writes (here: S3)."""
    import random

    from fusion_model.data.catalog import load_catalog
    from fusion_model.feedback.events import EventLog, EventSettings
    from fusion_model.feedback.simulator import Shopper, simulate_interactions

    rng = random.Random(seed)
    catalog = load_catalog(catalog_uri)
    qrels = catalog.qrels("train", min_grade=1)
    texts = dict(zip(catalog.queries["query_id"], catalog.queries["text"]))
    products = catalog.products["product_id"].tolist()
    log = EventLog(EventSettings(events_uri), salt="e2e")
    for query_id in sorted(qrels)[:queries]:
        grades = qrels[query_id]
        pool = list(grades) + rng.sample(products, 10)
        for _ in range(searches):
            shown = sorted(set(pool), key=lambda p: grades.get(p, 0) + rng.gauss(0, 1.5),
                           reverse=True)[:10]
            search_id = log.search(texts[query_id], "champion", "1", "c", shown, None)
            for position, product, kind in simulate_interactions(shown, grades, Shopper(), rng):
                log.interaction({"search_id": search_id, "product_id": product,
                                 "kind": kind, "position": position})
    log.flush()


def test_search_feedback_turns_logged_clicks_into_a_snapshot_that_retrains(
        first_run, dagbag, s3_catalog, airflow_home):
    """Logged searches and clicks (on S3) -> the search_feedback DAG: judgments built with
    the position-bias correction, the snapshot validated and announced on the `catalog`
    asset -> the training run that event starts trains and registers on exactly it."""
    import sys
    from types import SimpleNamespace

    import mlflow
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    from fusion_model.data.catalog import load_catalog

    simulated_traffic(s3_catalog["good"], "s3://shop/events", queries=40, searches=25)
    before = platform_state(airflow_home)
    run = dagbag.dags["search_feedback"].test(run_conf={
        "catalog_uri": s3_catalog["good"], "config_name": "fast",
        "events_uri": "s3://shop/events", "keep_labels": True})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    with create_session() as session:
        extra = dict(session.query(AssetEvent).order_by(AssetEvent.id.desc()).first().extra)
    snapshot = load_catalog(extra["catalog_uri"])
    assert extra["catalog_fingerprint"] == snapshot.fingerprint
    summary = json.loads(storage.read_bytes(storage.join(extra["catalog_uri"],
                                                         "feedback.json")))
    assert summary["queries_judged"] == 40 and summary["searches"] == 40 * 25
    assert summary["theta"][0] == 1.0 and summary["theta"][4] < 0.6  # rank 5: seen less
    assert platform_state(airflow_home) == before                     # nothing served moved

    platform = sys.modules["fusion_platform"]
    resolved = platform.catalog_snapshot(s3_catalog["good"], {
        platform.CATALOG_ASSET: [SimpleNamespace(extra=extra)]})
    retrain, states = run_training(dagbag, catalog_uri=resolved["catalog_uri"],
                                   epochs_stage1=1, epochs_stage2=1)
    assert retrain.state == "success", states
    newest = max(mlflow.MlflowClient().search_model_versions("name='fusion_products'"),
                 key=lambda v: int(v.version))
    assert newest.tags["catalog_fingerprint"] == snapshot.fingerprint
