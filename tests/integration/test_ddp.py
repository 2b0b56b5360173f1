"""The training recipe under torchrun with two gloo processes equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_model.models.tiny import save_tiny_bert

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def run_training(command: list[str], out: Path, overrides: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, "train", "--catalog", str(out.parent / "catalog"),
                    "--out", str(out), "--output", str(out / "metrics.json"), "--config", "tiny",
                    *overrides],
                   check=True, env=env, capture_output=True, text=True, timeout=600)
    return json.loads((out / "metrics.json").read_text())


def test_two_processes_train_the_same_model_as_one(synthetic_catalog, tmp_path):
    os.symlink(synthetic_catalog, tmp_path / "catalog")
    bert = save_tiny_bert(tmp_path / "bert-no-dropout", dropout=0.0)
    overrides = [f"train.cache_dir={tmp_path / 'cache'}", f"text.model={bert}",
                 "model.dropout=0.0", "model.modality_dropout=0.0",
                 "train.stage1.epochs=2", "train.stage2.epochs=2",
                 "train.stage1.patience=5", "train.stage2.patience=5"]
    single = run_training([sys.executable, "-m", "fusion_model.cli"], tmp_path / "one",
                          overrides)
    torchrun = Path(sys.executable).with_name("torchrun")
    double = run_training([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m",
                           "fusion_model.cli"], tmp_path / "two", overrides)
    manifest = json.loads((tmp_path / "two" / "model" / "manifest.json").read_text())
    assert manifest["processes"] == 2
    losses_one = [h["loss"] for h in single["history"]]
    losses_two = [h["loss"] for h in double["history"]]
    assert len(losses_one) == len(losses_two) == 4
    assert losses_two == pytest.approx(losses_one, rel=1e-3)
    assert double["test"]["ndcg@10"] == pytest.approx(single["test"]["ndcg@10"], abs=1e-3)
