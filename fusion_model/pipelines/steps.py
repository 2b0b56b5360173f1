"""The platform's life cycle as plain functions (Airflow tasks and the CLI call these).

validate -> train -> register (challenger) -> index (new collection, verified) -> gate ->
promote or reject; plus rollback, incremental refresh and search. Every function takes
URIs, ids and config overrides and returns a small dict; heavy modules load inside.
Re-running a step after a crash continues or redoes its work without duplicates.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fusion_model.config import RunConfig, load_config

log = logging.getLogger(__name__)


def _config(config_name: str, overrides: list[str] | tuple = ()) -> RunConfig:
    return load_config(config_name, list(overrides))


def _mlflow(config: RunConfig) -> None:
    from fusion_model.registry.tracking import configure

    configure(config.registry.resolved_tracking_uri())


def validate(catalog_uri: str, report_dir: str, profile_uri: str | None = None) -> dict:
    """Raise DataValidationError (nothing downstream runs) or return the report's paths."""
    from fusion_model.validation import validate_catalog

    report = validate_catalog(catalog_uri, report_dir, profile_uri=profile_uri)
    return {"success": report.success, "report": report.summary_uri,
            "data_docs": report.data_docs_uri, "checks": len(report.checks)}


def train(catalog_uri: str, work_dir: str, config_name: str = "default",
          overrides: list[str] | tuple = ()) -> dict:
    from fusion_model.data.catalog import load_catalog
    from fusion_model.training.trainer import RESULT_FILE
    from fusion_model.training.trainer import train as run_training

    config = _config(config_name, overrides)
    catalog = load_catalog(catalog_uri)
    result = run_training(catalog, config, work_dir)
    return {"work_dir": work_dir, "model_dir": result.model_dir,
            "result": str(Path(work_dir) / RESULT_FILE), "test": result.test.metrics,
            "catalog_fingerprint": catalog.fingerprint, "config_hash": config.hash}


def register(work_dir: str, catalog_uri: str, config_name: str = "default",
             overrides: list[str] | tuple = (), validation_report: str | None = None,
             parent_runs: dict | None = None) -> dict:
    """Log the trained model as an MLflow run and register it as ``challenger``."""
    from fusion_model.data.catalog import load_catalog
    from fusion_model.registry.registry import register_candidate
    from fusion_model.registry.tracking import git_commit, log_training_run
    from fusion_model.training.trainer import RESULT_FILE, TrainResult

    config = _config(config_name, overrides)
    _mlflow(config)
    catalog = load_catalog(catalog_uri)
    result = TrainResult.load(Path(work_dir) / RESULT_FILE)
    run_id, uris = log_training_run(result, config, catalog, config.registry.experiment,
                                    validation_report, config.registry.artifact_location
                                    or None)
    lineage = {"catalog_fingerprint": catalog.fingerprint, "catalog_uri": catalog.uri,
               "config_hash": config.hash, "git_commit": git_commit(), "run_id": run_id,
               "fusion": config.model.fusion, **(parent_runs or {})}
    candidate = register_candidate(config.registry.model_name, uris, lineage)
    return {"name": candidate.name, "version": candidate.version, "run_id": run_id}


def load_registered_model(name: str, version: str):
    """The TwoTower behind a registered product-encoder version."""
    import mlflow

    return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().model


def index(version: str, catalog_uri: str, config_name: str = "default",
          overrides: list[str] | tuple = ()) -> dict:
    """Embed the catalog with the registered version into its own NEW collection, verify."""
    from fusion_model.data.catalog import load_catalog
    from fusion_model.index.build import build_collection
    from fusion_model.index.milvus import collection_name
    from fusion_model.registry.registry import Candidate, tag_version, version_tags

    config = _config(config_name, overrides)
    _mlflow(config)
    catalog = load_catalog(catalog_uri)
    name = collection_name(config.index.collection_prefix, version, catalog.fingerprint)
    model = load_registered_model(config.registry.model_name, version)
    cache = str(Path(config.train.cache_dir).expanduser())
    result = build_collection(model, catalog, config.index, name, cache_dir=cache)
    candidate = Candidate(config.registry.model_name, version,
                          version_tags(Candidate(config.registry.model_name, version, version))
                          .get("query_model_version", version))
    tag_version(candidate, {"milvus_collection": name, "milvus_uri": config.index.uri})
    return {"collection": name, "count": result.count, "written": result.written,
            "verified": result.verified}


def _test_queries(catalog_uri: str, config: RunConfig):
    from fusion_model.data.catalog import load_catalog
    from fusion_model.evaluation.evaluator import query_segments
    from fusion_model.training.data import build_data

    catalog = load_catalog(catalog_uri)
    test = build_data(catalog, config.train.min_positive_grade).splits["test"]
    segments = query_segments(catalog.queries, catalog.products, catalog.judgments)
    return catalog, test, segments


def _evaluate_version(version: str, collection: str, test, segments, config: RunConfig):
    from fusion_model.gate import evaluate_collection

    model = load_registered_model(config.registry.model_name, version)
    vectors = model.embed_queries(test.texts).numpy()
    return evaluate_collection(config.index, collection, vectors, test.ids, test.qrels,
                               config.eval.ks, config.eval.min_relevant_grade, segments)


def gate(version: str, catalog_uri: str, config_name: str = "default",
         overrides: list[str] | tuple = (), force_promote: bool = False) -> dict:
    """Challenger vs champion (or the zero-shot text baseline) through their collections."""
    import mlflow

    from fusion_model.benchmark import zero_shot_text
    from fusion_model.gate import decide
    from fusion_model.registry.gallery import build_gallery
    from fusion_model.registry.registry import CHAMPION, Candidate, get_alias, version_tags

    config = _config(config_name, overrides)
    _mlflow(config)
    name = config.registry.model_name
    catalog, test, segments = _test_queries(catalog_uri, config)
    tags = version_tags(Candidate(name, version, version))
    challenger, challenger_ranks = _evaluate_version(version, tags["milvus_collection"], test,
                                                     segments, config)
    champion = get_alias(name, CHAMPION)
    rankings = {f"challenger v{version}": challenger_ranks}
    if champion is not None and champion.version != version:
        champion_tags = version_tags(champion)
        baseline, champion_ranks = _evaluate_version(champion.version,
                                                     champion_tags["milvus_collection"], test,
                                                     segments, config)
        baseline_name = f"champion v{champion.version}"
        rankings[baseline_name] = champion_ranks
    else:
        baseline, baseline_name = zero_shot_text(catalog, config), "zero_shot_text"
    decision = decide(challenger, baseline, baseline_name, config.gate, force_promote)
    gallery = build_gallery(dict(zip(test.ids, test.texts)), rankings, test.qrels,
                            catalog.products, f"{name} v{version} vs {baseline_name}")
    with mlflow.start_run(run_id=tags["run_id"]):
        mlflow.log_text(gallery, "review/gallery.html")
        mlflow.log_dict(decision.as_dict(), "review/gate_decision.json")
    return {**decision.as_dict(), "version": version, "collection": tags["milvus_collection"],
            "challenger": challenger.metrics, "baseline_metrics": baseline.metrics}


def promote_or_reject(version: str, decision: dict, config_name: str = "default",
                      overrides: list[str] | tuple = ()) -> dict:
    """Apply a gate decision. Promote: serving alias -> the verified collection, then
    ``champion`` -> version. Reject: nothing changes but the audit record."""
    from fusion_model.index import milvus
    from fusion_model.registry.registry import CHAMPION, Candidate, record_decision, set_alias

    config = _config(config_name, overrides)
    _mlflow(config)
    name = config.registry.model_name
    from fusion_model.registry.registry import version_tags

    tags = version_tags(Candidate(name, version, version))
    candidate = Candidate(name, version, tags.get("query_model_version", version))
    audit = f"{config.registry.experiment}-promotion-audit"
    entry = {**decision, "collection": tags["milvus_collection"]}
    if decision["decision"] != "promote":
        record_decision(candidate, entry, audit)
        return {"promoted": False, "version": version, "reasons": decision["reasons"]}
    with milvus.open_client(config.index.uri, config.index.token) as client:
        previous = milvus.point_alias(client, config.index.alias, tags["milvus_collection"])
        dropped = milvus.prune(client, config.index.collection_prefix,
                               config.index.keep_collections)
    set_alias(candidate, CHAMPION)
    record_decision(candidate, {**entry, "previous_collection": previous}, audit)
    return {"promoted": True, "version": version, "collection": tags["milvus_collection"],
            "previous_collection": previous, "dropped": dropped}


def rollback(version: str, config_name: str = "default", overrides: list[str] | tuple = (),
             reason: str = "manual rollback") -> dict:
    """Point ``champion`` and the serving alias back at an earlier version's collection."""
    from fusion_model.index import milvus
    from fusion_model.registry.registry import (
        CHAMPION,
        Candidate,
        record_decision,
        set_alias,
        version_tags,
    )

    config = _config(config_name, overrides)
    _mlflow(config)
    name = config.registry.model_name
    tags = version_tags(Candidate(name, version, version))
    collection = tags.get("milvus_collection")
    with milvus.open_client(config.index.uri, config.index.token) as client:
        if not collection or not client.has_collection(collection):
            raise milvus.MilvusIndexError(f"version {version} has no kept collection "
                                          f"({collection}); re-index it before rolling back")
        previous = milvus.point_alias(client, config.index.alias, collection)
    candidate = Candidate(name, version, tags.get("query_model_version", version))
    set_alias(candidate, CHAMPION)
    record_decision(candidate, {"decision": "rollback", "reasons": [reason], "metrics": {},
                                "collection": collection, "previous_collection": previous},
                    f"{config.registry.experiment}-promotion-audit")
    return {"version": version, "collection": collection, "previous_collection": previous}


def refresh(catalog_uri: str, config_name: str = "default",
            overrides: list[str] | tuple = ()) -> dict:
    """Incrementally re-embed changed products of a new snapshot with the champion."""
    from fusion_model.data.catalog import load_catalog
    from fusion_model.index.build import refresh_serving
    from fusion_model.registry.registry import CHAMPION, get_alias

    config = _config(config_name, overrides)
    _mlflow(config)
    champion = get_alias(config.registry.model_name, CHAMPION)
    if champion is None:
        raise RuntimeError(f"no champion for {config.registry.model_name}: train and promote "
                           "a model first")
    model = load_registered_model(champion.name, champion.version)
    cache = str(Path(config.train.cache_dir).expanduser())
    result = refresh_serving(model, load_catalog(catalog_uri), config.index, cache)
    return {"collection": result.collection, "written": result.written,
            "deleted": result.deleted, "unchanged": result.skipped, "count": result.count}


def search(text: str | list[str], k: int = 10, filter_expr: str = "",
           config_name: str = "default", overrides: list[str] | tuple = ()) -> list:
    """Champion query encoder + ANN search of the serving alias."""
    import mlflow

    from fusion_model.index import milvus
    from fusion_model.registry.registry import query_model_name

    config = _config(config_name, overrides)
    _mlflow(config)
    texts = [text] if isinstance(text, str) else list(text)
    encoder = mlflow.pyfunc.load_model(
        f"models:/{query_model_name(config.registry.model_name)}@champion")
    import pandas as pd

    vectors = encoder.predict(pd.DataFrame({"text": texts}))
    fields = list(config.index.attribute_fields)
    with milvus.open_client(config.index.uri, config.index.token) as client:
        available = {f["name"] for f in client.describe_collection(config.index.alias)["fields"]}
        hits = milvus.search(client, config.index.alias, vectors, k, filter_expr,
                             [f for f in fields if f in available])
    return hits[0] if isinstance(text, str) else hits
