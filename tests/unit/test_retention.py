"""Old training runs give their checkpoints and model copies back to the disk."""

from __future__ import annotations

import os
import time

import pytest

from fusion_model.pipelines.retention import prune_runs

DAY = 86400


def make_run(root, name: str, days_ago: float) -> None:
    """A run folder as the training DAG leaves it, last written ``days_ago``."""
    run = root / name
    files = {"stage1/checkpoints/stage1.pt": 300, "stage1/model/model.pt": 200,
             "stage1/result.json": 10, "stage2/checkpoints/stage2.pt": 300,
             "stage2/model/model.pt": 200, "stage2/result.json": 10,
             "validation/validation.json": 10}
    when = time.time() - days_ago * DAY
    for relative, size in files.items():
        path = run / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, (when, when))


def bulky_left(run) -> bool:
    return any((run / part).exists() for part in ("stage1/checkpoints", "stage1/model",
                                                   "stage2/checkpoints", "stage2/model"))


def test_old_runs_lose_models_and_checkpoints_but_keep_results(tmp_path):
    for i, days in enumerate([30, 20, 10, 9, 8, 3, 1]):
        make_run(tmp_path, f"run{i}", days)
    outcome = prune_runs(tmp_path, current="run6", keep=3, older_than_days=7)
    # the 3 newest (run6, run5, run4) are kept; of the rest, all are older than 7 days
    assert sorted(outcome["pruned"]) == ["run0", "run1", "run2", "run3"]
    assert outcome["kept"] == 3
    assert outcome["freed_mb"] == pytest.approx(4 * 1000 / 2**20, abs=0.1)
    for i in range(7):
        run = tmp_path / f"run{i}"
        assert bulky_left(run) == (i >= 4)
        assert (run / "stage2" / "result.json").is_file()
        assert (run / "validation" / "validation.json").is_file()
    again = prune_runs(tmp_path, current="run6", keep=3, older_than_days=7)
    assert again["freed_mb"] == 0  # pruned runs keep their age: nothing new to remove


def test_recent_runs_and_the_current_one_are_never_pruned(tmp_path):
    make_run(tmp_path, "training_now", 30)  # started long ago, still this run
    make_run(tmp_path, "yesterday", 1)
    make_run(tmp_path, "last_month", 30)
    outcome = prune_runs(tmp_path, current="training_now", keep=0, older_than_days=7)
    assert outcome["pruned"] == ["last_month"]
    assert bulky_left(tmp_path / "training_now") and bulky_left(tmp_path / "yesterday")


def test_missing_root_and_bad_settings(tmp_path):
    assert prune_runs(tmp_path / "none")["pruned"] == []
    with pytest.raises(ValueError, match="must not be negative"):
        prune_runs(tmp_path, keep=-1)


def test_runs_in_an_s3_work_area_are_pruned_there_and_in_this_host_mirror(
        s3_bucket, tmp_path, monkeypatch):
    from fusion_model.storage import workarea

    monkeypatch.setenv(workarea.SCRATCH_ENV, str(tmp_path / "scratch"))
    runs = f"s3://{s3_bucket}/work/runs"
    for run in ("old_run", "this_run"):
        with workarea.staged(f"{runs}/{run}") as local:
            for folder in ("stage1/model", "stage2/checkpoints"):
                (local / folder).mkdir(parents=True)
                (local / folder / "weights.pt").write_bytes(b"w" * 2**20)
            (local / "result.json").write_text("{}")
    outcome = prune_runs(runs, current="this_run", keep=0, older_than_days=1,
                         now=time.time() + 3 * 86400)
    assert outcome["pruned"] == ["old_run"] and outcome["freed_mb"] == 2.0
    import boto3

    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket=s3_bucket, Prefix="work/runs")["Contents"]}
    assert keys == {"work/runs/old_run/result.json", "work/runs/this_run/result.json",
                    "work/runs/this_run/stage1/model/weights.pt",
                    "work/runs/this_run/stage2/checkpoints/weights.pt"}
    mirror = workarea.local_path(f"{runs}/old_run")
    assert (mirror / "result.json").is_file() and not (mirror / "stage1" / "model").exists()
