"""
### Search feedback

Daily (`FUSION_FEEDBACK_CRON`; `none`: on demand only), from the search events the
service records (`fusion-model serve --events`, config `feedback.events` or the
`events_uri` param):

1. **decide_online**: settle the online comparison when `feedback.online` is on: the
   interleaved `candidate` is promoted when shoppers significantly prefer it, withdrawn
   when they prefer the champion (audit records, `fusion-model status`).
2. **build_judgments**: a new catalog snapshot whose training judgments come from the
   last `days` of clicks, corrected for position bias (position-based click model, EM),
   with minimum evidence per query and pair; val and test keep their hand-made judgments.
3. **validate**: the snapshot through the data-quality checks (a failure stops here).
4. **publish**: the `catalog` asset event names the snapshot (URI + fingerprint), which
   starts `multimodal_retrieval_training` on exactly it.
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
    platform_overrides,
    step_task,
    work_uri,
)


@dag(
    dag_id="search_feedback",
    schedule=cron_schedule("FUSION_FEEDBACK_CRON", "@daily"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["fusion-model", "feedback"],
    doc_md=__doc__,
    default_args=default_args(retries=1),
    params={"catalog_uri": catalog_uri_param("The snapshot whose products, val and test "
                                             "queries the new one keeps"),
            "config_name": config_name_param(),
            "events_uri": Param(None, type=["null", "string"], description="The recorded "
                                "search events (folder or s3:// prefix); empty: the config's "
                                "feedback.events"),
            "days": Param(None, type=["null", "integer"], minimum=1, maximum=3650,
                          description="Clicks of this many days build the judgments; "
                                      "empty: 28"),
            "keep_labels": flag_param("Keep the catalog's own train judgments where the "
                                      "logs say nothing")},
)
def search_feedback():
    @step_task(doc_md="Promote, withdraw or keep the interleaved candidate "
                      "(`feedback.online`; nothing to do when it is off).")
    def decide_online(params=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.decide_online_if_on(params["config_name"], _overrides(params))

    @step_task(doc_md="Judgments from clicks: a new snapshot under the work area.")
    def build_judgments(_online: dict, params=None, run_id=None, data_interval_end=None
                        ) -> dict:
        from fusion_model.pipelines import steps

        since = (data_interval_end or pendulum.now("UTC")).subtract(days=params.get("days") or 28)
        return steps.build_feedback(params["catalog_uri"],
                                    work_uri("feedback", run_id, "catalog"),
                                    params["config_name"], _overrides(params),
                                    since=since.date().isoformat(),
                                    keep_labels=bool(params.get("keep_labels")))

    @step_task(doc_md="The snapshot's data-quality checks; a failure starts no training.")
    def validate(built: dict, run_id=None) -> dict:
        from fusion_model.pipelines import steps

        report = steps.validate(built["catalog_uri"], work_uri("feedback", run_id,
                                                               "validation"),
                                fingerprint=built["catalog_fingerprint"])
        return {**built, "report": report["report"]}

    @step_task(outlets=[CATALOG_ASSET],
               doc_md="The `catalog` asset event names the snapshot: training starts.")
    def publish(built: dict, outlet_events=None) -> dict:
        announce_snapshot(outlet_events, built)
        return built

    publish(validate(build_judgments(decide_online())))


def _overrides(params: dict) -> list[str]:
    events = params.get("events_uri")
    return [*platform_overrides(), *([f"feedback.events={events}"] if events else [])]


search_feedback()
