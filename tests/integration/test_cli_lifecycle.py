"""The CLI drives the whole life cycle: lifecycle, search, refresh, rollback."""

from __future__ import annotations

import re

import pytest

from fusion_model.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_lifecycle_search_refresh_rollback(synthetic_catalog, tmp_path, capsys):
    overrides = [f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
                 "train.stage2.epochs=1", f"index.uri={tmp_path / 'milvus.db'}",
                 f"registry.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                 f"registry.artifact_location={tmp_path / 'artifacts'}"]
    for seed in range(2):  # another seed: another model (the same one is not re-registered)
        assert main(["lifecycle", "--catalog", str(synthetic_catalog), "--work-dir",
                     str(tmp_path / "run"), "--force-promote", "--config", "tiny", *overrides,
                     f"train.seed={seed}"]) == 0
    out = capsys.readouterr().out
    assert "version 1: PROMOTE" in out and "version 2: PROMOTE" in out
    assert "serving alias -> products_m2_" in out
    assert main(["search", "red striped shirt", "-k", "3", "--filter", 'category == "shirt"',
                 "--config", "tiny", *overrides]) == 0
    lines = capsys.readouterr().out.strip().splitlines()  # two lines per hit
    assert len(lines) == 6 and all(re.match(r"\s*\d\. P\d+ ", line) for line in lines[::2])
    assert all("category=shirt" in line for line in lines[1::2])
    assert main(["refresh", "--catalog", str(synthetic_catalog), "--config", "tiny",
                 *overrides]) == 0
    assert "0 embedded, 0 deleted, 300 unchanged" in capsys.readouterr().out
    assert main(["rollback", "1", "--reason", "test", "--config", "tiny", *overrides]) == 0
    assert "champion -> version 1; serving alias -> products_m1_" in capsys.readouterr().out


def test_register_is_idempotent_when_a_task_is_retried(synthetic_catalog,
                                                       tmp_path):
    from fusion_model.pipelines import steps

    overrides = [f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
                 "train.stage2.epochs=1",
                 f"registry.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                 f"registry.artifact_location={tmp_path / 'artifacts'}"]
    steps.train(str(synthetic_catalog), str(tmp_path / "work"), "tiny", overrides)
    first = steps.register(str(tmp_path / "work"), str(synthetic_catalog), "tiny", overrides)
    again = steps.register(str(tmp_path / "work"), str(synthetic_catalog), "tiny", overrides)
    assert again == first and first["version"] == "1"
