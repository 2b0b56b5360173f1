"""
### Catalog refresh

Daily (`FUSION_REFRESH_CRON`; `none`: on demand only): validate the new catalog
snapshot (mapped over `shards`), then re-embed new and changed products (content hash)
with the current champion into a NEW collection (unchanged vectors copied, removed
products left out; one mapped task per shard of the partition manifest), verify it and
move the serving alias. The collection that serving
reads is never modified. A snapshot dropping more than `index.max_delete_share` (5%) of the
serving products is refused unless the run sets `allow_deletions`. Updates the `catalog`
asset with the snapshot's URI and fingerprint, which triggers
`multimodal_retrieval_training` on exactly that snapshot.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag
from fusion_platform import (
    CATALOG_ASSET,
    announce_snapshot,
    catalog_uri_param,
    config_name_param,
    cron_schedule,
    default_args,
    flag_param,
    index_shard_task_args,
    platform_overrides,
    step_task,
    work_uri,
)


@dag(
    dag_id="catalog_refresh",
    schedule=cron_schedule("FUSION_REFRESH_CRON", "@daily"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["fusion-model", "index"],
    doc_md=__doc__,
    default_args=default_args(retries=2),
    params={"catalog_uri": catalog_uri_param("The new snapshot: directory or s3:// prefix"),
            "config_name": config_name_param(),
            "allow_deletions": flag_param("Accept a snapshot that drops more than "
                                          "index.max_delete_share of the serving products"),
            "shards": Param(2, type=["null", "integer"], minimum=1, maximum=64,
                            description="Validation and re-embedding shards (one mapped "
                            "task each); empty: 2")},
)
def catalog_refresh():
    @step_task(doc_md="The shards: one mapped validation task and one re-embedding task "
                      "each (`shards`).")
    def validation_parts(params=None) -> list[dict]:
        parts = params.get("shards") or 2
        return [{"part": part, "parts": parts} for part in range(parts)]

    @step_task(doc_md="One part of the product rows: GX row rules, every photo, profile "
                      "counts and id hashes.", **index_shard_task_args())
    def validate_part(job: dict, params=None, run_id=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.validate_part(params["catalog_uri"], _report_dir(run_id), **job)

    @step_task(doc_md="The catalog-wide rules over the parts; a failure stops the refresh "
                      "(index untouched).")
    def validate(parts: list[dict], params=None, run_id=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.validate(params["catalog_uri"], _report_dir(run_id),
                              work_uri("profiles", "catalog.json"),
                              parts=parts[0]["parts"])

    @step_task(doc_md="Check the deletions against the cap, create the champion's new "
                      "collection and write the partition manifest; one job per shard.")
    def plan_refresh(report: dict, params=None) -> list[dict]:
        from fusion_model.pipelines import steps

        return steps.plan_refresh(params["catalog_uri"], params.get("shards") or 2,
                                  params["config_name"], platform_overrides(),
                                  allow_deletions=bool(params.get("allow_deletions")),
                                  work_uri=work_uri())

    @step_task(doc_md="Fill the new collection with one shard: unchanged rows copied from "
                      "the serving collection, new and changed products embedded.",
               **index_shard_task_args())
    def refresh_shard(job: dict, params=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.refresh_shard(job, params["config_name"], platform_overrides())

    @step_task(outlets=[CATALOG_ASSET],
               doc_md="Verify the new collection, then move the serving alias (recorded on "
                      "the champion). The `catalog` asset event carries the snapshot's URI "
                      "and fingerprint.")
    def refresh(jobs: list[dict], shards: list[dict], params=None, outlet_events=None
                ) -> dict:
        from fusion_model.pipelines import steps

        refreshed = steps.finish_refresh(jobs, list(shards), params["config_name"],
                                         platform_overrides())
        announce_snapshot(outlet_events, refreshed)
        return refreshed

    parts = validate_part.expand(job=validation_parts())
    jobs = plan_refresh(validate(parts))
    refresh(jobs, refresh_shard.expand(job=jobs))


def _report_dir(run_id: str) -> str:
    return work_uri("refresh", run_id, "validation")


catalog_refresh()
