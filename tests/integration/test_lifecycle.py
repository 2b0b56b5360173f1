"""register -> index -> gate -> promote, reject, rollback, refresh and search, on real
MLflow (SQLite + local artifacts; once with S3 artifacts on moto) and real Milvus Lite."""

from __future__ import annotations

import dataclasses
import re

import mlflow
import pandas as pd
import pytest

from fusion_model import engines
from fusion_model.data.catalog import load_catalog, write_catalog
from fusion_model.data.synthetic import generate_synthetic_catalog
from fusion_model.index import milvus
from fusion_model.pipelines import steps
from fusion_model.registry import registry

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    root = tmp_path_factory.mktemp("platform")
    generate_synthetic_catalog(str(root / "catalog"), n_products=500, n_queries=600, seed=5,
                               progress=False)
    overrides = [f"train.cache_dir={root / 'cache'}", f"index.uri={root / 'milvus.db'}",
                 f"registry.tracking_uri=sqlite:///{root / 'mlflow.db'}",
                 f"registry.artifact_location={root / 'artifacts'}",
                 "train.stage1.epochs=3", "train.stage2.epochs=3",
                 "gate.primary_metric=ndcg@10",
                 "train.stage1.positives_per_query=4",
                 "train.stage2.positives_per_query=4", "index.keep_collections=5"]
    return {"root": root, "catalog": str(root / "catalog"), "overrides": overrides}


def candidate(platform, name: str, *extra: str) -> dict:
    overrides = [*platform["overrides"], *extra]
    work = str(platform["root"] / name)
    steps.train(platform["catalog"], work, "fast", overrides)
    registered = steps.register(work, platform["catalog"], "fast", overrides)
    indexed = steps.index(registered["version"], platform["catalog"], "fast", overrides)
    return {**registered, **indexed, "overrides": overrides}


def serving_target(platform) -> str:
    with milvus.MilvusIndex.open(str(platform["root"] / "milvus.db")) as index:
        return index.resolve_alias("products_serving")


@pytest.fixture(scope="module")
def promoted(platform):
    first = candidate(platform, "v1")
    decision = steps.gate(first["version"], platform["catalog"], "fast", first["overrides"])
    outcome = steps.promote_or_reject(first["version"], decision, "fast", first["overrides"])
    return {**first, "decision": decision, "outcome": outcome}


def test_first_candidate_beats_zero_shot_and_is_promoted(promoted, platform):
    assert promoted["decision"]["decision"] == "promote", promoted["decision"]["reasons"]
    assert promoted["decision"]["baseline"] == "zero_shot_text"
    assert promoted["count"] == 500 and promoted["verified"]
    assert serving_target(platform) == promoted["collection"]
    champion = registry.get_alias("fusion_products", "champion")
    assert champion.version == promoted["version"] == "1"
    assert registry.get_alias("fusion_products", "challenger") is None  # it is the champion
    assert registry.get_alias("fusion_products_query", "challenger") is None
    description = mlflow.MlflowClient().get_model_version("fusion_products", "1").description
    assert description.startswith("**Champion** since ") and "registered as `challenger`." \
        not in description
    tags = registry.version_tags(champion)
    assert {"catalog_fingerprint", "config_hash", "git_commit", "run_id", "milvus_collection",
            "gate.decision"} <= set(tags)
    run = mlflow.MlflowClient().get_run(tags["run_id"])
    assert {"stage1/loss", "test/ndcg_at_10"} <= set(run.data.metrics)
    metrics = run.data.metrics
    assert metrics["test/ndcg_at_10_ci95_low"] <= metrics["test/ndcg_at_10"] <= \
        metrics["test/ndcg_at_10_ci95_high"]
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.params["model.fusion"] == "fusion"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(tags["run_id"], "review")}
    assert {"review/gallery.html", "review/loss_curve.png", "review/recall_curve.png",
            "review/segments.html", "review/config.yaml"} <= artifacts
    gallery = mlflow.artifacts.load_text(f"runs:/{tags['run_id']}/review/gallery.html")
    assert "class='label'>zero_shot_text<" in gallery  # the first model beside the baseline
    assert "class='label'>challenger v1<" in gallery and "Gate decision: promote" in gallery
    segments = mlflow.artifacts.load_text(f"runs:/{tags['run_id']}/review/segments.csv")
    assert "ndcg@10 vs baseline" in segments.splitlines()[0]
    audit = mlflow.get_experiment_by_name("fusion-model-promotion-audit")
    assert str(platform["root"] / "artifacts" / "promotion-audit") in audit.artifact_location
    assert re.fullmatch(r'\{"challenger.*"gain": -?\d\.\d{1,4},.*\}', tags["gate.metrics"])


def test_champion_encoders_load_from_the_registry_alone(promoted, monkeypatch, tmp_path):
    """On the OpenVINO engine (the default where installed) each encoder carries its
    tower's IR: loading it elsewhere compiles without converting, and agrees with torch."""
    monkeypatch.setattr(engines, "engine_cache_root", lambda _: tmp_path / "no-cache")
    monkeypatch.setattr(engines, "convert_graph", pytest.fail)
    query = mlflow.pyfunc.load_model("models:/fusion_products_query@champion")
    texts = ["red striped shirt", "navy boots"]
    vectors = query.predict(pd.DataFrame({"text": texts}))
    model = query.unwrap_python_model().model
    width = 256 * (3 if model.late_branch is not None else 1)  # the late branch: 2 x 256 more
    assert vectors.shape == (2, width)
    assert query.unwrap_python_model().towers.engine == "openvino"
    reference = engines.towers_for(query.unwrap_python_model().model, "torch")
    assert (vectors * reference.embed_queries(texts).numpy()).sum(1).min() >= 0.999
    product = mlflow.pyfunc.load_model("models:/fusion_products@champion")
    vectors = product.predict(pd.DataFrame({"title": ["Red Shirt"], "description": [""],
                                            "image_uri": [""]}))
    assert vectors.shape == (1, width)


def test_search_uses_the_champion_and_the_serving_alias(promoted, platform):
    hits = steps.search("red striped shirt", k=5, filter_expr='category == "shirt"',
                        config_name="fast", overrides=platform["overrides"])
    assert len(hits) == 5 and all(h["category"] == "shirt" for h in hits)


def test_worse_model_is_rejected_and_nothing_changes(promoted, platform):
    before_alias = serving_target(platform)
    worse = candidate(platform, "v2", "train.stage1.epochs=0", "train.stage2.epochs=0")
    decision = steps.gate(worse["version"], platform["catalog"], "fast", worse["overrides"])
    outcome = steps.promote_or_reject(worse["version"], decision, "fast", worse["overrides"])
    assert decision["decision"] == "reject" and not outcome["promoted"]
    assert decision["baseline"] == f"champion v{promoted['version']}"
    assert serving_target(platform) == before_alias
    assert registry.get_alias("fusion_products", "champion").version == promoted["version"]
    assert registry.get_alias("fusion_products", "challenger").version == worse["version"]
    history = registry.promotion_history("fusion_products", "fusion-model-promotion-audit")
    assert [h["decision"] for h in history][-1] == "reject"


def test_forced_promotion_then_rollback(promoted, platform):
    worse = registry.get_alias("fusion_products", "challenger")
    overrides = platform["overrides"]
    decision = steps.gate(worse.version, platform["catalog"], "fast", overrides,
                          force_promote=True)
    assert decision["forced"] and "force_promote" in decision["reasons"][-1]
    steps.promote_or_reject(worse.version, decision, "fast", overrides)
    assert registry.get_alias("fusion_products", "champion").version == worse.version
    rolled = steps.rollback(promoted["version"], "fast", overrides, reason="bad results")
    assert serving_target(platform) == promoted["collection"] == rolled["collection"]
    assert registry.get_alias("fusion_products", "champion").version == promoted["version"]
    history = registry.promotion_history("fusion_products", "fusion-model-promotion-audit")
    assert [h["decision"] for h in history] == ["promote", "reject", "promote", "rollback"]
    assert history[2]["forced"] is True
    assert history[-1]["version"] == promoted["version"]  # the rollback's target


def test_incremental_refresh_of_the_serving_collection(promoted, platform, tmp_path):
    catalog = load_catalog(platform["catalog"])
    products = catalog.products.copy()
    products.loc[0, "title"] = "Completely New Title"
    products = products.drop(index=5)
    snapshot = tmp_path / "snapshot"
    import shutil

    shutil.copytree(platform["root"] / "catalog" / "images", snapshot / "images")
    kept = catalog.judgments[catalog.judgments["product_id"].isin(set(products["product_id"]))]
    write_catalog(str(snapshot), products, catalog.queries, kept)
    result = steps.refresh(str(snapshot), "fast", platform["overrides"])
    assert (result["written"], result["deleted"], result["count"]) == (1, 1, 499)
    # rows copied unchanged show this snapshot's photo paths (not hashed: the folder moved)
    hits = steps.search("red shirt", k=30, config_name="fast", overrides=platform["overrides"])
    photos = [hit["image_uri"] for hit in hits if hit["image_uri"]]
    assert photos and all(p.startswith(str(snapshot)) for p in photos), photos[:3]


def test_registry_with_s3_artifacts(synthetic_catalog, s3_bucket, s3_server,
                                    tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)
    overrides = [f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
                 "train.stage2.epochs=1",
                 f"registry.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                 f"registry.artifact_location=s3://{s3_bucket}/mlflow",
                 "registry.experiment=s3-artifacts", "registry.model_name=s3m"]
    steps.train(str(synthetic_catalog), str(tmp_path / "work"), "tiny", overrides)
    registered = steps.register(str(tmp_path / "work"), str(synthetic_catalog), "tiny",
                                overrides)
    model = mlflow.pyfunc.load_model(f"models:/s3m/{registered['version']}")
    width = model.unwrap_python_model().model.embedding_dim  # 16, or 48 with a late branch
    assert width in (16, 48)
    assert model.predict(pd.DataFrame({"title": ["x"], "description": [""],
                                       "image_uri": [""]})).shape == (1, width)
    import boto3

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(
        Bucket=s3_bucket, Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("model.pt") for k in keys)
    assert dataclasses.is_dataclass(registry.get_alias("s3m", "challenger"))
