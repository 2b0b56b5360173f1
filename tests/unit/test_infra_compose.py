"""infra/compose.yaml validated statically (no Docker engine here): the Compose
Specification schema, interpolation against .env.example, healthchecks, secrets only
from .env, and the settings the platform code actually reads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE = INFRA / "compose.yaml"
VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\})")
SECRET_WORDS = ("PASSWORD", "SECRET", "FERNET")
ONE_SHOT = "service_completed_successfully"


def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${X}, ${X:-default}, ${X-default}, ${X:?err}, $$."""
    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group("name", "op", "default")
        value = env.get(name)
        if op in (":-", ":?") and not value or op in ("-", "?") and value is None:
            if op.endswith("?"):
                raise KeyError(f"{name}: {default}")
            return default
        if value is None:
            raise KeyError(f"{name} is used in compose.yaml but not defined in .env.example")
        return value
    return VARIABLE.sub(substitute, text)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    """The file as `docker compose --env-file infra/.env.example config` resolves it."""
    if _compose_cli_works():
        result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "--env-file",
                                 str(INFRA / ".env.example"), "config", "--format", "json"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env_example()))


def _compose_cli_works() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


def compose_schema() -> dict:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def test_raw_and_resolved_files_match_the_compose_specification(raw, compose):
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    for document in (raw, compose):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(document)]
        assert errors == []


def test_the_schema_check_catches_a_broken_file(raw):
    broken = json.loads(json.dumps(raw))
    broken["services"]["redis"]["healthcheck"]["retries"] = "many"
    broken["services"]["mlflow"]["depends_on"] = {"postgres": {"condition": "when-ready"}}
    schema = compose_schema()
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))
    assert len(errors) >= 2


def test_every_variable_comes_from_env_example_and_the_cli_validates_offline():
    names = {m.group("name") for m in VARIABLE.finditer(COMPOSE.read_text()) if m.group("name")}
    assert sorted(names - set(env_example())) == []
    cli = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run([str(cli), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_has_an_image_and_a_healthcheck_or_is_a_one_shot(compose):
    services = compose["services"]
    awaited = {name for spec in services.values()
               for name, dep in (spec.get("depends_on") or {}).items()
               if dep.get("condition") == ONE_SHOT}
    for name, spec in services.items():
        assert spec.get("image") or spec.get("build"), f"{name} has neither image nor build"
        if spec.get("restart") == "no":
            assert name in awaited, f"one-shot {name} is not awaited by any service"
        else:
            assert spec.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency in spec.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown {dependency}"
    assert {"postgres", "redis", "minio", "etcd", "milvus", "mlflow", "airflow-apiserver",
            "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
            "airflow-worker"} <= set(services)


def test_volumes_are_named_and_ports_bind_to_loopback(compose):
    declared = set(compose.get("volumes", {}))
    for name, spec in compose["services"].items():
        for volume in spec.get("volumes", []):
            if isinstance(volume, str) and ":" not in volume:
                continue  # anonymous: the container's own disk
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            kind = volume.get("type") if isinstance(volume, dict) else (
                "bind" if source.startswith((".", "/")) else "volume")
            if kind == "volume":
                assert source in declared, f"{name}: volume {source} is not declared"
            else:
                assert Path(source).name.endswith((".sh", ".yaml")), f"{name}: binds {source}"
        for port in spec.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_no_secret_is_written_into_the_repository(raw):
    text = COMPOSE.read_text()
    for key, value in re.findall(r"^\s*([A-Z_]+):\s*(.+)$", text, flags=re.M):
        if (any(word in key for word in SECRET_WORDS) or key.endswith("_KEY_ID")) \
                and not key.endswith("_FILE"):
            assert value.strip().startswith("${"), f"{key} is not taken from .env"
    for key, value in env_example().items():
        if any(word in key for word in SECRET_WORDS):
            assert value.startswith("change-me"), f".env.example ships a real {key}"
    connections = {k: v for k, v in raw["x-airflow-common"]["environment"].items()
                   if k.startswith("AIRFLOW_CONN_")}
    for key, value in connections.items():
        password = json.loads(value).get("password")
        assert password is None or "${" in password, f"{key} has a literal password"
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=REPO)
    assert ignored.returncode == 0, "infra/.env must be git-ignored"


def platform_settings() -> tuple[set[str], set[str]]:
    """Connection ids and variable keys that plugins/fusion_platform.py reads."""
    source = (REPO / "plugins" / "fusion_platform.py").read_text()
    return (set(re.findall(r'_connection\("(\w+)"\)', source)),
            set(re.findall(r'_variable\("(\w+)"', source)))


def airflow_services(compose) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if n.startswith("airflow-")}


def test_airflow_services_get_every_setting_the_platform_reads(compose):
    connections, variables = platform_settings()
    assert connections == {"fusion_milvus", "fusion_mlflow", "fusion_s3"}
    services = compose["services"]
    for name, spec in airflow_services(compose).items():
        env = spec["environment"]
        for conn_id in connections:
            connection = json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"])
            host = connection.get("host") or connection["extra"]["endpoint_url"]
            assert re.sub(r"^https?://|:\d+$", "", host) in services, (name, conn_id)
        work_bucket = re.match(r"s3://([\w-]+)/", env["AIRFLOW_VAR_FUSION_WORK_DIR"])
        assert work_bucket, f"{name}: the work area must be in S3 (no shared volume)"
        assert work_bucket.group(1) in services["minio-init"]["environment"]["BUCKETS"]
        own_disk = [v for v in spec["volumes"] if isinstance(v, str) and ":" not in v]
        assert env["FUSION_LOCAL_DIR"] in own_disk, f"{name}: no disk of its own"
        assert "fusion_work_dir" in variables
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(
            "postgresql+psycopg2://airflow:")
        assert "@postgres:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == \
            "http://airflow-apiserver:8080/execution/"
        for shared_secret in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
            assert env[shared_secret], f"{name}: {shared_secret} must be shared by all parts"
        assert env["FUSION_CATALOG_URI"].startswith("s3://")


def test_stores_point_at_the_services_and_buckets_that_exist(compose):
    services, env = compose["services"], env_example()
    buckets = services["minio-init"]["environment"]["BUCKETS"].split()
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"])
    assert "--backend-store-uri=postgresql+psycopg2://mlflow:" in command
    artifacts = re.search(r"--artifacts-destination=s3://([\w-]+)/", command).group(1)
    assert artifacts in buckets and mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == \
        "http://minio:9000"
    milvus = services["milvus"]["environment"]
    assert milvus["ETCD_ENDPOINTS"] == "etcd:2379" and milvus["MINIO_ADDRESS"] == "minio:9000"
    assert milvus["MINIO_BUCKET_NAME"] in buckets
    catalog_bucket = re.match(r"s3://([\w-]+)/", services["airflow-worker"]["environment"][
        "FUSION_CATALOG_URI"]).group(1)
    assert catalog_bucket in buckets
    assert env["CATALOG_BUCKET"] == catalog_bucket


def lock_versions(path: Path = REPO / "requirements.lock") -> dict[str, str]:
    return lock_versions_text(path.read_text())


def lock_versions_text(text: str) -> dict[str, str]:
    return dict(line.split("==", 1) for line in text.splitlines()
                if "==" in line and line[0].isalpha())


def test_the_image_lock_is_the_runtime_subset_of_the_tested_lock():
    tested, image = lock_versions(), lock_versions(INFRA / "requirements.lock")
    assert {name: (version, tested.get(name)) for name, version in image.items()
            if tested.get(name) != version} == {}
    assert not {"pytest", "moto", "ruff", "uv", "check-jsonschema"} & set(image)
    assert {"apache-airflow", "apache-airflow-providers-celery", "psycopg2-binary", "mlflow",
            "torch", "pymilvus"} <= set(image)


def dockerfile_copies() -> set[str]:
    """The repository paths infra/Dockerfile and infra/mlflow.Dockerfile COPY."""
    text = "\n".join((INFRA / name).read_text() for name in ("Dockerfile", "mlflow.Dockerfile"))
    sources = re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, flags=re.M)
    return {path for source in sources for path in source.split()}


def test_images_pin_the_versions_the_tests_ran_against():
    lock = lock_versions()
    airflow = (INFRA / "Dockerfile").read_text()
    assert f"ARG AIRFLOW_VERSION={lock['apache-airflow']}" in airflow
    assert "ARG PYTHON_VERSION=3.11" in airflow
    for path in dockerfile_copies():
        assert (REPO / path).exists(), f"Dockerfile copies missing {path}"
    mlflow_image = lock_versions(INFRA / "mlflow.lock")
    assert {"mlflow", "psycopg2-binary", "boto3", "sqlalchemy"} <= set(mlflow_image)
    assert {name: (version, lock.get(name)) for name, version in mlflow_image.items()
            if lock.get(name) != version} == {}, "infra/mlflow.lock strays from the lock"
    assert "-r /opt/mlflow/requirements.lock" in (INFRA / "mlflow.Dockerfile").read_text()


def test_the_build_context_sends_only_what_the_images_copy():
    """The context is the repository root: without .dockerignore it would ship .venv,
    demo data and infra/.env to the Docker daemon."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "**", "exclude everything, then allow what the images copy"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = dockerfile_copies()
    assert copied and copied <= allowed, copied - allowed
    assert not {".venv", "infra/.env", "demo", "runs"} & allowed


@pytest.mark.parametrize("refusals, exit_code", [(1, 0), (30, 1)])
def test_bucket_init_retries_until_minio_answers_then_creates_every_bucket(
        tmp_path, refusals, exit_code):
    """infra/minio/init-buckets.sh with a stand-in `mc` (no MinIO here) that refuses the
    first ``refusals`` logins."""
    log, fake = tmp_path / "mc.log", tmp_path / "bin" / "mc"
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
echo "$*" >> {log}
if [ "$1 $2" = "alias set" ]; then
    count=$(grep -c '^alias set' {log})
    [ "$count" -gt {refusals} ] || exit 1
fi
""")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "MINIO_ROOT_USER": "u",
           "MINIO_ROOT_PASSWORD": "p", "BUCKETS": "catalog artifacts"}
    if refusals >= 30:  # do not sleep 58 s: the same script, with the waits removed
        script = tmp_path / "init.sh"
        script.write_text((INFRA / "minio" / "init-buckets.sh").read_text()
                          .replace("sleep 2", "true"))
    else:
        script = INFRA / "minio" / "init-buckets.sh"
    result = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == exit_code, result.stderr
    calls = log.read_text().splitlines()
    if exit_code == 0:
        assert calls[-2:] == ["mb --ignore-existing local/catalog",
                              "mb --ignore-existing local/artifacts"]
        assert "buckets ready" in result.stdout
    else:
        assert not any(c.startswith("mb") for c in calls)
        assert "refused the credentials 30 times" in result.stderr


def dockerfile_run(pattern: str) -> str:
    """The shell text of the Airflow image's RUN instruction matching ``pattern``."""
    runs = re.findall(r"^RUN ((?:.*\\\n)*.*)$", (INFRA / "Dockerfile").read_text(), flags=re.M)
    found = [run.replace("\\\n", " ") for run in runs if re.search(pattern, run)]
    assert len(found) == 1, (pattern, runs)
    return found[0]


def test_a_gpu_image_installs_torch_from_its_index_then_the_lock_without_it(tmp_path):
    """The lock pins torch's +cpu build, which no CUDA index serves: torch comes from
    TORCH_INDEX_URL alone, then the lock runs with its torch line removed."""
    install = dockerfile_run(r"TORCH_INDEX_URL")
    assert re.search(r'--index-url "\$\{TORCH_INDEX_URL\}" "torch==\$\{TORCH_VERSION\}"',
                     install)
    assert "--extra-index-url" not in install
    torch_version = lock_versions(INFRA / "requirements.lock")["torch"].split("+")[0]
    assert f"ARG TORCH_VERSION={torch_version}" in (INFRA / "Dockerfile").read_text()
    strip = re.search(r"(grep -v \S+) /opt/fusion/requirements.lock", install).group(1)
    stripped = subprocess.run(f"{strip} {INFRA / 'requirements.lock'}", shell=True,
                              capture_output=True, text=True, check=True).stdout
    kept = lock_versions_text(stripped)
    assert "torch" not in kept
    assert kept == {k: v for k, v in lock_versions(INFRA / "requirements.lock").items()
                    if k != "torch"}



def test_no_image_or_install_sends_usage_telemetry():
    """openvino-telemetry reports to Google Analytics from every process importing
    openvino: the locks leave it out and the image installs its lock exactly
    (``--no-deps``, so pip does not pull it back in as openvino's dependency). Both
    images turn MLflow's usage telemetry off."""
    for lock in (REPO / "requirements.lock", INFRA / "requirements.lock"):
        assert "openvino" in lock_versions(lock)
        assert "openvino-telemetry" not in lock_versions(lock), lock
    install = dockerfile_run(r"-r /tmp/without-torch.lock")
    assert re.search(r"pip install [^&]*--no-deps -r /tmp/without-torch.lock", install)
    for image in ("Dockerfile", "mlflow.Dockerfile"):
        assert re.search(r"^ENV MLFLOW_DISABLE_TELEMETRY=true$", (INFRA / image).read_text(),
                         flags=re.M), image

def test_any_airflow_uid_can_write_the_work_dir_and_the_password_file(compose):
    """Compose runs as ${AIRFLOW_UID}:0; the mount points are group-root writable."""
    prepare = dockerfile_run(r"mkdir -p /opt/fusion/work")
    assert "chown -R airflow:0 /opt/fusion /opt/airflow/auth" in prepare
    assert "chmod -R g+rwX /opt/fusion /opt/airflow/auth" in prepare
    for name, spec in airflow_services(compose).items():
        assert spec["user"].endswith(":0"), name
    init = " ".join(compose["services"]["airflow-init"]["command"])
    assert re.search(r"umask 0?0[0-7]7", init), "the group (root) must read the file"


def test_mlflow_accepts_the_host_names_the_deployment_configures():
    env = {**env_example(), "MLFLOW_ALLOWED_HOSTS": "mlflow,search.example.com"}
    mlflow = yaml.safe_load(interpolate(COMPOSE.read_text(), env))["services"]["mlflow"]
    assert "--allowed-hosts=mlflow,search.example.com" in mlflow["command"]
    assert "MLFLOW_ALLOWED_HOSTS" in env_example()


def test_the_milvus_server_matches_the_client_version(compose):
    """pymilvus's compatibility table pairs server and client by major.minor."""
    client = lock_versions(INFRA / "requirements.lock")["pymilvus"]
    image = compose["services"]["milvus"]["image"]
    server = re.search(r":v(\d+\.\d+)\.\d+", image).group(1)
    assert server == ".".join(client.split(".")[:2]), (image, client)


def test_postgres_health_redis_licence_and_startup_order(compose):
    services = compose["services"]
    postgres = services["postgres"]
    health = " ".join(postgres["healthcheck"]["test"])
    assert health.count("pg_isready -h 127.0.0.1") == 2, "over TCP, not the init socket"
    production = (REPO / "tests" / "production" / "conftest.py").read_text()
    connections = re.search(r"max_connections=(\d+)", production).group(1)
    assert postgres["command"] == ["postgres", "-c", f"max_connections={connections}"]
    assert re.match(r"redis:7\.2[.-]", services["redis"]["image"]), "BSD-licensed Redis"
    for name in ("airflow-worker", "airflow-worker-training", "airflow-dag-processor",
                 "airflow-triggerer"):
        assert services[name]["depends_on"]["airflow-apiserver"]["condition"] == \
            "service_healthy", name


def test_the_gpu_worker_reserves_a_gpu_and_runs_a_cuda_torch_image(compose):
    worker = compose["services"]["airflow-worker-gpu"]
    assert worker["profiles"] == ["gpu"] and worker["command"][-4:-2] == ["--queues", "gpu"]
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "/whl/cu" in worker["build"]["args"]["TORCH_INDEX_URL"]
    assert worker["image"] != compose["services"]["airflow-worker"]["image"]
    assert worker["environment"]["FUSION_RUNTIME_DEVICE"] == "auto"


def test_the_training_queue_worker_consumes_only_that_queue(compose):
    worker = compose["services"]["airflow-worker-training"]
    assert worker["profiles"] == ["training-queue"]
    assert worker["command"][-2:] == ["--queues", "training"]


def test_images_record_the_commit_they_were_built_from(compose, monkeypatch):
    from fusion_model.registry import tracking

    args = compose["services"]["airflow-scheduler"]["build"]["args"]
    assert "GIT_COMMIT" in args and "TORCH_INDEX_URL" in args
    assert "ENV FUSION_GIT_COMMIT=${GIT_COMMIT}" in (INFRA / "Dockerfile").read_text()

    def no_git(*args, **kwargs):
        raise OSError("git: not found")

    monkeypatch.setattr(tracking.subprocess, "run", no_git)
    monkeypatch.setenv("FUSION_GIT_COMMIT", "abc123")
    assert tracking.git_commit() == "abc123"
    monkeypatch.delenv("FUSION_GIT_COMMIT")
    assert tracking.git_commit() == "unknown"


def test_the_readme_states_the_memory_the_stack_needs():
    readme = (INFRA / "README.md").read_text()
    assert re.search(r"12.16 GB of RAM", readme)


def test_the_locked_celery_provider_imports_with_the_locked_celery():
    """apache-airflow-providers-celery 3.26 imports celery.backends.database.retry, which
    celery 5.7 removed: with both in the lock no Celery worker could start."""
    from airflow.providers.celery.executors import celery_executor_utils

    assert callable(celery_executor_utils.execute_workload)


def test_the_search_service_serves_the_champion_of_this_stack(compose):
    search = compose["services"]["search"]
    command = " ".join(search["command"])
    assert search["entrypoint"] == ["fusion-model"] and command.startswith("serve ")
    assert "--host=0.0.0.0" in command and "index.uri=http://milvus:19530" in command
    assert "registry.tracking_uri=http://mlflow:5000" in command
    assert search["image"] == compose["services"]["airflow-worker"]["image"]
    env = search["environment"]
    assert env["FUSION_SERVE_TOKEN"] == env_example()["SEARCH_API_SECRET"]
    assert env["AWS_ENDPOINT_URL_S3"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert {"mlflow", "milvus"} <= set(search["depends_on"])
    port = search["ports"][0]  # "127.0.0.1:8000:8000", or the CLI's resolved mapping
    published = port if isinstance(port, str) else \
        f"{port['host_ip']}:{port['published']}:{port['target']}"
    assert published == "127.0.0.1:8000:8000"
    links = compose["services"]["airflow-worker"]["environment"]
    assert links["FUSION_REVIEW_URL"] == "http://localhost:8000"
    assert links["FUSION_MLFLOW_UI_URL"] == "http://localhost:5000"
