"""DagBag integrity: imports, parse time, defaults, docs, schedules and task graphs."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

from tests.dags.conftest import REPO

DAG_FILES = sorted((REPO / "dags").glob("*.py"))
EXPECTED = {
    "multimodal_retrieval_training": {
        "snapshot": ["validate_part", "validate", "train_stage1", "train_stage2", "register",
                     "plan_index", "gate"],
        "validation_parts": ["validate_part"], "validate_part": ["validate"],
        "validate": ["train_stage1", "register"], "train_stage1": ["train_stage2"],
        "train_stage2": ["evaluate", "register"], "evaluate": ["register"],
        "register": ["plan_index", "gate", "promote_or_reject"],
        "plan_index": ["index_shard", "verify_index"], "index_shard": ["verify_index"],
        "verify_index": ["gate"], "gate": ["promote_or_reject"], "promote_or_reject": [],
        "tidy_runs": []},
    "catalog_refresh": {"validation_parts": ["validate_part"], "validate_part": ["validate"],
                        "validate": ["plan_refresh"],
                        "plan_refresh": ["refresh_shard", "refresh"],
                        "refresh_shard": ["refresh"], "refresh": []},
    "data_quality": {"validate": ["publish"], "publish": []},
    "search_feedback": {"decide_online": ["build_judgments"], "build_judgments": ["validate"],
                        "validate": ["publish"], "publish": []},
}


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(EXPECTED)


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_each_file_parses_in_under_two_seconds(airflow_home, path: Path):
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=str(path))
    assert time.perf_counter() - started < 2.0
    assert not bag.import_errors and len(bag.dags) == 1


def test_dag_files_import_no_heavy_modules_at_top_level():
    for path in DAG_FILES:
        head = path.read_text().split("@dag(")[0]
        for heavy in ("torch", "mlflow", "pymilvus", "great_expectations", "fusion_model"):
            assert f"import {heavy}" not in head and f"from {heavy}" not in head, path


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_owners_retries_tags_docs_and_callbacks(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert "fusion-model" in dag.tags and dag.doc_md and not dag.catchup
    for task in dag.tasks:
        assert task.owner == "ml-platform" and task.retries >= 1
        assert task.doc_md, f"{dag_id}.{task.task_id} has no doc_md"
        assert task.on_failure_callback


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_task_graph(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    graph = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert graph == {k: sorted(v) for k, v in EXPECTED[dag_id].items()}


def test_schedules(dagbag):
    training = dagbag.dags["multimodal_retrieval_training"]
    assert "0 3 * * 1" in repr(training.timetable)
    assert "fusion://catalog/current" in repr(training.timetable)
    assert "0 0 * * *" in repr(dagbag.dags["catalog_refresh"].timetable)
    assert type(dagbag.dags["data_quality"].timetable).__name__ == "NullTimetable"
    assert "0 0 * * *" in repr(dagbag.dags["search_feedback"].timetable)
    assert "fusion://catalog/current" in repr(dagbag.dags["search_feedback"].tasks[-1].outlets)


def test_trigger_form_params_are_described_and_validated(dagbag):
    params = dagbag.dags["multimodal_retrieval_training"].params
    for name in ("catalog_uri", "config_name", "epochs_stage1", "epochs_stage2",
                 "primary_metric", "min_improvement", "guarded_segments", "force_promote",
                 "shards"):
        assert params.get_param(name).description, name
    assert params["force_promote"] is False
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        params.get_param("epochs_stage1").resolve(-1)
    with pytest.raises(ParamValidationError):
        params.get_param("primary_metric").resolve("accuracy")


@pytest.mark.parametrize("dag_id", ["multimodal_retrieval_training", "catalog_refresh",
                                    "data_quality", "search_feedback"])
def test_only_the_catalog_and_config_are_required_in_the_trigger_form(dagbag, dag_id):
    """The form marks a field required when its type does not allow null."""
    params = dagbag.dags[dag_id].params
    for name in params:
        kinds = params.get_param(name).schema["type"]
        required = "null" not in (kinds if isinstance(kinds, list) else [kinds])
        assert required == (name in ("catalog_uri", "config_name")), name


def test_guarded_segments_offer_the_configs_segment_names(dagbag):
    from airflow.sdk.exceptions import ParamValidationError
    from fusion_platform import segment_names

    param = dagbag.dags["multimodal_retrieval_training"].params.get_param("guarded_segments")
    assert {"visual_query", "text_only_attribute"} <= set(segment_names())
    assert param.schema["items"]["enum"] == param.schema["examples"] == segment_names()
    assert copy.deepcopy(param).resolve(["visual_query"]) == ["visual_query"]
    with pytest.raises(ParamValidationError):
        copy.deepcopy(param).resolve(["visual_querry"])  # resolve() keeps the value


def test_form_params_override_only_what_the_user_set(dagbag):
    """Empty fields keep the chosen config's values (fast: 2 + 4 epochs), and the config
    enum of every DAG is the list of packaged configs."""
    import importlib.util

    from fusion_platform import packaged_configs

    from fusion_model.config import load_config

    training = dagbag.dags["multimodal_retrieval_training"]
    form = dict(training.params)
    spec = importlib.util.spec_from_file_location("training_dag", training.fileloc)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    deployment = set(module.platform_overrides())
    assert [o for o in module._overrides(form) if o not in deployment] == []
    form.update(epochs_stage1=0, guarded_segments=["visual_query"])
    assert [o for o in module._overrides(form) if o not in deployment] == [
        "train.stage1.epochs=0", "gate.guarded_segments=[visual_query]"]
    assert {"default", "fast"} <= set(packaged_configs())
    for dag_id in ("multimodal_retrieval_training", "catalog_refresh", "data_quality",
                   "search_feedback"):
        offered = dagbag.dags[dag_id].params.get_param("config_name").schema["enum"]
        assert offered == [c for c in packaged_configs() if c != "tiny"]  # random weights
    metric = training.params.get_param("primary_metric")
    assert metric.schema["values_display"][None] == "the config's"  # not a literal "null"
    assert f"default: {load_config('default').gate.primary_metric}" in metric.description
    segments = training.params.get_param("guarded_segments").description
    assert "default: visual_query, text_only_attribute" in segments


def test_deployment_environment_sets_catalog_default_and_training_queue(airflow_home,
                                                                         monkeypatch):
    """FUSION_CATALOG_URI becomes the trigger form's default (what scheduled and asset
    runs use); FUSION_TRAINING_QUEUE routes only the two training stages."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("FUSION_CATALOG_URI", "s3://shop/catalogs/current")
    monkeypatch.setenv("FUSION_TRAINING_QUEUE", "gpu")
    bag = DagBag(dag_folder=str(REPO / "dags" / "multimodal_retrieval_training.py"))
    dag = bag.dags["multimodal_retrieval_training"]
    assert dag.params["catalog_uri"] == "s3://shop/catalogs/current"
    queues = {t.task_id: t.queue for t in dag.tasks}
    assert queues.pop("train_stage1") == queues.pop("train_stage2") == "gpu"
    assert "gpu" not in queues.values()


def test_cron_schedules_can_be_turned_off_leaving_the_asset_trigger(airflow_home,
                                                                    monkeypatch):
    """FUSION_TRAINING_CRON=none: training runs on catalog asset events only;
    FUSION_REFRESH_CRON=none: the refresh runs when triggered."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("FUSION_TRAINING_CRON", "none")
    monkeypatch.setenv("FUSION_REFRESH_CRON", "none")
    monkeypatch.setenv("FUSION_FEEDBACK_CRON", "none")
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert type(bag.dags["search_feedback"].timetable).__name__ == "NullTimetable"
    training = bag.dags["multimodal_retrieval_training"]
    assert not hasattr(training.timetable, "timetable"), "no cron part"
    assert type(bag.dags["catalog_refresh"].timetable).__name__ == "NullTimetable"
    monkeypatch.setenv("FUSION_TRAINING_CRON", "15 4 * * *")
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.dags["multimodal_retrieval_training"].timetable.timetable.expression == "15 4 * * *"
