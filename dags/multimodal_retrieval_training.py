"""
### Multimodal retrieval training

Validate the catalog (mapped over shards, then the catalog-wide rules), run both training
stages, evaluate, register the candidate as `challenger` in MLflow, re-embed the catalog
into a **new** Milvus collection (mapped over shards), gate challenger vs champion through
their real collections, then promote (alias swap + `champion`) or reject (nothing
changes). Beside them, `tidy_runs` frees the disk of older runs' checkpoints and model
copies.

Runs weekly (Monday 03:00 UTC; `FUSION_TRAINING_CRON`, `none` for no cron) **and**
whenever the `catalog` asset is updated (the `catalog_refresh` DAG updates it): an
asset-triggered run trains the snapshot named by the event (URI + fingerprint; a URI that
holds another catalog by then fails the run). All
logic lives in `fusion_model.pipelines.steps`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag
from fusion_platform import (
    CATALOG_ASSET,
    catalog_snapshot,
    catalog_uri_param,
    chosen_overrides,
    config_name_param,
    cron_schedule,
    default_args,
    flag_param,
    guarded_segments_param,
    index_shard_task_args,
    platform_overrides,
    primary_metric_param,
    push_links,
    run_origin,
    run_retention,
    step_task,
    training_task_args,
    work_uri,
)

FORM_KEYS = {"epochs_stage1": "train.stage1.epochs", "epochs_stage2": "train.stage2.epochs",
             "primary_metric": "gate.primary_metric", "min_improvement": "gate.min_improvement",
             "guarded_segments": "gate.guarded_segments"}


def _overrides(params: dict) -> list[str]:
    """Deployment overrides plus what the trigger form set (empty fields: the config's)."""
    return [*platform_overrides(), *chosen_overrides(params, FORM_KEYS),
            *(params.get("extra_overrides") or [])]


def _schedule():
    """The cron schedule (``$FUSION_TRAINING_CRON``, Monday 03:00 UTC) or the catalog
    asset, whichever comes first; the asset alone when the cron is ``none``."""
    cron = cron_schedule("FUSION_TRAINING_CRON", "0 3 * * 1")
    if cron is None:
        return CATALOG_ASSET
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"),
                               assets=CATALOG_ASSET)


@dag(
    dag_id="multimodal_retrieval_training",
    schedule=_schedule(),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["fusion-model", "training"],
    doc_md=__doc__,
    default_args=default_args(retries=2),
    params={
        "catalog_uri": catalog_uri_param("Catalog directory or s3://bucket/prefix"),
        "config_name": config_name_param(),
        "epochs_stage1": Param(None, type=["null", "integer"], minimum=0, maximum=50,
                               description="Stage 1 epochs (query <-> product text); "
                               "empty: the config's"),
        "epochs_stage2": Param(None, type=["null", "integer"], minimum=0, maximum=50,
                               description="Stage 2 epochs (query <-> image + fusion); "
                               "empty: the config's"),
        "primary_metric": primary_metric_param(),
        "min_improvement": Param(None, type=["null", "number"], minimum=0,
                                 description="Required absolute gain over the champion; "
                                 "empty: the config's (0)"),
        "guarded_segments": guarded_segments_param(),
        "force_promote": flag_param("Promote even if the gate says no (audited)"),
        "shards": Param(2, type=["null", "integer"], minimum=1, maximum=64,
                        description="Re-embedding shards (one mapped task each); empty: 2"),
        "extra_overrides": Param(None, type=["null", "array"], items={"type": "string"},
                                 description="More config overrides, one key=value per line"),
    },
)
def multimodal_retrieval_training():
    @step_task(doc_md="The catalog snapshot to train: the `catalog` asset event's (URI + "
                      "fingerprint) when the asset triggered the run, else `catalog_uri`.")
    def snapshot(params=None, triggering_asset_events=None) -> dict:
        return catalog_snapshot(params["catalog_uri"], triggering_asset_events)

    @step_task(doc_md="The validation parts: one mapped task per shard (`shards`).")
    def validation_parts(params=None) -> list[dict]:
        parts = params.get("shards") or 2
        return [{"part": part, "parts": parts} for part in range(parts)]

    @step_task(doc_md="One part of the product rows: GX row rules, every photo, profile "
                      "counts and id hashes (batches of 20,000 rows).",
               **index_shard_task_args())
    def validate_part(job: dict, snap: dict, run_id=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.validate_part(snap["catalog_uri"],
                                   work_uri("runs", run_id, "validation"), **job)

    @step_task(doc_md="The catalog-wide rules over the parts (unique ids, judgments, "
                      "splits, the missing-photo share, drift); fails the run (nothing "
                      "downstream) on bad data.")
    def validate(snap: dict, parts: list[dict], run_id=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.validate(snap["catalog_uri"], work_uri("runs", run_id, "validation"),
                              work_uri("profiles", "catalog.json"),
                              fingerprint=snap["catalog_fingerprint"],
                              parts=parts[0]["parts"])

    @step_task(doc_md="Stage 1: align queries with product text, fine-tuning the text encoder.",
               **training_task_args())
    def train_stage1(snap: dict, report: dict, params=None, run_id=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.train_stage1(snap["catalog_uri"], work_uri("runs", run_id),
                                  params["config_name"], _overrides(params),
                                  fingerprint=snap["catalog_fingerprint"],
                                  features_uri=work_uri("features"))

    @step_task(doc_md="Stage 2: align queries with product photos and train the fusion network.",
               **training_task_args())
    def train_stage2(snap: dict, stage1: dict, params=None, run_id=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.train_stage2(snap["catalog_uri"], work_uri("runs", run_id),
                                  stage1["model_dir"], params["config_name"],
                                  _overrides(params), fingerprint=snap["catalog_fingerprint"],
                                  features_uri=work_uri("features"))

    @step_task(doc_md="Publish the offline metrics (exact search over the whole catalog, "
                      "overall and per segment) that training computed, as this task's XCom.")
    def evaluate(trained: dict) -> dict:
        from fusion_model.pipelines import steps

        return steps.evaluate(trained["work_dir"])

    @step_task(doc_md="Log the run to MLflow and register the candidate as `challenger`, "
                      "tagged with this DAG run (links: MLflow model version, gate review).")
    def register(snap: dict, trained: dict, report: dict, params=None, dag_run=None,
                 ti=None) -> dict:
        from fusion_model.pipelines import steps

        registered = steps.register(trained["work_dir"], snap["catalog_uri"],
                                    params["config_name"], _overrides(params),
                                    validation_report=report["report"],
                                    origin=run_origin(dag_run.dag_id, dag_run.run_id))
        push_links(ti, registered)
        return registered

    @step_task(doc_md="Create the candidate's new collection; one job per shard.")
    def plan_index(snap: dict, registered: dict, params=None) -> list[dict]:
        from fusion_model.pipelines import steps

        return steps.plan_index(registered["version"], snap["catalog_uri"],
                                params.get("shards") or 2, params["config_name"],
                                _overrides(params), work_uri=work_uri())

    @step_task(doc_md="Embed and upsert one shard of the catalog (resumable): its rows "
                      "from the partition manifest, its photos and its existing vectors.",
               **index_shard_task_args())
    def index_shard(job: dict, params=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.index_shard(**job, config_name=params["config_name"],
                                 overrides=_overrides(params))

    @step_task(doc_md="Count and self-retrieval checks before anything may point at it.")
    def verify_index(jobs: list[dict], shards: list[dict], params=None) -> dict:
        from fusion_model.pipelines import steps

        job = jobs[0]
        return steps.verify_index(job["version"], job["catalog_uri"], job["collection"],
                                  params["config_name"], _overrides(params))

    @step_task(doc_md="Challenger vs champion through their collections (ANN) with a paired "
                      "bootstrap and guarded segments.")
    def gate(snap: dict, registered: dict, verified: dict, params=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.gate(registered["version"], snap["catalog_uri"],
                          params["config_name"], _overrides(params),
                          force_promote=bool(params.get("force_promote")))

    @step_task(doc_md="Promote (alias swap + `champion`) or reject (nothing changes); audited.")
    def promote_or_reject(registered: dict, decision: dict, params=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.promote_or_reject(registered["version"], decision,
                                       params["config_name"], _overrides(params))

    @step_task(doc_md="Free the disk of older runs: their checkpoints and model copies "
                      "(registered models live in MLflow; results and validation reports "
                      "stay). Spares this run, the newest `fusion_keep_runs` (5) and any "
                      "run active within `fusion_run_retention_days` (7).")
    def tidy_runs(run_id=None) -> dict:
        from fusion_model.pipelines.retention import prune_runs

        keep, days = run_retention()
        return prune_runs(work_uri("runs"), current=run_id, keep=keep,
                          older_than_days=days)

    tidy_runs()
    snap = snapshot()
    parts = validate_part.partial(snap=snap).expand(job=validation_parts())
    report = validate(snap, parts)
    stage1 = train_stage1(snap, report)
    trained = train_stage2(snap, stage1)
    registered = register(snap, trained, report)
    evaluate(trained) >> registered
    jobs = plan_index(snap, registered)
    shards = index_shard.expand(job=jobs)
    verified = verify_index(jobs, shards)
    decision = gate(snap, registered, verified)
    promote_or_reject(registered, decision)


multimodal_retrieval_training()
