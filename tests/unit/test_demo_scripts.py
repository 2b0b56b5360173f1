"""The UI scripts ``make demo`` writes (``scripts/demo_uis.sh``): each starts its real
program with the shared settings of ``demo/env.sh``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    demo = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "ROOT": str(REPO), "DEMO": str(demo),
           "BIN": str(Path(sys.executable).parent),
           "AIRFLOW_HOME": str(demo / "airflow"), "FUSION": str(demo / "airflow" / "fusion"),
           "SERVE_PORT": "8091", "MLFLOW_PORT": "5001", "AIRFLOW_PORT": "8081",
           "AIRFLOW__API__BASE_URL": "http://127.0.0.1:8081",
           "FUSION_MLFLOW_UI_URL": "http://127.0.0.1:5001",
           "FUSION_REVIEW_URL": "http://127.0.0.1:8091"}
    subprocess.run(["bash", "-c", 'set -euo pipefail; OVERRIDES=("index.uri=$FUSION/m.db" '
                    '"train.cache_dir=$FUSION/cache"); source scripts/demo_uis.sh'],
                   cwd=REPO, env=env, check=True, timeout=60)
    return demo


def run_script(path: Path, *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("AIRFLOW", "FUSION_", "MLFLOW"))}
    return subprocess.run(["bash", str(path), *args], env={**clean, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=180)


def test_env_sh_links_the_three_uis_and_schedules_nothing(demo):
    shown = run_script(demo / "env.sh")
    assert shown.returncode == 0, shown.stderr
    probe = demo / "probe.sh"
    probe.write_text(f'source "{demo}/env.sh"\necho "$AIRFLOW__API__BASE_URL '
                     '$FUSION_MLFLOW_UI_URL $FUSION_REVIEW_URL $AIRFLOW__API__HOST '
                     '$FUSION_TRAINING_CRON $AIRFLOW_HOME"\ncommand -v fusion-model\n')
    out = run_script(probe).stdout.split()
    assert out[:6] == ["http://127.0.0.1:8081", "http://127.0.0.1:5001",
                       "http://127.0.0.1:8091", "127.0.0.1", "none",
                       str(demo / "airflow")]
    assert out[6] == str(Path(sys.executable).parent / "fusion-model")  # venv on PATH


@pytest.mark.parametrize("name, usage", [
    ("serve", "usage: fusion-model serve"),
    ("mlflow-ui", "Usage: mlflow ui"),
    ("airflow-ui", "Usage: airflow standalone"),
])
def test_each_ui_script_starts_its_program(demo, name, usage):
    """``--help`` passed on: the script's command line reaches the real program."""
    started = run_script(demo / f"{name}.sh", "--help")
    assert started.returncode == 0, started.stderr[-2000:]
    assert usage in started.stdout, started.stdout[:500]
