"""The newcomer's first hour, in headless Chromium, on the three UIs the demo links:
``airflow standalone`` trains and promotes a model with the links set as ``make demo``
sets them (``demo/env.sh``), ``mlflow server`` and the search service run beside it. From
the service page (what the demo prints first) every link is followed: the MLflow version,
the gate's review, the Airflow run, and back from the version's description and the
Airflow task's extra links to the service page and the MLflow version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.airflow_api import AirflowApi, airflow_environment
from tests.browser import Browser
from tests.conftest import Uvicorn, free_port, http_ok, stop_process_tree, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

DAG = "multimodal_retrieval_training"
BIN = Path(sys.executable).parent


@pytest.fixture()
def mlflow_ui(tmp_path):
    """``mlflow server`` on SQLite with proxied local artifacts: the UI the demo starts."""
    port, root = free_port(), tmp_path / "mlflow"
    root.mkdir()
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{uri}/health"), 180, "mlflow server",
                 logs=(root / "server.log",))
        yield uri
    finally:
        stop_process_tree(process)
        log.close()


@pytest.fixture()
def linked_airflow(tmp_path, mlflow_ui):
    """``airflow standalone`` with the variables ``demo/env.sh`` exports."""
    port, service_port = free_port(), free_port()
    home = tmp_path / "airflow"
    home.mkdir()
    base = f"http://127.0.0.1:{port}"
    links = {"MLFLOW_TRACKING_URI": mlflow_ui, "AIRFLOW_CONN_FUSION_MLFLOW": mlflow_ui,
             "FUSION_MLFLOW_UI_URL": mlflow_ui,
             "AIRFLOW__API__BASE_URL": base,
             "FUSION_REVIEW_URL": f"http://127.0.0.1:{service_port}",
             "FUSION_CONFIG_NAME": "tiny"}
    env = {**airflow_environment(dict(os.environ), home, port, tmp_path / "work"), **links}
    log = (tmp_path / "standalone.log").open("w")
    process = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: http_ok(f"{base}/api/v2/version"), 240, "the API server",
                 logs=(tmp_path / "standalone.log",))
        yield {"base": base, "home": home, "links": links, "service_port": service_port,
               "log": tmp_path / "standalone.log"}
    finally:
        stop_process_tree(process)
        log.close()


def test_the_newcomer_follows_every_link_between_the_three_uis(
        linked_airflow, synthetic_catalog, tmp_path, monkeypatch):
    from fusion_model.config import load_config
    from fusion_model.serving.app import create_app
    from fusion_model.serving.searcher import ChampionSearcher

    airflow = AirflowApi(linked_airflow["base"], linked_airflow["home"])
    airflow.wait_until_parsed(180, logs=(linked_airflow["log"],))
    overrides = [f"train.cache_dir={tmp_path / 'cache'}", f"index.uri={tmp_path / 'milvus.db'}"]
    run_id = airflow.trigger({
        "catalog_uri": str(synthetic_catalog), "config_name": "tiny", "epochs_stage1": 1,
        "epochs_stage2": 1, "shards": 1, "force_promote": True, "extra_overrides": overrides})
    airflow.wait(run_id, 900, logs=(linked_airflow["log"],))
    task_links = airflow.get(
        f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/register/links")["extra_links"]

    for name, value in linked_airflow["links"].items():
        monkeypatch.setenv(name, value)
    config = load_config("tiny", overrides)
    with ChampionSearcher.open(config) as searcher, \
            Uvicorn(create_app(searcher, follow_interval=0),
                    linked_airflow["service_port"]) as service:
        browser = Browser(tmp_path / "chromium")
        try:
            seen = walk(browser, service, linked_airflow["base"], airflow, run_id)
        finally:
            browser.close()
        statuses = {url: httpx.get(url, timeout=30).status_code for url in [
            *seen["service_links"].values(), *seen["description_links"]]}

    links = seen["service_links"]
    assert set(links) == {"MLflow", "gate review", "Airflow run"}, links
    assert links["MLflow"].endswith("/#/models/fusion_products/versions/1")
    assert links["Airflow run"] == f"{linked_airflow['base']}/dags/{DAG}/runs/" + quote(
        run_id, safe="")
    assert task_links["MLflow model version"] == links["MLflow"], task_links
    assert task_links["Gate review in MLflow"] == links["gate review"], task_links
    assert set(statuses.values()) == {200}, statuses  # every link resolves
    assert "Version 1" in seen["mlflow_page"]
    assert links["Airflow run"] in seen["description_links"], seen["description_links"]
    review = next(u for u in seen["description_links"] if u.startswith(service))
    assert review == f"{service}/?left=champion&right=1", seen["description_links"]
    assert "review/gallery.html" in seen["gate_page"] and "queries.json" in seen["gate_page"]
    assert quote(run_id, safe="") in seen["airflow_page"], seen["airflow_page"][-300:]
    assert seen["back"].startswith("champion v1"), seen["back"]


def walk(browser: Browser, service: str, airflow_base: str, airflow: AirflowApi,
         run_id: str) -> dict:
    """Service page -> its links (MLflow version, gate review, Airflow run) -> the review
    link in the version's description -> the service page again."""
    browser.goto(service + "/")
    browser.wait_until("document.querySelectorAll('#meta a').length", "the version links")
    service_links = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#meta a')]"
        ".map(a => [a.textContent, a.href]))")

    browser.goto(service_links["MLflow"])
    browser.wait_until("document.body.innerText.includes('Version 1') && "
                       "document.querySelector('a[href*=\"left=champion\"]')",
                       "the MLflow version page and its description", timeout=120)
    mlflow_page = browser.evaluate("document.body.innerText")
    description_links = browser.evaluate(
        "[...document.querySelectorAll('a')].map(a => a.href)"
        ".filter(h => h.includes('/dags/') || h.includes('left=champion'))")

    browser.goto(service_links["gate review"])
    browser.wait_until("document.body.innerText.includes('review')", "the run's artifacts",
                       timeout=120)
    click_text(browser, "review")  # the artifact tree's folder
    browser.wait_until("document.body.innerText.includes('gate_decision.json')",
                       "the gate's review folder")
    click_text(browser, "gallery.html")
    browser.wait_until("document.querySelector('iframe')", "the gallery's preview")
    gate_page = browser.evaluate("document.body.innerText")

    cookie = airflow.headers["Authorization"].removeprefix("Bearer ")
    browser.call("Network.setCookie", name="_token", value=cookie, url=airflow_base)
    browser.goto(service_links["Airflow run"])
    browser.wait_until("(t => t.includes('multimodal_retrieval_training') && "
                       "t.toLowerCase().includes('success') && !t.includes('nav.home'))"
                       "(document.body.innerText)",
                       "the Airflow run page, translated, with its state", timeout=120)
    airflow_page = browser.evaluate("document.body.innerText + '\\n' + location.href")

    review = next(u for u in description_links if u.startswith(service))
    browser.goto(review)
    browser.wait_until("document.getElementById('meta').textContent.includes('champion v1')",
                       "the service page from the version's review link")
    back = browser.evaluate("document.getElementById('meta').textContent")
    return {"service_links": service_links, "mlflow_page": mlflow_page,
            "description_links": description_links, "gate_page": gate_page,
            "airflow_page": airflow_page, "back": back}


def click_text(browser: Browser, text: str) -> None:
    """Click the innermost element whose text is exactly ``text``."""
    browser.evaluate("(() => { const all = [...document.querySelectorAll('*')].filter("
                     f"e => e.textContent.trim() === {text!r}); all[all.length - 1].click()"
                     "})()")
