"""The UI trigger path for real: `airflow standalone` on 127.0.0.1, a DAG run triggered
with params through the REST API v2 (as the trigger form does), polled to success."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.airflow_api import AirflowApi, airflow_environment
from tests.conftest import free_port, http_ok, stop_process_tree, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture()
def standalone(tmp_path):
    port = free_port()
    home = tmp_path / "airflow"
    home.mkdir()
    env = airflow_environment(dict(os.environ), home, port, tmp_path / "work")
    env["FUSION_CONFIG_NAME"] = "tiny"  # the form offers tiny only to a tiny deployment
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


def test_trigger_training_dag_through_the_rest_api(standalone, synthetic_catalog):
    base, home, tmp_path = standalone
    api = AirflowApi(base, home)
    api.wait_until_parsed(180)
    extra = [f"train.cache_dir={tmp_path / 'cache'}"]
    conf = {"catalog_uri": str(synthetic_catalog), "config_name": "tiny",
            "epochs_stage1": 1, "epochs_stage2": 1, "shards": 1, "force_promote": True,
            "extra_overrides": extra}
    tasks = api.wait(api.trigger(conf), 900)
    assert {t for t, instances in tasks.items()
            if all(i["state"] == "success" for i in instances)} >= {
        "validate", "train_stage1", "train_stage2", "register", "index_shard", "gate",
        "promote_or_reject"}
