"""
### Data quality

On demand: validate a catalog snapshot (Great Expectations suites, image integrity, drift)
and publish the report (JSON + Data Docs) to MLflow under the `data-quality` experiment.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag
from fusion_platform import (
    catalog_uri_param,
    config_name_param,
    default_args,
    flag_param,
    platform_overrides,
    step_task,
    work_uri,
)


@dag(
    dag_id="data_quality",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["fusion-model", "data-quality"],
    doc_md=__doc__,
    default_args=default_args(retries=1),
    params={"catalog_uri": catalog_uri_param("Catalog directory or s3:// prefix"),
            "config_name": config_name_param(),
            "update_profile": flag_param("Store as the last good profile if it passes")},
)
def data_quality():
    @step_task(doc_md="Run every check; never raises, so the report is always published.")
    def validate(params=None, run_id=None) -> dict:
        from fusion_model.pipelines import steps

        profile = work_uri("profiles", "catalog.json") \
            if params.get("update_profile") else None
        return steps.validate_report(params["catalog_uri"],
                                     work_uri("quality", run_id), profile)

    @step_task(doc_md="Log the report and Data Docs to MLflow; fail the run if checks failed.")
    def publish(report: dict, params=None) -> dict:
        from fusion_model.pipelines import steps

        return steps.publish_report(report, params["catalog_uri"], params["config_name"],
                                    platform_overrides())

    publish(validate())


data_quality()
