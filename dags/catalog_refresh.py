"""
### Catalog refresh

Daily (`FUSION_REFRESH_CRON`; `none`: on demand only): validate the new catalog
snapshot, then re-embed new and changed products (content hash) with the current
champion into a NEW collection (unchanged vectors copied, removed products left out),
verify it and move the serving alias. The collection that serving
reads is never modified. A snapshot dropping more than `index.max_delete_share` (5%) of the
serving products is refused unless the run sets `allow_deletions`. Updates the `catalog`
asset with the snapshot's URI and fingerprint, which triggers
`multimodal_retrieval_training` on exactly that snapshot.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag
from fusion_platform import (
    CATALOG_ASSET,
    announce_snapshot,
    catalog_uri_param,
    config_name_param,
    cron_schedule,
    default_args,
    flag_param,
    platform_overrides,
    step_task,
    work_dir,
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
                                          "index.max_delete_share of the serving products")},
)
def catalog_refresh():
    @step_task(doc_md="Validate the snapshot; a failure stops the refresh (index untouched).")
    def validate(params=None, run_id=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.validate(params["catalog_uri"],
                              str(work_dir() / "refresh" / run_id / "validation"),
                              str(work_dir() / "profiles" / "catalog.json"))

    @step_task(outlets=[CATALOG_ASSET],
               doc_md="New collection: unchanged rows copied, new/changed products embedded with "
                      "the champion, verified; then the serving alias moves. The `catalog` "
                      "asset event carries the snapshot's URI and fingerprint.")
    def refresh(report: dict, params=None, outlet_events=None) -> dict:
        from fusion_model.pipelines import steps

        refreshed = steps.refresh(params["catalog_uri"], params["config_name"],
                                  platform_overrides(),
                                  allow_deletions=bool(params.get("allow_deletions")),
                                  validated=report["success"])
        announce_snapshot(outlet_events, refreshed)
        return refreshed

    refresh(validate())


catalog_refresh()
