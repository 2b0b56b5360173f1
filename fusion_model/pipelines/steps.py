"""The platform's life cycle as plain functions (Airflow tasks and the CLI call these).

validate -> train -> register (challenger) -> index (new collection, verified) -> gate ->
promote or reject; plus rollback, incremental refresh and search. Every function takes
URIs, ids and config overrides and returns a small dict; heavy modules load inside.
Re-running a step after a crash continues or redoes its work without duplicates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from fusion_model import storage
from fusion_model.checks import load_checked_config
from fusion_model.config import RunConfig
from fusion_model.errors import BadInputError, NoChampionError, VectorIndexError
from fusion_model.index.base import collection_name, open_index
from fusion_model.pipelines import switch
from fusion_model.storage import workarea

log = logging.getLogger(__name__)
FEATURE_NAMESPACES = ("text", "image", "colour")  # the feature cache's, under cache_dir


def _config(config_name: str, overrides: list[str] | tuple = ()) -> RunConfig:
    return load_checked_config(config_name, list(overrides))


def _mlflow(config: RunConfig) -> None:
    from fusion_model.registry.connection import configure

    configure(config.registry.resolved_tracking_uri())


class SnapshotChangedError(BadInputError):
    """The catalog at a URI is no longer the snapshot a run was started for."""


def load_snapshot(catalog_uri: str, fingerprint: str | None = None):
    """The catalog at ``catalog_uri``; with ``fingerprint``, only if it is still that
    snapshot (an asset-triggered run trains what catalog_refresh validated, nothing else)."""
    from fusion_model.data.catalog import load_catalog

    catalog = load_catalog(catalog_uri)
    if fingerprint and catalog.fingerprint != fingerprint:
        raise SnapshotChangedError(
            f"{catalog_uri} now holds catalog {catalog.fingerprint[:12]}, not the snapshot "
            f"{fingerprint[:12]} this run was triggered for; trigger a run for the current "
            "snapshot (or restore that one)")
    return catalog


def validate(catalog_uri: str, report_dir: str, profile_uri: str | None = None,
             fingerprint: str | None = None, parts: int | None = None) -> dict:
    """Raise DataValidationError (nothing downstream runs) or return the report's paths;
    with ``fingerprint``, first check that the URI still holds that snapshot. With
    ``parts``, the product rows were checked by ``validate_part`` tasks: only the
    catalog-wide rules run here, over their saved results."""
    from fusion_model.validation import validate_catalog
    from fusion_model.validation.runner import finish_validation

    if fingerprint:
        load_snapshot(catalog_uri, fingerprint)
    with workarea.staged(report_dir) as local:
        if parts is None:
            report = validate_catalog(catalog_uri, local, profile_uri=profile_uri)
        else:
            report = finish_validation(catalog_uri, local, profile_uri, parts=parts)
    return {"success": report.success, "report": _in_work(report.summary_uri, local, report_dir),
            "data_docs": _in_work(report.data_docs_uri, local, report_dir),
            "checks": len(report.checks)}


def _in_work(path: str | None, local: Path, uri: str) -> str | None:
    """The work-area URI of ``path``, a file the task wrote in ``local`` (``uri``'s copy)."""
    if path is None or not storage.is_s3(uri) or not Path(path).is_relative_to(local):
        return path
    return storage.join(uri, Path(path).relative_to(local).as_posix())


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if storage.is_s3(uri) else str(Path(uri).parent)


def validate_part(catalog_uri: str, report_dir: str, part: int, parts: int) -> dict:
    """Check one part of the product rows (row rules, photos, profile counts, id hashes)
    for ``validate(..., parts=parts)``; memory follows the batch size, not the catalog."""
    from fusion_model.validation.runner import validate_products_part

    with workarea.staged(report_dir, pull_first=False) as local:
        return validate_products_part(catalog_uri, local, part, parts, progress=False)


def validate_report(catalog_uri: str, report_dir: str, profile_uri: str | None = None) -> dict:
    """Like ``validate`` but never raises: returns the outcome and the report paths."""
    from fusion_model.validation import validate_catalog

    with workarea.staged(report_dir) as local:
        report = validate_catalog(catalog_uri, local, profile_uri=profile_uri,
                                  raise_on_failure=False)
    return {"success": report.success, "report": _in_work(report.summary_uri, local, report_dir),
            "data_docs": _in_work(report.data_docs_uri, local, report_dir),
            "checks": len(report.checks),
            "failures": [f"{f['suite']}: {f['expectation']}" for f in report.failures]}


def publish_report(report: dict, catalog_uri: str, config_name: str = "default",
                   overrides: list[str] | tuple = ()) -> dict:
    """Log a validation report to MLflow (experiment ``<experiment>-data-quality``)."""
    import mlflow

    from fusion_model.registry.tracking import experiment_id

    config = _config(config_name, overrides)
    _mlflow(config)
    experiment = experiment_id(f"{config.registry.experiment}-data-quality",
                               config.registry.artifact_location or None)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.set_tags({"catalog_uri": catalog_uri, "success": str(report["success"])})
        mlflow.log_metrics({"checks": report["checks"], "failures": len(report["failures"])})
        mlflow.log_artifacts(str(workarea.pull(_parent(report["report"]))),
                             artifact_path="report")
    if not report["success"]:
        raise BadInputError(f"{catalog_uri} failed {len(report['failures'])} check(s): "
                            + "; ".join(report["failures"][:10]))
    return {"run_id": run.info.run_id, "success": True}


def train(catalog_uri: str, work_dir: str, config_name: str = "default",
          overrides: list[str] | tuple = ()) -> dict:
    """Both stages into ``work_dir`` (stage 1 in ``work_dir/stage1``, the model in
    ``work_dir/model``): ``train_stage1`` then ``train_stage2``, the functions the DAG's
    two tasks call, with their rule for reusing finished work."""
    first = train_stage1(catalog_uri, work_dir, config_name, overrides)
    return train_stage2(catalog_uri, work_dir, first["model_dir"], config_name, overrides,
                        out=work_dir)


def _finished_training(work_dir: str, config: RunConfig, catalog):
    """The TrainResult in ``work_dir`` if it was trained with ``config`` on ``catalog``."""
    import json

    from fusion_model.models.towers import MANIFEST_FILE
    from fusion_model.training.trainer import RESULT_FILE, TrainResult

    result_file = Path(work_dir) / RESULT_FILE
    if not result_file.is_file():
        return None
    result = TrainResult.load(result_file)
    manifest_file = Path(result.model_dir) / MANIFEST_FILE
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    same_training = manifest.get("training_hash") == config.training_hash \
        if "training_hash" in manifest else manifest.get("config_hash") == config.hash
    if not same_training or manifest.get("catalog_fingerprint") != catalog.fingerprint:
        return None
    log.info("%s already holds this training run; reusing it", work_dir)
    return result


def register(work_dir: str, catalog_uri: str, config_name: str = "default",
             overrides: list[str] | tuple = (), validation_report: str | None = None,
             origin: dict[str, str] | None = None) -> dict:
    """Log the trained model as an MLflow run and register it as ``challenger``.

    ``origin``: where the run came from (``airflow.dag_id``, ``airflow.run_id``,
    ``airflow.url``), tagged on the run and the version and linked from the version's
    description, with the review page (``$FUSION_REVIEW_URL``) when one is served."""
    from fusion_model.data.catalog import load_catalog
    from fusion_model.registry.registry import (
        describe_version,
        register_candidate,
        run_artifacts_url,
        version_url,
    )
    from fusion_model.registry.tracking import git_commit, log_training_run, tag_run
    from fusion_model.training.trainer import RESULT_FILE, TrainResult

    config = _config(config_name, overrides)
    _mlflow(config)
    result_file = _pull_model(storage.join(work_dir, "model")).parent / RESULT_FILE
    if validation_report:
        validation_report = str(workarea.pull(_parent(validation_report))
                                / Path(validation_report).name)
    key = _training_key(TrainResult.load(result_file).model_dir, config)
    existing = _registered_with_key(config.registry.model_name, key)
    if existing is not None:  # a retried task: the candidate is already registered
        return {**existing, "mlflow_url": version_url(existing["name"], existing["version"]),
                "mlflow_run_url": run_artifacts_url(existing["run_id"])}
    catalog = load_catalog(catalog_uri)
    result = TrainResult.load(result_file)
    run_id, uris = log_training_run(result, config, catalog, config.registry.experiment,
                                    validation_report, config.registry.artifact_location
                                    or None)
    origin = origin or {}
    tag_run(run_id, origin)
    lineage = {"catalog_fingerprint": catalog.fingerprint, "catalog_uri": catalog.uri,
               "config_hash": config.hash, "git_commit": git_commit(), "run_id": run_id,
               "fusion": config.model.fusion, "train_result_key": key,
               "image_roots": json.dumps(catalog.image_roots()), **origin}
    candidate = register_candidate(config.registry.model_name, uris, lineage)
    describe_version(candidate, review_description(candidate.version, origin))
    return {"name": candidate.name, "version": candidate.version, "run_id": run_id,
            "mlflow_url": version_url(candidate.name, candidate.version),
            "mlflow_run_url": run_artifacts_url(run_id)}


def review_description(version: str, origin: dict[str, str]) -> str:
    """Markdown for the version's description: where it was trained, where to review it."""
    from fusion_model.registry.registry import CANDIDATE_LINE

    lines = [f"Candidate v{version}, {CANDIDATE_LINE}"]
    if origin.get("airflow.url"):
        lines.append(f"Trained by Airflow run [{origin.get('airflow.run_id')}]"
                     f"({origin['airflow.url']}) of `{origin.get('airflow.dag_id')}`.")
    review = os.environ.get("FUSION_REVIEW_URL", "").rstrip("/")
    if review:
        lines.append(f"Review it beside the champion: [search review page]"
                     f"({review}/?left=champion&right={version}).")
    lines.append("The gate's gallery, decision and segment table are in the run's "
                 "`review/` artifacts.")
    return "\n\n".join(lines)


def _training_key(model_dir: str, config: RunConfig) -> str:
    """Idempotency key of a trained model: its weights and config (no wall-clock data)."""
    from fusion_model.models.towers import MODEL_FILE

    digest = hashlib.sha256((Path(model_dir) / MODEL_FILE).read_bytes())
    digest.update(config.hash.encode())
    return digest.hexdigest()[:32]


def _registered_with_key(name: str, key: str) -> dict | None:
    import mlflow

    versions = mlflow.MlflowClient().search_model_versions(
        f"name = '{name}' and tags.train_result_key = '{key}'")
    if not versions:
        return None
    version = versions[0]
    log.info("%s version %s already registers this training result", name, version.version)
    return {"name": name, "version": str(version.version), "run_id": version.run_id}


def load_registered_model(name: str, version: str):
    """The TwoTower behind a registered product-encoder version (its frozen towers, on the
    IR the version carries, are what ``engines.towers_for`` returns for it)."""
    from fusion_model.registry.pyfunc import load_registered_towers

    return load_registered_towers(f"models:/{name}/{version}")[0]


def train_stage1(catalog_uri: str, work_dir: str, config_name: str = "default",
                 overrides: list[str] | tuple = (), fingerprint: str | None = None,
                 features_uri: str | None = None) -> dict:
    """Stage 1 alone of the config's model, into ``work_dir/stage1``: align queries with
    product text (domain fine-tuning). A finished stage 1 of the same config and catalog
    there is reused. ``features_uri``: the work area's feature cache (see
    ``_shared_features``)."""
    from fusion_model.training.trainer import train_stage1 as run_stage1

    config = _config(config_name, overrides)
    catalog = load_snapshot(catalog_uri, fingerprint)
    out = storage.join(work_dir, "stage1")
    with workarea.staged(out) as local, _shared_features(config, features_uri):
        result = _finished_training(str(local), config.for_catalog(catalog.max_grade),
                                    catalog) or run_stage1(catalog, config, str(local))
    return {"stage1_dir": out, "model_dir": storage.join(out, "model"),
            "test": result.test.metrics}


@contextlib.contextmanager
def _shared_features(config: RunConfig, features_uri: str | None) -> Iterator[None]:
    """With an S3 work area, a training task's feature cache (``train.cache_dir``, on its
    worker's disk) starts from the work area's copy (files it holds already are not
    downloaded) and adds what the task computed to it: a training worker on a new host
    does not recompute the catalog's features. Index shards keep a cache of their own:
    each embeds a different slice."""
    if not features_uri or not storage.is_s3(features_uri):
        yield
        return
    local = Path(config.train.cache_dir).expanduser()
    with contextlib.ExitStack() as stack:
        for namespace in FEATURE_NAMESPACES:
            stack.enter_context(workarea.staged(storage.join(features_uri, namespace),
                                                local=local / namespace))
        yield


def _pull_model(model_uri: str) -> Path:
    """The local copy of a trained model folder and of the result file beside it."""
    from fusion_model.training.trainer import RESULT_FILE

    workarea.pull(storage.join(_parent(model_uri), RESULT_FILE))
    return workarea.pull(model_uri)


def train_stage2(catalog_uri: str, work_dir: str, stage1_model_dir: str,
                 config_name: str = "default", overrides: list[str] | tuple = (),
                 fingerprint: str | None = None, out: str | None = None,
                 features_uri: str | None = None) -> dict:
    """Stage 2 from a stage-1 model, into ``out`` (default ``work_dir/stage2``): query <->
    image alignment and the fusion network. A finished run of the same config and
    catalog there is reused (the rule of stage 1); the result's history holds both
    stages."""
    from fusion_model.training.trainer import RESULT_FILE
    from fusion_model.training.trainer import train as run_training

    config = _config(config_name, overrides)
    catalog = load_snapshot(catalog_uri, fingerprint)
    out_uri = out or storage.join(work_dir, "stage2")
    stage1 = _pull_model(stage1_model_dir)
    with workarea.staged(out_uri) as local, _shared_features(config, features_uri):
        result = _finished_training(str(local), config.for_catalog(catalog.max_grade),
                                    catalog) \
            or run_training(catalog, config, local, stage1_from=str(stage1))
    return {"work_dir": out_uri, "model_dir": storage.join(out_uri, "model"),
            "result": storage.join(out_uri, RESULT_FILE), "test": result.test.metrics,
            "catalog_fingerprint": catalog.fingerprint, "config_hash": config.hash}


def evaluate(work_dir: str) -> dict:
    """The trained model's offline metrics (exact search), overall and per segment."""
    from fusion_model.training.trainer import RESULT_FILE, TrainResult

    result = TrainResult.load(workarea.pull(storage.join(work_dir, RESULT_FILE)))
    return {"test": result.test.metrics, "segments": result.test.segments,
            "val": result.val.metrics}


def plan_index(version: str, catalog_uri: str, shards: int = 1, config_name: str = "default",
               overrides: list[str] | tuple = (), work_uri: str | None = None) -> list[dict]:
    """Create the version's NEW collection, write the snapshot's partition manifest (one
    products table per shard, once per snapshot, under ``work_uri``, where every shard
    task reads it; default the feature cache folder) and describe one job per shard."""
    from fusion_model.data.catalog import load_catalog
    from fusion_model.data.partitions import write_partitions
    from fusion_model.index.build import stored_fields

    config = _config(config_name, overrides)
    _mlflow(config)
    catalog = load_catalog(catalog_uri)
    name = collection_name(config.index.collection_prefix, version, catalog.fingerprint)
    dim = load_registered_model(config.registry.model_name, version).embedding_dim
    with open_index(config.index) as index:
        index.create_collection(name, dim, stored_fields(catalog, config.index),
                                config.index.index_type, config.index.metric)
    partitions = write_partitions(catalog, shards, _partitions_root(config, work_uri))
    return [{"version": version, "catalog_uri": catalog_uri, "collection": name,
             "shard": shard, "shards": shards, "partition": partitions[shard]}
            for shard in range(shards)]


def _partitions_root(config: RunConfig, work_uri: str | None) -> str:
    return work_uri or str(Path(config.train.cache_dir).expanduser())


def index_shard(version: str, catalog_uri: str, collection: str, shard: int, shards: int,
                config_name: str = "default", overrides: list[str] | tuple = (),
                partition: str | None = None) -> dict:
    """Embed and upsert the products of one shard (stable hash of product_id): its rows
    from the ``partition`` table ``plan_index`` wrote (the whole catalog is read and
    filtered only for a job planned without one)."""
    import dataclasses

    from fusion_model.data.catalog import load_catalog
    from fusion_model.data.partitions import read_partition, shard_of
    from fusion_model.index.build import write_catalog

    config = _config(config_name, overrides)
    _mlflow(config)
    tags: dict[str, str] = {}
    if partition:
        subset, tags = read_partition(partition, catalog_uri)
    else:
        catalog = load_catalog(catalog_uri)
        mine = shard_of(catalog.products["product_id"], shards) == shard
        subset = dataclasses.replace(catalog, products=catalog.products[mine])
    model = load_registered_model(config.registry.model_name, version)
    cache = str(Path(config.train.cache_dir).expanduser())
    with open_index(config.index) as index, storage.known_content_tags(tags):
        result = write_catalog(model, subset, index, collection, config.index, cache)
    return {"shard": shard, "written": result.written, "skipped": result.skipped}


def verify_index(version: str, catalog_uri: str, collection: str,
                 config_name: str = "default", overrides: list[str] | tuple = ()) -> dict:
    """Count and self-retrieval checks; only then is the collection tagged on the version."""
    from fusion_model.data.catalog import load_catalog
    from fusion_model.index.build import verify
    from fusion_model.registry.registry import candidate_for, tag_version

    config = _config(config_name, overrides)
    _mlflow(config)
    catalog = load_catalog(catalog_uri)
    ids = catalog.products["product_id"].tolist()
    with open_index(config.index) as index:
        verify(index, collection, ids, config.index.verify_samples)
    candidate, _ = candidate_for(config.registry.model_name, version)
    tag_version(candidate, {"milvus_collection": collection, "milvus_uri": config.index.uri,
                            **_facets_tag(catalog, config)})
    return {"collection": collection, "count": len(ids), "verified": True}


def _facets_tag(catalog, config: RunConfig) -> dict[str, str]:
    """The ``filter_values`` tag: the values of the collection's filter fields."""
    from fusion_model.index.build import attribute_fields
    from fusion_model.index.facets import TAG, facets_of, facets_tag

    facets = facets_of(catalog.products, attribute_fields(catalog, config.index))
    return {TAG: facets_tag(facets)}


def index(version: str, catalog_uri: str, config_name: str = "default",
          overrides: list[str] | tuple = ()) -> dict:
    """plan_index + every shard + verify_index, in one process."""
    jobs = plan_index(version, catalog_uri, 1, config_name, overrides)
    written = sum(index_shard(**job, config_name=config_name, overrides=overrides)["written"]
                  for job in jobs)
    verified = verify_index(version, catalog_uri, jobs[0]["collection"], config_name,
                            overrides)
    return {**verified, "written": written}


def _test_evaluator(catalog_uri: str, config: RunConfig):
    from fusion_model.data.catalog import load_catalog
    from fusion_model.data.retrieval import data_for
    from fusion_model.evaluation.evaluator import Evaluator

    catalog = load_catalog(catalog_uri)
    config = config.for_catalog(catalog.max_grade)
    return catalog, Evaluator.for_split(catalog, config, data_for(catalog, config)), config


def _evaluate_version(version: str, collection: str, evaluator, config: RunConfig):
    from fusion_model.engines import towers_for
    from fusion_model.gate import evaluate_collection

    model = load_registered_model(config.registry.model_name, version)
    vectors = towers_for(model).embed_queries(evaluator.query_texts).numpy()
    return evaluate_collection(config.index, collection, vectors, evaluator)


def gate(version: str, catalog_uri: str, config_name: str = "default",
         overrides: list[str] | tuple = (), force_promote: bool = False) -> dict:
    """Challenger vs champion (or the zero-shot text baseline) through their collections."""
    from fusion_model.benchmark import zero_shot_rankings
    from fusion_model.gate import decide
    from fusion_model.registry.registry import CHAMPION, Candidate, get_alias, version_tags

    config = _config(config_name, overrides)
    _mlflow(config)
    switch.recover(config)  # an interrupted switch first: it decides the champion
    name = config.registry.model_name
    catalog, test, config = _test_evaluator(catalog_uri, config)
    tags = version_tags(Candidate(name, version, version))
    challenger, challenger_ranks = _evaluate_version(version, tags["milvus_collection"], test,
                                                     config)
    champion = get_alias(name, CHAMPION)
    if champion is not None and champion.version != version:
        baseline_name = f"champion v{champion.version}"
        baseline, baseline_ranks = _evaluate_version(
            champion.version, version_tags(champion)["milvus_collection"], test, config)
    else:
        baseline_name = "zero_shot_text"
        baseline, baseline_ranks = zero_shot_rankings(catalog, config)
    decision = decide(challenger, baseline, baseline_name, config.gate, force_promote)
    _log_review(tags["run_id"], f"{name} v{version} vs {baseline_name}",
                {**decision.as_dict(), "version": version},
                {f"challenger v{version}": (challenger, challenger_ranks),
                 baseline_name: (baseline, baseline_ranks)}, test, catalog, config)
    return {**decision.as_dict(), "version": version, "collection": tags["milvus_collection"],
            "challenger": challenger.metrics, "baseline_metrics": baseline.metrics}


def _log_review(run_id: str, title: str, decision: dict, models: dict, test, catalog,
                config: RunConfig) -> None:
    """The gate's review artifacts on the training run: the gallery (both models' top 10
    for sample test queries under the decision and metrics), the segment table with the
    baseline and the difference, and the decision with exact values."""
    import mlflow

    from fusion_model.registry.gallery import build_gallery, decision_header
    from fusion_model.registry.review_pack import ARTIFACT, build_review_pack
    from fusion_model.registry.tracking import segment_html, segment_table

    metric = config.gate.primary_metric
    header = decision_header(decision, {label: m[0] for label, m in models.items()}, metric)
    gallery = build_gallery(dict(zip(test.query_ids, test.query_texts)),
                            {label: m[1] for label, m in models.items()}, test.qrels,
                            catalog.products, title, test.min_grade, header)
    (challenger, _), (baseline, _) = models.values()
    table = segment_table(challenger, baseline)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_text(gallery, "review/gallery.html")
        mlflow.log_dict(decision, "review/gate_decision.json")
        mlflow.log_text(table.to_csv(index=False), "review/segments.csv")
        mlflow.log_text(segment_html(table), "review/segments.html")
        mlflow.log_dict(build_review_pack(
            decision.get("version", ""), decision["baseline"], metric, test.query_ids,
            test.query_texts, challenger.per_query, baseline.per_query, test.qrels),
            ARTIFACT)


def promote_or_reject(version: str, decision: dict, config_name: str = "default",
                      overrides: list[str] | tuple = ()) -> dict:
    """Apply a gate decision. Promote: serving alias -> the verified collection, then
    ``champion`` -> version and the audit record (the alias moves back if MLflow fails);
    with ``feedback.online`` the version becomes the interleaved ``candidate`` instead.
    Reject: nothing changes but the audit record."""
    from fusion_model.registry.registry import candidate_for, record_decision

    config = _config(config_name, overrides)
    _mlflow(config)
    switch.recover(config)  # an interrupted switch first: it decides the champion
    candidate, tags = candidate_for(config.registry.model_name, version)
    entry = {**decision, "collection": tags["milvus_collection"]}
    prefix = config.index.collection_prefix
    if decision["decision"] != "promote":
        record_decision(candidate, entry, config.registry)
        with open_index(config.index) as index:  # the gate is done with it: free it
            index.release_idle(prefix, keep=set())
        return {"promoted": False, "version": version, "reasons": decision["reasons"]}
    if config.feedback.online:  # shoppers decide: interleaved first (pipelines/online.py)
        from fusion_model.pipelines import online

        return online.start(config, candidate, tags["milvus_collection"], decision)
    previous = switch.switch_serving(config, candidate, tags["milvus_collection"], entry)
    with open_index(config.index) as index:
        dropped = index.prune(prefix, config.index.keep_collections)
        # services read the previous collection until they follow the new champion
        index.release_idle(prefix, keep={previous} if previous else set())
    return {"promoted": True, "version": version, "collection": tags["milvus_collection"],
            "previous_collection": previous, "dropped": dropped}


def rollback(version: str, config_name: str = "default", overrides: list[str] | tuple = (),
             reason: str = "manual rollback") -> dict:
    """Point the serving alias and ``champion`` back at an earlier version's collection."""
    from fusion_model.registry.registry import candidate_for

    config = _config(config_name, overrides)
    _mlflow(config)
    switch.recover(config)  # an interrupted switch first: it decides the champion
    candidate, tags = candidate_for(config.registry.model_name, version)
    collection = tags.get("milvus_collection")
    with open_index(config.index) as index:
        if not collection or not index.has_collection(collection):
            raise VectorIndexError(f"version {version} has no kept collection "
                                   f"({collection}); re-index it before rolling back")
    previous = switch.switch_serving(config, candidate, collection, {
        "decision": "rollback", "reasons": [reason], "metrics": {}, "collection": collection})
    return {"version": version, "collection": collection, "previous_collection": previous}


def refresh(catalog_uri: str, config_name: str = "default",
            overrides: list[str] | tuple = (), allow_deletions: bool = False,
            report_dir: str | None = None, validated: bool = False) -> dict:
    """Re-embed a new snapshot with the champion into a NEW collection (unchanged vectors
    copied), verify it, then move the serving alias and record it on the champion.

    The snapshot is validated first (unless ``validated``: the DAG's own validate task ran);
    a snapshot dropping more than ``index.max_delete_share`` of the serving products is
    refused unless ``allow_deletions``. The serving collection is never modified; runs
    on one registry take turns (``switch.registry_lock``)."""
    config = _config(config_name, overrides)
    if not validated:
        validate(catalog_uri, report_dir or str(Path(config.train.cache_dir).expanduser()
                                                 / "refresh-validation"))
    _mlflow(config)
    with switch.registry_lock(config):  # one refresh at a time: they would build one target
        return _refresh(config, catalog_uri, allow_deletions)


def _refresh(config: RunConfig, catalog_uri: str, allow_deletions: bool) -> dict:
    from fusion_model.data.catalog import load_catalog
    from fusion_model.index.build import refresh_serving

    champion, candidate, tags = _serving_champion(config)
    model = load_registered_model(champion.name, champion.version)
    cache = str(Path(config.train.cache_dir).expanduser())
    catalog = load_catalog(catalog_uri)
    result = refresh_serving(model, catalog, config.index, champion.version,
                             cache, allow_deletions=allow_deletions)
    return _switch_refreshed(config, candidate, tags, catalog, catalog_uri, result.collection,
                             {"written": result.written, "deleted": result.deleted,
                              "unchanged": result.skipped, "count": result.count})


def _serving_champion(config: RunConfig):
    """(champion, its candidate, its tags) after recovering an interrupted switch."""
    from fusion_model.registry.registry import CHAMPION, candidate_for, get_alias

    switch.recover(config)  # an interrupted switch first: it decides the champion
    champion = get_alias(config.registry.model_name, CHAMPION)
    if champion is None:
        raise NoChampionError(config.registry.model_name)
    candidate, tags = candidate_for(champion.name, champion.version)
    return champion, candidate, tags


def _switch_refreshed(config: RunConfig, candidate, tags: dict, catalog, catalog_uri: str,
                      collection: str, counts: dict) -> dict:
    """Move the serving alias to the refreshed ``collection`` (recorded on the champion)."""
    previous = tags.get("milvus_collection")
    if collection != previous:
        switch.switch_serving(config, candidate, collection, {
            "decision": "refresh", "metrics": {}, "collection": collection,
            "reasons": [f"catalog {catalog_uri}: {counts['written']} embedded, "
                        f"{counts['deleted']} deleted, {counts['unchanged']} unchanged"]},
            version_tags={"milvus_collection": collection, "image_roots": json.dumps(
                sorted({*json.loads(tags.get("image_roots") or "[]"),
                        *catalog.image_roots()})), **_facets_tag(catalog, config)})
    return {"collection": collection, "previous_collection": previous, **counts,
            "catalog_uri": catalog_uri, "catalog_fingerprint": catalog.fingerprint}


def plan_refresh(catalog_uri: str, shards: int = 1, config_name: str = "default",
                 overrides: list[str] | tuple = (), allow_deletions: bool = False,
                 work_uri: str | None = None) -> list[dict]:
    """The mapped refresh's first task: check the deletions, create the champion's new
    collection and write the snapshot's partition manifest; one job per shard (one with
    nothing to do when the serving collection already holds this snapshot). Each job
    carries the plan (champion version, serving and target collections, counts)."""
    from fusion_model.data.catalog import load_catalog
    from fusion_model.data.partitions import write_partitions
    from fusion_model.index.build import plan_refresh as plan_collections

    config = _config(config_name, overrides)
    _mlflow(config)
    champion, _, _ = _serving_champion(config)
    catalog = load_catalog(catalog_uri)
    dim = load_registered_model(champion.name, champion.version).embedding_dim
    with open_index(config.index) as index:
        plan = plan_collections(index, catalog, config.index, champion.version, dim,
                                allow_deletions)
    if plan.target == plan.serving:  # one job that has nothing to do
        return [{"catalog_uri": catalog_uri, "version": champion.version, **plan.as_dict(),
                 "shard": 0, "shards": 1, "partition": None}]
    partitions = write_partitions(catalog, shards, _partitions_root(config, work_uri))
    return [{"catalog_uri": catalog_uri, "version": champion.version, **plan.as_dict(),
             "shard": shard, "shards": shards, "partition": partitions[shard]}
            for shard in range(shards)]


def refresh_shard(job: dict, config_name: str = "default",
                  overrides: list[str] | tuple = ()) -> dict:
    """Fill the target with one shard's products: its rows of the partition manifest, its
    rows of the serving and target collections, its photos (resumable)."""
    from fusion_model.data.partitions import read_partition
    from fusion_model.index.build import RefreshPlan, refresh_rows

    if job["partition"] is None:
        return {"shard": job["shard"], "written": 0, "unchanged": 0}
    config = _config(config_name, overrides)
    _mlflow(config)
    subset, tags = read_partition(job["partition"], job["catalog_uri"])
    model = load_registered_model(config.registry.model_name, job["version"])
    plan = RefreshPlan(job["serving"], job["target"], job["kept"], job["removed"])
    cache = str(Path(config.train.cache_dir).expanduser())
    with open_index(config.index) as index, storage.known_content_tags(tags):
        result = refresh_rows(model, subset, index, plan, config.index, cache, progress=False)
    return {"shard": job["shard"], "written": result.written,
            "unchanged": result.skipped}


def finish_refresh(jobs: list[dict], shards: list[dict], config_name: str = "default",
                   overrides: list[str] | tuple = ()) -> dict:
    """Verify the filled target, then move the serving alias to it, recorded on the
    champion; refused when the champion changed since the plan (run the refresh again)."""
    from fusion_model.data.catalog import load_catalog
    from fusion_model.index.build import verify

    plan, catalog_uri = jobs[0], jobs[0]["catalog_uri"]
    config = _config(config_name, overrides)
    _mlflow(config)
    catalog = load_catalog(catalog_uri)
    with switch.registry_lock(config):
        champion, candidate, tags = _serving_champion(config)
        if champion.version != plan["version"]:
            raise SnapshotChangedError(
                f"the champion is v{champion.version} now, not v{plan['version']} that this "
                "refresh embedded with; nothing was switched: run the refresh again")
        if plan["target"] != plan["serving"]:
            with open_index(config.index) as index:
                verify(index, plan["target"], catalog.products["product_id"].tolist(),
                       config.index.verify_samples)
                count = index.count(plan["target"])
        else:
            count = plan["kept"]
        written = sum(s["written"] for s in shards)
        return _switch_refreshed(config, candidate, tags, catalog, catalog_uri,
                                 plan["target"], {"written": written,
                                                  "deleted": plan["removed"],
                                                  "unchanged": count - written,
                                                  "count": count})


def recover(config_name: str = "default", overrides: list[str] | tuple = ()) -> dict | None:
    """Finish (or, when its collection is gone, undo) an interrupted promotion, rollback or
    refresh; None when there is none."""
    config = _config(config_name, overrides)
    _mlflow(config)
    return switch.recover(config)


def search(text: str | list[str], k: int = 10, filter_expr: str = "",
           config_name: str = "default", overrides: list[str] | tuple = ()) -> list:
    """Champion query encoder + ANN search of the champion's collection: hits with
    product_id, score, title, image_uri and attributes (``serving.searcher``, the path
    ``fusion-model serve`` takes). ``filter_expr`` is a people's filter
    (``index/filters.py``: conditions on attribute fields joined by and/or), parsed and
    quoted there.

    Refuses to answer when the serving alias does not point at the collection recorded on
    the champion (a query encoder must only search vectors of its own product encoder)."""
    from fusion_model.serving.searcher import ChampionSearcher, check_request

    texts = [text] if isinstance(text, str) else list(text)
    for query in texts or [""]:  # before loading the encoder (seconds) for a bad request
        check_request(query, k)
    with ChampionSearcher.open(_config(config_name, overrides)) as searcher:
        results = searcher.search_many(texts, k, filter_expr)
    hits = [result.hits for result in results]
    return hits[0] if isinstance(text, str) else hits


def status(config_name: str = "default", overrides: list[str] | tuple = (),
           last: int = 5) -> dict:
    """Champion, challenger, serving alias target, orphaned collections (ours, neither
    served, nor recorded on a version, nor named by an audit decision: a crashed or still
    running index job, which a rerun resumes) and the last ``last`` decisions."""
    from fusion_model.registry import registry

    config = _config(config_name, overrides)
    _mlflow(config)
    name = config.registry.model_name
    aliases = {alias: registry.get_alias(name, alias)
               for alias in (registry.CHAMPION, registry.CHALLENGER, registry.CANDIDATE)}
    history = registry.promotion_history(name,
                                         registry.audit_experiment(config.registry.experiment))
    recorded = registry.recorded_collections(name) | {
        entry.get(key) for entry in history for key in ("collection", "previous_collection")}
    with open_index(config.index) as index:
        target = index.resolve_alias(config.index.alias)
        ours = [c for c in index.list_collections()
                if c.startswith(f"{config.index.collection_prefix}_m")]
        orphans = [c for c in ours if c not in recorded and not index.aliases_of(c)]
        serving = None if target == config.index.alias else target
        problems = disagreements(name, aliases[registry.CHAMPION], serving, index,
                                 config.index.alias)
    return {"model": name, "aliases": aliases, "alias": config.index.alias,
            "serving": serving, "collections": sorted(ours), "orphans": orphans,
            "problems": problems, "history": history[-last:],
            "online": _online_summary(config, aliases[registry.CANDIDATE])}


def _online_summary(config: RunConfig, candidate) -> str | None:
    """The running comparison in one line (None without a candidate)."""
    if candidate is None:
        return None
    from fusion_model.pipelines import online

    running = online.current(config)
    return running and f"v{running['candidate'].version} interleaved since " \
        f"{running['since']}: {running['summary']}"


def disagreements(name: str, champion, serving: str | None, index, alias: str) -> list[str]:
    """Where the serving alias, the champion alias and the registry disagree, each with
    the command that repairs it (empty when they agree)."""
    from fusion_model.registry import registry

    intent = switch.pending(name)
    if intent is not None:
        return [f"an interrupted {intent.describe()} is unfinished; run "
                f"`{switch.RECOVER_COMMAND}` to complete it"]
    if champion is None:
        return [] if serving is None else [
            f"serving alias {alias} -> {serving} but {name} has no champion; run "
            "`fusion-model lifecycle` or the training DAG to promote one"]
    recorded = registry.version_tags(champion).get("milvus_collection")
    problems = []
    query = registry.get_alias(registry.query_model_name(name), registry.CHAMPION)
    if query is None or query.version != champion.query_version:
        problems.append(f"the query encoder's champion alias is not v{champion.query_version} "
                        f"of v{champion.version}; run `fusion-model rollback "
                        f"{champion.version}`")
    if not recorded or not index.has_collection(recorded):
        problems.append(f"champion v{champion.version} records collection {recorded}, which "
                        "does not exist; roll back to a kept version (`fusion-model rollback "
                        "VERSION`) or re-index it")
    elif serving != recorded:
        problems.append(f"serving alias {alias} -> {serving} but champion "
                        f"v{champion.version} records {recorded}: search refuses to answer; "
                        f"run `fusion-model rollback {champion.version}` to re-align them")
    return problems


def decide_online(config_name: str = "default", overrides: list[str] | tuple = ()) -> dict:
    """Promote, withdraw or keep the interleaved candidate (``pipelines/online.py``)."""
    from fusion_model.pipelines import online

    config = _config(config_name, overrides)
    _mlflow(config)
    return online.decide(config)


def build_feedback(catalog_uri: str, out: str, config_name: str = "default",
                   overrides: list[str] | tuple = (), events: str = "",
                   since: str | None = None, keep_labels: bool = False) -> dict:
    """A catalog snapshot whose training judgments are built from the search events
    (``feedback/judgments.py``): position-bias corrected, with minimum evidence."""
    import datetime as dt

    from fusion_model.data.catalog import load_catalog
    from fusion_model.feedback.judgments import (
        build_judgments,
        grades_credibly,
        judged_snapshot,
        read_click_log,
    )

    config = _config(config_name, overrides)
    root = events or config.feedback.events
    if not root:
        raise BadInputError("no search events to build judgments from: give --events or "
                            "set feedback.events")
    settings = config.feedback
    clicks = read_click_log(root, dt.date.fromisoformat(since) if since else None)
    if clicks.cells.empty:
        raise BadInputError(f"{root}: no recorded searches"
                            f"{f' since {since}' if since else ''}")
    built = build_judgments(clicks, settings.position_bias, settings.min_searches,
                            settings.min_examinations, settings.grade_floors,
                            settings.pool_refinements, settings.confidence)
    if built.judgments.empty:
        evidence = (f"graded at feedback.confidence={settings.confidence}"
                    if grades_credibly(settings.position_bias, settings.confidence) else
                    f"examined feedback.min_examinations={settings.min_examinations} times")
        raise BadInputError(
            f"{root}: {built.searches} searches of {len(clicks.searches)} queries, but no "
            f"query reached feedback.min_searches={settings.min_searches} with a product "
            + evidence)
    summary = judged_snapshot(load_catalog(catalog_uri), built, out, keep_labels)
    summary = {**summary, "catalog_uri": summary["catalog"],
               "catalog_fingerprint": load_catalog(summary["catalog"]).fingerprint}
    log.info("judgments from %d searches: %d queries judged (%d too rare, %d held out as "
             "val/test), grades %s -> %s", summary["searches"], summary["queries_judged"],
             summary["queries_too_rare"], summary["queries_held_out"], summary["pairs"],
             summary["catalog"])
    return summary


def decide_online_if_on(config_name: str = "default", overrides: list[str] | tuple = ()
                        ) -> dict:
    """``decide_online`` when ``feedback.online`` is on, else a note that it is off."""
    if not _config(config_name, overrides).feedback.online:
        return {"state": "off", "reason": "feedback.online is off"}
    return decide_online(config_name, overrides)
