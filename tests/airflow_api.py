"""Airflow 3 on 127.0.0.1 for tests: the environment every test instance shares, and the
REST API v2 as the UI's trigger form uses it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import requests

from tests.conftest import REPO, wait_for

TRAINING_DAG = "multimodal_retrieval_training"


def airflow_environment(base: dict, home: Path, port: int, work_dir: Path | str
                        ) -> dict[str, str]:
    """``base`` plus this repository's DAGs and plugin, an API server on 127.0.0.1:port,
    parallelism 2, and no cron runs of the defaults (only the test's own triggers)."""
    bin_dir = Path(sys.executable).parent  # `airflow standalone` starts `airflow ...` parts
    return {**base, "PATH": f"{bin_dir}:{base.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW_VAR_FUSION_WORK_DIR": str(work_dir)}


class AirflowApi:
    """The REST API v2 with a bearer token for the auth manager's generated admin."""

    def __init__(self, base: str, home: Path):
        passwords_file = home / "simple_auth_manager_passwords.json.generated"
        passwords = wait_for(lambda: passwords_file.exists() and json.loads(
            passwords_file.read_text()), 60, "the generated admin password")
        token = requests.post(f"{base}/auth/token", json={
            "username": "admin", "password": passwords["admin"]}, timeout=30).json()
        self.base = f"{base}/api/v2"
        self.headers = {"Authorization": f"Bearer {token['access_token']}"}

    def get(self, path: str) -> dict:
        response = requests.get(f"{self.base}{path}", headers=self.headers, timeout=30)
        response.raise_for_status()
        return response.json()

    def wait_until_parsed(self, timeout: float, logs: tuple = (), dag_id: str = TRAINING_DAG):
        def parsed() -> bool:
            try:
                self.get(f"/dags/{dag_id}")
                return True
            except requests.HTTPError:
                return False

        wait_for(parsed, timeout, f"DAG {dag_id} to be parsed", logs=logs)

    def trigger(self, conf: dict, dag_id: str = TRAINING_DAG) -> str:
        response = requests.post(f"{self.base}/dags/{dag_id}/dagRuns", headers=self.headers,
                                 json={"logical_date": None, "conf": conf}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["dag_run_id"]

    def wait(self, run_id: str, timeout: float, logs: tuple = (),
             dag_id: str = TRAINING_DAG) -> dict[str, list[dict]]:
        """Poll the run to its end; assert success; its task instances by task id."""
        def finished():
            state = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            return state if state in ("success", "failed") else None

        state = wait_for(finished, timeout, f"DAG run {run_id}", every=3, logs=logs)
        tasks: dict[str, list[dict]] = {}
        for ti in self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]:
            tasks.setdefault(ti["task_id"], []).append(ti)
        assert state == "success", {t: [i["state"] for i in v] for t, v in tasks.items()}
        return tasks
