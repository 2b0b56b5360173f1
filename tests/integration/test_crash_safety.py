"""Promotion, rollback and refresh killed at every write (real MLflow on SQLite, real
Milvus Lite): afterwards search answers from one consistent model, or ``status`` names
the problem with its repair command, and ``recover`` (or the next mutating command)
completes it without a duplicate audit record. Two runs at once get a named error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from fusion_model import faults
from fusion_model.cli import main
from fusion_model.config import load_config
from fusion_model.data.catalog import load_catalog, write_catalog
from fusion_model.errors import ServingMismatchError
from fusion_model.index.milvus import release_lite
from fusion_model.pipelines import steps, switch
from fusion_model.registry import registry
from fusion_model.serving.searcher import ChampionSearcher
from tests.conftest import champion_and_challenger

pytestmark = pytest.mark.integration

SWITCH_POINTS = ["switch.intent", "switch.alias", "switch.champion", "alias.champion.query",
                 "switch.describe", "switch.challenger",
                 "switch.audit", "switch.clear"]
REFRESH_POINTS = ["refresh.create", "refresh.copy", "refresh.write", "switch.intent",
                  "switch.alias", "switch.tags", "switch.champion", "alias.champion.query",
                  "switch.audit", "switch.clear"]


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> dict:
    """v1 promoted, v2 registered and indexed."""
    made = champion_and_challenger(tmp_path_factory.mktemp("crash"), products=120,
                                   queries=30, seed=3, challenger_seed=4)
    # refreshes add collections; keep v1's so that every test can roll back to it
    overrides = [*made["overrides"], "index.keep_collections=20"]
    return {**made, "overrides": overrides, "argv": ["--config", "tiny", *overrides],
            "config": load_config("tiny", overrides)}


def served_version(platform) -> str:
    """The version search answers from, checked consistent (strict: raises otherwise)."""
    with ChampionSearcher.open(platform["config"]) as searcher:
        result = searcher.search("red shirt", k=3)
        assert result.collection == searcher.index.resolve_alias("products_serving")
        return result.version


def platform_state(platform) -> dict:
    """Collections, serving alias, champion and versions, and the audit: what a refused
    run must leave as it was."""
    found = steps.status("tiny", platform["overrides"])
    versions = mlflow.MlflowClient().search_model_versions("name = 'fusion_products'")
    return {"collections": found["collections"], "serving": found["serving"],
            "champion": found["aliases"]["champion"].version,
            "versions": sorted(v.version for v in versions),
            "audit": audit_records(platform)}


def audit_records(platform) -> int:
    experiment = mlflow.get_experiment_by_name("fusion-model-promotion-audit")
    return len(mlflow.search_runs([experiment.experiment_id]))


def consistent_or_named(platform, capsys) -> None:
    """Right after a crash: search answers consistently, or status exits 1 naming a
    repair command."""
    try:
        served_version(platform)
        return
    except ServingMismatchError as error:
        assert "fusion-model recover" in str(error) or "fusion-model rollback" in str(error)
    capsys.readouterr()
    assert main(["status", *platform["argv"]]) == 1
    assert "PROBLEM" in capsys.readouterr().out


def test_the_kill_points_cover_every_write_of_a_switch(platform):
    steps.rollback(platform["v2"], "tiny", platform["overrides"])
    with faults.recording() as seen:
        steps.rollback("1", "tiny", platform["overrides"])
    assert seen == [p for p in SWITCH_POINTS  # v1 was never the challenger
                    if p not in ("switch.tags", "switch.describe", "switch.challenger")]
    with faults.recording() as again:  # already served: nothing to write
        steps.rollback("1", "tiny", platform["overrides"])
    assert again == []


@pytest.mark.parametrize("point", SWITCH_POINTS)
def test_a_promotion_killed_at_each_write_is_recovered(point, platform, capsys):
    steps.rollback("1", "tiny", platform["overrides"])
    challenger, _ = registry.candidate_for("fusion_products", platform["v2"])
    registry.unmark_champion(challenger)  # v2 is the fresh challenger again
    before = audit_records(platform)
    decision = {"decision": "promote", "reasons": ["test"], "metrics": {}, "baseline": "x"}
    with faults.crash_at(point), pytest.raises(faults.Crash):
        steps.promote_or_reject(platform["v2"], decision, "tiny", platform["overrides"])
    consistent_or_named(platform, capsys)
    assert main(["recover", *platform["argv"]]) == 0
    expected = "1" if point == "switch.intent" else platform["v2"]
    assert served_version(platform) == expected
    capsys.readouterr()
    assert main(["status", *platform["argv"]]) == 0, capsys.readouterr().out
    assert audit_records(platform) == before + (expected != "1")  # never twice
    promoted = expected != "1"
    assert (registry.get_alias("fusion_products", "challenger") is None) == promoted
    description = mlflow.MlflowClient().get_model_version("fusion_products",
                                                          platform["v2"]).description
    assert description.startswith("**Champion**") == promoted


def test_the_next_mutating_command_finishes_an_interrupted_promotion(platform, capsys):
    """The issue's case: killed between the serving alias and the champion alias; a rerun
    finishes it first instead of rejecting against a stale champion."""
    steps.rollback("1", "tiny", platform["overrides"])
    decision = {"decision": "promote", "reasons": ["test"], "metrics": {}, "baseline": "x"}
    with faults.crash_at("switch.champion"), pytest.raises(faults.Crash):
        steps.promote_or_reject(platform["v2"], decision, "tiny", platform["overrides"])
    with pytest.raises(ServingMismatchError, match="fusion-model recover"):
        served_version(platform)
    assert main(["search", "red shirt", *platform["argv"]]) == 2
    assert "fusion-model recover" in capsys.readouterr().err
    gate = steps.gate(platform["v2"], platform["catalog"], "tiny", platform["overrides"])
    assert gate["baseline"] == "zero_shot_text"  # v2 is already the champion, finished
    assert served_version(platform) == platform["v2"]


def snapshot(platform, tmp_path: Path, title: str) -> str:
    catalog = load_catalog(platform["catalog"])
    products = catalog.products.copy()
    products.loc[0, "title"] = title
    out = tmp_path / "snapshot"
    shutil.copytree(Path(platform["catalog"]) / "images", out / "images")
    write_catalog(str(out), products, catalog.queries, catalog.judgments)
    return str(out)


@pytest.mark.parametrize("point", REFRESH_POINTS)
def test_a_refresh_killed_at_each_write_is_recovered(point, platform, tmp_path, capsys):
    steps.rollback("1", "tiny", platform["overrides"])
    serving_before = steps.status("tiny", platform["overrides"])["serving"]
    new = snapshot(platform, tmp_path, f"Renamed at {point}")
    with faults.crash_at(point), pytest.raises(faults.Crash):
        steps.refresh(new, "tiny", platform["overrides"], validated=True)
    consistent_or_named(platform, capsys)
    assert main(["recover", *platform["argv"]]) == 0
    assert served_version(platform) == "1"
    found = steps.status("tiny", platform["overrides"])
    assert not found["problems"], found["problems"]
    if point.startswith("refresh.") or point == "switch.intent":  # nothing switched yet
        assert found["serving"] == serving_before
        result = steps.refresh(new, "tiny", platform["overrides"], validated=True)  # resumes
        assert result["collection"] == steps.status("tiny", platform["overrides"])["serving"]
    else:  # the intent was written: the new snapshot is served, recorded on v1
        assert found["serving"] != serving_before
        tags = registry.version_tags(registry.get_alias("fusion_products", "champion"))
        assert tags["milvus_collection"] == found["serving"]


def test_a_real_kill_mid_rollback_is_named_and_recovered(platform, capsys):
    """The process is killed for real (``os._exit`` at the point, no cleanup)."""
    steps.rollback(platform["v2"], "tiny", platform["overrides"])
    release_lite(str(platform["root"] / "milvus.db"))  # this process's server holds the file
    command = [str(Path(sys.executable).with_name("fusion-model")), "rollback", "1",
               *platform["argv"]]
    killed = subprocess.run(command, env={**os.environ, faults.CRASH_ENV: "alias.champion.query"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr[-2000:]
    capsys.readouterr()
    assert main(["status", *platform["argv"]]) == 1
    assert "fusion-model recover" in capsys.readouterr().out
    assert main(["recover", *platform["argv"]]) == 0
    assert served_version(platform) == "1"


def test_a_second_run_on_the_same_registry_gets_a_named_error(platform, capsys):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from fusion_model.config import load_config
        from fusion_model.pipelines.switch import registry_lock
        with registry_lock(load_config("tiny", {platform['overrides']!r})):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    before = platform_state(platform)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        code = main(["lifecycle", "--catalog", platform["catalog"], "--work-dir",
                     str(platform["root"] / "busy"), *platform["argv"]])
        err = capsys.readouterr().err
        assert code == 2 and "is busy" in err and f"pid {holder.pid}" in err, err
        assert "Traceback" not in err
        assert platform_state(platform) == before  # nothing trained, registered or moved
        assert not (platform["root"] / "busy").exists()
    finally:
        holder.kill()
        holder.wait()
    with switch.registry_lock(platform["config"]):  # released with its process
        pass


def test_registered_encoders_hold_no_pickle_and_tampered_artifacts_run_nothing(platform,
                                                                               tmp_path):
    """A registry artifact edited to run code (a pickle, the carried package code) is
    never executed by the platform: weights load as tensors with the installed code."""
    import pickle

    artifacts = Path(platform["root"]) / "artifacts"
    assert not list(artifacts.rglob("python_model.pkl"))
    assert list(artifacts.rglob("query_encoder.py"))  # models-from-code
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for mlmodel in artifacts.rglob("MLmodel"):
        (mlmodel.parent / "python_model.pkl").write_bytes(pickle.dumps(Payload()))
        for init in (mlmodel.parent / "code").rglob("__init__.py"):
            init.write_text(f"import os\nos.system('touch {marker}')\n")
    steps.rollback(platform["v2"], "tiny", platform["overrides"])
    assert served_version(platform) == platform["v2"]
    assert steps.load_registered_model("fusion_products", "1").embedding_dim > 0
    assert not marker.exists()


def test_a_promotion_retried_after_its_switch_finished_is_recorded_once(platform):
    """An Airflow retry of the promote task killed after its last write but before the
    intent was cleared: the retry finishes the switch and records nothing twice."""
    steps.rollback("1", "tiny", platform["overrides"])
    before = audit_records(platform)
    decision = {"decision": "promote", "reasons": ["test"], "metrics": {}, "baseline": "x"}
    with faults.crash_at("switch.clear"), pytest.raises(faults.Crash):
        steps.promote_or_reject(platform["v2"], decision, "tiny", platform["overrides"])
    steps.promote_or_reject(platform["v2"], decision, "tiny", platform["overrides"])
    assert served_version(platform) == platform["v2"]
    assert audit_records(platform) == before + 1
    assert not steps.status("tiny", platform["overrides"])["problems"]


def test_a_promotion_that_mlflow_refuses_leaves_the_challenger_as_it_was(platform,
                                                                         monkeypatch):
    """The audit write fails after the challenger was marked champion: the undo gives the
    candidate back its challenger alias and description."""
    steps.rollback("1", "tiny", platform["overrides"])
    challenger, _ = registry.candidate_for("fusion_products", platform["v2"])
    registry.unmark_champion(challenger)
    client = mlflow.MlflowClient()
    description = client.get_model_version("fusion_products", platform["v2"]).description

    def refused(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(registry, "record_decision", refused)
    decision = {"decision": "promote", "reasons": ["test"], "metrics": {}, "baseline": "x"}
    with pytest.raises(switch.ServingSwitchError, match="restored to"):
        steps.promote_or_reject(platform["v2"], decision, "tiny", platform["overrides"])
    assert served_version(platform) == "1"
    assert registry.get_alias("fusion_products", "challenger").version == platform["v2"]
    assert registry.get_alias("fusion_products_query", "challenger") is not None
    assert client.get_model_version("fusion_products", platform["v2"]).description \
        == description
