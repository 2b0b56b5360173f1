"""The pipeline's tasks on hosts that share no disk: every handoff (validation parts and
report, stage 1 -> stage 2 -> register, the partition manifest -> index shards) goes
through an S3 work area, and each host works in its own scratch folder and feature cache."""

from __future__ import annotations

import boto3
import pytest

from fusion_model.pipelines import steps
from fusion_model.storage import workarea
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration


def test_tasks_on_separate_disks_hand_work_over_through_s3(tmp_path, s3_bucket, monkeypatch):
    from fusion_model.data.synthetic import generate_synthetic_catalog

    catalog = generate_synthetic_catalog(str(tmp_path / "catalog"), n_products=120,
                                         n_queries=50, seed=5, progress=False)
    work = f"s3://{s3_bucket}/work"
    run = f"{work}/runs/r1"

    def on_host(name: str) -> list[str]:
        """This host's scratch folder and feature cache; the services are shared."""
        monkeypatch.setenv(workarea.SCRATCH_ENV, str(tmp_path / name / "scratch"))
        return [*tiny_overrides(tmp_path), f"train.cache_dir={tmp_path / name / 'cache'}"]

    on_host("a")
    steps.validate_part(catalog, f"{run}/validation", 0, 2)
    on_host("b")
    steps.validate_part(catalog, f"{run}/validation", 1, 2)
    on_host("c")
    report = steps.validate(catalog, f"{run}/validation", f"{work}/profiles/catalog.json",
                            parts=2)
    assert report["success"] and report["report"].startswith(f"{run}/validation/")

    features = f"{work}/features"
    stage1 = steps.train_stage1(catalog, run, "tiny", on_host("a"), features_uri=features)
    assert stage1["model_dir"] == f"{run}/stage1/model"
    trained = steps.train_stage2(catalog, run, stage1["model_dir"], "tiny", on_host("b"),
                                 features_uri=features)
    assert trained["work_dir"] == f"{run}/stage2"
    assert not (tmp_path / "a" / "scratch" / "s3" / s3_bucket / "work/runs/r1/stage2").exists()

    overrides = on_host("c")
    assert steps.evaluate(trained["work_dir"])["test"] == trained["test"]
    registered = steps.register(trained["work_dir"], catalog, "tiny", overrides,
                                validation_report=report["report"])
    jobs = steps.plan_index(registered["version"], catalog, 2, "tiny", overrides,
                            work_uri=work)
    assert all(job["partition"].startswith(f"{work}/partitions/") for job in jobs)
    written = [steps.index_shard(**job, config_name="tiny", overrides=on_host(f"shard{k}"))
               ["written"] for k, job in enumerate(jobs)]
    assert sum(written) == 120
    verified = steps.verify_index(registered["version"], catalog, jobs[0]["collection"],
                                  "tiny", on_host("c"))
    assert verified["count"] == 120 and verified["verified"]

    keys = {o["Key"] for page in boto3.client("s3").get_paginator("list_objects_v2")
            .paginate(Bucket=s3_bucket, Prefix="work/") for o in page.get("Contents", [])}
    for expected in ("work/runs/r1/validation/parts/products-00000-of-00002.json",
                     "work/runs/r1/stage1/model/model.pt", "work/runs/r1/stage2/result.json",
                     "work/profiles/catalog.json"):
        assert expected in keys
    assert any(k.startswith("work/features/text/") for k in keys)
    assert any(k.startswith("work/features/image/") for k in keys)

    # a training worker on a new host starts from the work area's features: none computed
    from fusion_model import engines

    monkeypatch.setattr(engines, "text_bottom", lambda *a, **k: pytest.fail(
        "a text feature was computed again on a new host"))
    steps.train_stage1(catalog, f"{work}/runs/r2", "tiny", on_host("d"), features_uri=features)
    assert any((tmp_path / "d" / "cache" / "text").rglob("*"))
