"""The CLI drives the whole life cycle: lifecycle, search, refresh, rollback."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fusion_model.cli import main
from fusion_model.index.milvus import release_lite

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
    release_lite(str(tmp_path / "milvus.db"))  # this process's server holds the file
    assert_terminal_shows_hits_and_our_logs_only(["search", "red shirt", "-k", "3",
                                                  "--config", "tiny", *overrides,
                                                  "runtime.engine=openvino"])


def assert_terminal_shows_hits_and_our_logs_only(argv: list[str]) -> None:
    """The CLI in a process of its own, as a person runs it: stdout holds the hits, stderr
    our log lines only (no gRPC core lines such as fork_posix, no faiss import errors)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    done = subprocess.run([sys.executable, "-m", "fusion_model.cli", *argv],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert re.match(r"\s*1\. P\d+ ", done.stdout), done.stdout
    ours = re.compile(r"\d{4}-\d\d-\d\d [\d:,]+ (INFO|WARNING) fusion_model\.")
    assert [line for line in done.stderr.splitlines() if not ours.match(line)] == [], \
        done.stderr


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
