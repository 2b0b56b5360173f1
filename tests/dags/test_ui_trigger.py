"""The UI trigger path for real: `airflow standalone` on 127.0.0.1, a DAG run triggered
with params through the REST API v2 (as the trigger form does), polled to success."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port, http_ok, stop_process_tree, tiny_overrides, wait_for
from tests.dags.conftest import REPO

pytestmark = pytest.mark.integration
DAG_ID = "multimodal_retrieval_training"


@pytest.fixture()
def standalone(tmp_path):
    port = free_port()
    home = tmp_path / "airflow"
    home.mkdir()
    bin_dir = str(Path(sys.executable).parent)  # standalone starts its parts as `airflow ...`
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
           "AIRFLOW_HOME": str(home),
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__PARALLELISM": "2",
           "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
           "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
           # Only the test's trigger: cron runs of the defaults would compete for SQLite.
           "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
           "AIRFLOW_VAR_FUSION_WORK_DIR": str(tmp_path / "work")}
    log = (tmp_path / "standalone.log").open("w")
    process = subprocess.Popen([str(Path(sys.executable).with_name("airflow")), "standalone"],
                               env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{base}/api/v2/version"), 240, "the API server")
        yield base, home, tmp_path
    finally:
        stop_process_tree(process)
        log.close()


def test_trigger_training_dag_through_the_rest_api(standalone, synthetic_catalog,
                                                   tiny_models):
    base, home, tmp_path = standalone
    password_file = home / "simple_auth_manager_passwords.json.generated"
    passwords = wait_for(lambda: password_file.exists() and json.loads(
        password_file.read_text()), 60, "the generated admin password")
    user, password = next(iter(passwords.items()))
    token = requests.post(f"{base}/auth/token", json={"username": user, "password": password},
                          timeout=10).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    wait_for(lambda: requests.get(f"{base}/api/v2/dags/{DAG_ID}", headers=headers,
                                  timeout=10).status_code == 200, 180, "the DAG to be parsed")
    extra = [o for o in tiny_overrides(tiny_models, tmp_path / "cache")
             if not o.startswith(("train.stage1.epochs", "train.stage2.epochs"))]
    conf = {"catalog_uri": str(synthetic_catalog), "config_name": "default",
            "epochs_stage1": 1, "epochs_stage2": 1, "shards": 1, "force_promote": True,
            "extra_overrides": extra}
    response = requests.post(f"{base}/api/v2/dags/{DAG_ID}/dagRuns", headers=headers,
                             json={"logical_date": None, "conf": conf}, timeout=30)
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    def finished():
        state = requests.get(f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}",
                             headers=headers, timeout=10).json()["state"]
        return state if state in ("success", "failed") else None

    assert wait_for(finished, 900, "the DAG run", every=5) == "success"
    tasks = requests.get(f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances",
                         headers=headers, timeout=10).json()["task_instances"]
    assert {t["task_id"] for t in tasks if t["state"] == "success"} >= {
        "validate", "train_stage1", "train_stage2", "register", "index_shard", "gate",
        "promote_or_reject"}
