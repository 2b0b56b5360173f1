"""Airflow-only glue: connections and variables -> fusion_model config overrides.

No ML logic here. Everything is optional: without connections the platform runs on its
embedded defaults under ``$AIRFLOW_HOME/fusion`` (Milvus Lite file, MLflow on SQLite,
local files).

- connection ``fusion_milvus``   (http): host/port -> index.uri, password -> the token
                                          (``$FUSION_MILVUS_TOKEN``, never a config value)
- connection ``fusion_mlflow``   (http): host/port/schema -> registry.tracking_uri
- connection ``fusion_s3``       (aws):  login/password -> AWS keys, extra
                                          ``endpoint_url`` -> S3-compatible endpoint
- variable   ``fusion_artifact_location``: MLflow artifact root (e.g. s3://bucket/mlflow)
- variable   ``fusion_work_dir``:          the work area: stage handoffs, validation
                                          reports and parts, partition manifests, drift
                                          profiles. A local folder (one host or a shared
                                          volume) or ``s3://bucket/prefix``: tasks on
                                          hosts with separate disks then pull what they
                                          need into ``$FUSION_SCRATCH_DIR`` and upload
                                          what they write
- environment ``FUSION_LOCAL_DIR``:        this worker's own disk (default
                                          ``$AIRFLOW_HOME/fusion``): the feature cache and,
                                          with an S3 work area, its local mirror
                                          (``scratch/``, ``$FUSION_SCRATCH_DIR``)
- environment ``FUSION_CATALOG_URI``:      the catalog scheduled and asset-triggered runs
                                          use (the trigger form's default)
- environment ``FUSION_CONFIG_NAME``:      the packaged config scheduled and asset-triggered
                                          runs use (the trigger form's default; ``default``)
- environment ``FUSION_TRAINING_CRON``,
              ``FUSION_REFRESH_CRON``:     cron schedules of training (default Monday 03:00
                                          UTC) and catalog refresh (default daily);
                                          ``none`` turns the cron schedule off (training
                                          then runs on catalog asset events only)
- environment ``FUSION_TRAINING_QUEUE``:   Celery queue of the two training tasks (e.g.
                                          ``gpu`` workers); unset: the default queue
- environment ``FUSION_RUNTIME_DEVICE``:   the torch device of the tasks this worker runs
                                          (``runtime.device``: ``auto`` on a GPU worker)
- environment ``FUSION_MLFLOW_UI_URL``,
              ``FUSION_REVIEW_URL``:       the MLflow UI and ``fusion-model serve`` as people
                                          reach them, for links (MLflow version <-> Airflow
                                          run, the review page)

The plugin adds two links to the training DAG's tasks ("MLflow model version", "Gate
review in MLflow"); the registered version carries the Airflow DAG id, run id and URL.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _catalog_asset():
    from airflow.sdk import Asset

    return Asset(name="catalog", uri="fusion://catalog/current")


CATALOG_ASSET = _catalog_asset()


def default_catalog_uri() -> str:
    """The deployment's catalog (``$FUSION_CATALOG_URI``); ``demo/catalog`` otherwise."""
    return os.environ.get("FUSION_CATALOG_URI") or "demo/catalog"


def announce_snapshot(outlet_events, refreshed: dict) -> None:
    """Put the snapshot a refresh validated (URI + fingerprint) on the ``catalog`` asset
    event, so the run it triggers trains exactly that snapshot."""
    outlet_events[CATALOG_ASSET].extra = {"catalog_uri": refreshed["catalog_uri"],
                                          "catalog_fingerprint": refreshed["catalog_fingerprint"]}


def catalog_snapshot(catalog_uri: str, triggering_asset_events=None) -> dict:
    """The snapshot a training run trains: the newest ``catalog`` asset event's URI and
    fingerprint when the asset triggered the run, else the run's ``catalog_uri`` (no
    fingerprint: whatever it holds when validated)."""
    events = list(triggering_asset_events.get(CATALOG_ASSET, [])) \
        if triggering_asset_events else []
    extra = dict(events[-1].extra or {}) if events else {}
    if extra.get("catalog_uri"):
        return {"catalog_uri": extra["catalog_uri"],
                "catalog_fingerprint": extra.get("catalog_fingerprint"), "source": "asset event"}
    return {"catalog_uri": catalog_uri, "catalog_fingerprint": None, "source": "run params"}


def catalog_uri_param(description: str):
    """The ``catalog_uri`` trigger-form param every DAG shares, defaulting to the
    deployment's catalog (what scheduled and asset-triggered runs use)."""
    from airflow.sdk import Param

    return Param(default_catalog_uri(), type="string", minLength=1, description=description)


def cron_schedule(variable: str, default: str) -> str | None:
    """A DAG's cron expression from ``$variable`` (``default`` when unset); ``none`` or
    ``off``: no cron schedule. An invalid expression fails the DAG import, naming it."""
    value = (os.environ.get(variable) or default).strip()
    if value.lower() in ("none", "off"):
        return None
    from croniter import croniter

    if not croniter.is_valid(value) and not value.startswith("@"):
        raise ValueError(f"{variable}={value!r} is not a cron expression (e.g. '0 3 * * 1', "
                         "'@daily') nor 'none'")
    return value


def training_task_args() -> dict:
    """Task arguments of the training stages: ``queue`` from ``$FUSION_TRAINING_QUEUE``."""
    queue = os.environ.get("FUSION_TRAINING_QUEUE")
    return {"queue": queue} if queue else {}


def index_shard_task_args() -> dict:
    """Concurrency of the mapped index shards: ``$FUSION_INDEX_SHARD_CONCURRENCY`` (4) at
    once per DAG, in the pool ``$FUSION_INDEX_POOL`` (``default_pool``; create a pool with
    that many slots to share them across DAGs). Read at parse time, from the environment
    only (no metadata-database call while parsing)."""
    raw = os.environ.get("FUSION_INDEX_SHARD_CONCURRENCY", "4").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"FUSION_INDEX_SHARD_CONCURRENCY={raw!r}: expected a whole number "
                         ">= 1")
    return {"max_active_tis_per_dag": int(raw),
            "pool": os.environ.get("FUSION_INDEX_POOL", "default_pool")}


def _connection(conn_id: str):
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - an undefined connection means "use the default"
        return None


def _variable(key: str, default: str | None = None) -> str | None:
    from airflow.sdk import Variable

    try:
        return Variable.get(key)
    except Exception:  # noqa: BLE001 - undefined variable -> default
        return default


def work_uri(*parts: str) -> str:
    """A path in the work area (Variable ``fusion_work_dir``: a folder or ``s3://``)."""
    from fusion_model.storage import join

    return join(_variable("fusion_work_dir") or str(_home_work_dir()), *parts)


def local_work_dir() -> Path:
    """This worker's own folder for what only works on a local disk (the feature cache,
    the embedded Milvus Lite file and MLflow database): the work area when it is local."""
    work = work_uri()
    return _home_work_dir() if work.startswith("s3://") else Path(work)


def _home_work_dir() -> Path:
    """This worker's own disk: ``$FUSION_LOCAL_DIR`` or ``$AIRFLOW_HOME/fusion``."""
    if os.environ.get("FUSION_LOCAL_DIR"):
        return Path(os.environ["FUSION_LOCAL_DIR"])
    home = os.environ.get("AIRFLOW_HOME", str(Path.home() / "airflow"))
    return Path(home) / "fusion"


def run_retention() -> tuple[int, float]:
    """How many of the newest training runs keep their models and checkpoints (Variable
    ``fusion_keep_runs``, 5) and for how many days every run keeps them
    (``fusion_run_retention_days``, 7)."""
    return (_number_variable("fusion_keep_runs", 5, int),
            _number_variable("fusion_run_retention_days", 7.0, float))


def _number_variable(key: str, default, kind):
    value = _variable(key)
    if value is None or not str(value).strip():
        return default
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"Airflow Variable {key}={value!r}: expected a number "
                         f"(default {default})") from None


def platform_overrides() -> list[str]:
    """Config overrides for the deployment this task runs in (call inside a task; S3
    credentials are already exported by ``prepare_task``, every task's pre_execute)."""
    base = local_work_dir()
    overrides = [f"train.cache_dir={base / 'cache'}", f"index.uri={base / 'milvus.db'}"]
    if os.environ.get("FUSION_RUNTIME_DEVICE"):  # this worker's device (a GPU worker: auto)
        overrides.append(f"runtime.device={os.environ['FUSION_RUNTIME_DEVICE']}")
    milvus = _connection("fusion_milvus")
    if milvus is not None and milvus.host:
        overrides.append(f"index.uri=http://{milvus.host}:{milvus.port or 19530}")
    return overrides + _tracking_overrides(base)


def _tracking_overrides(base: Path) -> list[str]:
    """A ``fusion_mlflow`` tracking server (which stores artifacts where it was told to),
    else MLflow on SQLite under the work dir; ``fusion_artifact_location`` wins."""
    mlflow = _connection("fusion_mlflow")
    if mlflow is not None and mlflow.host:
        scheme = mlflow.schema or "http"
        overrides = [f"registry.tracking_uri={scheme}://{mlflow.host}:{mlflow.port or 5000}"]
    else:
        overrides = [f"registry.tracking_uri=sqlite:///{base / 'mlflow.db'}",
                     f"registry.artifact_location={base / 'mlartifacts'}"]
    artifacts = _variable("fusion_artifact_location")
    if artifacts:
        overrides.append(f"registry.artifact_location={artifacts}")
    return overrides


def configure_s3() -> None:
    """Export the ``fusion_s3`` connection as the standard AWS environment for boto3."""
    s3 = _connection("fusion_s3")
    if s3 is None:
        return
    if s3.login:
        os.environ["AWS_ACCESS_KEY_ID"] = s3.login
        os.environ["AWS_SECRET_ACCESS_KEY"] = s3.password or ""
    endpoint = (s3.extra_dejson or {}).get("endpoint_url")
    if endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = endpoint
    region = (s3.extra_dejson or {}).get("region_name")
    if region:
        os.environ["AWS_DEFAULT_REGION"] = region


def packaged_configs() -> list[str]:
    """Names of the configs shipped in ``fusion_model/configs`` (the DAGs' enum)."""
    from importlib.resources import files

    return sorted(p.name.removesuffix(".yaml") for p in files("fusion_model").joinpath(
        "configs").iterdir() if p.name.endswith(".yaml"))


def default_config_name() -> str:
    """The deployment's config (``$FUSION_CONFIG_NAME``) for runs nobody filled a form
    for (scheduled, asset-triggered); ``default`` otherwise. A name that is not packaged
    fails the DAG import, naming the choices."""
    name = os.environ.get("FUSION_CONFIG_NAME") or "default"
    if name not in packaged_configs():
        raise ValueError(f"FUSION_CONFIG_NAME={name!r} is not a packaged config; choose "
                         f"from {', '.join(packaged_configs())}")
    return name


TEST_CONFIGS = frozenset({"tiny"})  # random-weight encoders: for tests, not for people


def offered_configs() -> list[str]:
    """The configs the trigger form offers: the packaged ones but the test-only ``tiny``
    (offered when it is the deployment's own, ``$FUSION_CONFIG_NAME``)."""
    default = default_config_name()
    return [name for name in packaged_configs()
            if name not in TEST_CONFIGS or name == default]


def config_name_param():
    from airflow.sdk import Param

    return Param(default_config_name(), type="string", enum=offered_configs(),
                 description="Packaged config (fusion_model/configs); params left empty "
                 "take their values from it. The deployment's default: $FUSION_CONFIG_NAME")


def config_defaults(key: str) -> str:
    """What each offered config sets for ``key`` (``gate.primary_metric``), for a form
    field's description: ``default: recall@10; fast: recall@10``."""
    from fusion_model.config import load_config

    def shown(value) -> str:
        return ", ".join(value) if isinstance(value, (tuple, list)) else str(value)

    section, field = key.split(".")
    return "; ".join(f"{name}: {shown(getattr(getattr(load_config(name), section), field))}"
                     for name in offered_configs())


def primary_metric_param():
    from airflow.sdk import Param

    metrics = ["recall@10", "recall@100", "ndcg@10", "mrr"]
    return Param(None, type=["null", "string"], enum=[None, *metrics],
                 values_display={None: "the config's", **{m: m for m in metrics}},
                 description="Metric the gate decides on; empty: the config's "
                 f"({config_defaults('gate.primary_metric')})")


def segment_names() -> list[str]:
    """The query segments of every packaged config (``eval.segments``): the choices of
    the ``guarded_segments`` param."""
    from fusion_model.config import load_config

    names = {spec.split("=", 1)[0] for config in packaged_configs()
             for spec in load_config(config).eval.segments}
    return sorted(names)


def guarded_segments_param():
    from airflow.sdk import Param

    names = segment_names()
    return Param(None, type=["null", "array"], items={"type": "string", "enum": names},
                 examples=names, description="Segments whose metric must not drop beyond "
                 f"the tolerance; empty: the config's ({config_defaults('gate.guarded_segments')})")


def flag_param(description: str):
    """An optional on/off field (empty means off)."""
    from airflow.sdk import Param

    return Param(False, type=["boolean", "null"], description=description)


def chosen_overrides(params: dict, keys: dict[str, str]) -> list[str]:
    """``key=value`` for each param (name -> config key) the user set; params left at
    None keep the config's value. Lists become ``[a,b]``."""
    chosen = []
    for name, key in keys.items():
        value = params.get(name)
        if value is None:
            continue
        text = f"[{','.join(map(str, value))}]" if isinstance(value, list) else value
        chosen.append(f"{key}={text}")
    return chosen


def step_task(**task_kwargs):
    """``@task`` for a fusion-model step: a BadInputError (invalid catalog, config, photo,
    a refused refresh) fails the task at once, since a retry cannot fix the input; other
    errors (a server briefly down) keep the DAG's retries."""
    from airflow.sdk import task

    def decorate(function):
        @functools.wraps(function)
        def run(*args, **kwargs):
            from airflow.sdk.exceptions import AirflowFailException

            from fusion_model.errors import BadInputError
            from fusion_model.library_output import quiet_step_output

            try:
                with quiet_step_output():  # MLflow's stderr is not an ERROR line
                    return function(*args, **kwargs)
            except BadInputError as exc:
                raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        return task(**task_kwargs)(run)
    return decorate


def default_args(retries: int = 2) -> dict:
    """Owner, retries, S3 set-up and the failure callback shared by every fusion-model DAG."""
    from datetime import timedelta

    return {"owner": "ml-platform", "retries": retries, "retry_delay": timedelta(minutes=1),
            "on_failure_callback": failure_callback, "pre_execute": prepare_task}


def configure_milvus_token() -> None:
    """Export the ``fusion_milvus`` password as ``$FUSION_MILVUS_TOKEN``: the token is read
    when a Milvus client opens and never travels in config overrides, params or XCom."""
    milvus = _connection("fusion_milvus")
    if milvus is not None and milvus.password:
        os.environ["FUSION_MILVUS_TOKEN"] = milvus.password


def prepare_task(context) -> None:
    """Before every task: S3 credentials from ``fusion_s3`` (so that tasks which take no
    config overrides, validation and reports, read s3:// catalogs too), the Milvus
    token from ``fusion_milvus`` and this worker's scratch folder."""
    configure_s3()
    configure_milvus_token()
    os.environ.setdefault("FUSION_SCRATCH_DIR", str(_home_work_dir() / "scratch"))


def failure_callback(context) -> None:
    """One clear line per failed task: which task, which run, what went wrong."""
    ti = context.get("task_instance")
    error = context.get("exception")
    log.error("fusion-model task failed: dag=%s task=%s run=%s try=%s error=%s: %s",
              getattr(ti, "dag_id", "?"), getattr(ti, "task_id", "?"),
              context.get("run_id"), getattr(ti, "try_number", "?"),
              type(error).__name__ if error else "unknown", error)


TRAINING_DAG = "multimodal_retrieval_training"
VERSION_URL_KEY = "mlflow_version_url"
REVIEW_URL_KEY = "mlflow_review_url"


def run_origin(dag_id: str, run_id: str) -> dict[str, str]:
    """Tags saying which Airflow run made a model: DAG id, run id and the run's URL
    (from ``[api] base_url``, when set)."""
    from urllib.parse import quote

    from airflow.configuration import conf

    origin = {"airflow.dag_id": dag_id, "airflow.run_id": run_id}
    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    if base:
        origin["airflow.url"] = f"{base}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"
    return origin


def push_links(ti, registered: dict) -> None:
    """XComs the training DAG's extra links read: the version page and the run's review
    artifacts (absent when MLflow has no UI, e.g. SQLite)."""
    for key, field in ((VERSION_URL_KEY, "mlflow_url"), (REVIEW_URL_KEY, "mlflow_run_url")):
        if registered.get(field):
            ti.xcom_push(key=key, value=registered[field])


def _link_from_register(ti_key, xcom_key: str) -> str:
    """The URL the run's ``register`` task pushed under ``xcom_key`` ("" when none)."""
    if ti_key.dag_id != TRAINING_DAG:
        return ""
    from airflow.serialization.definitions.operatorlink import XComOperatorLink

    register = ti_key._replace(task_id="register", map_index=-1)
    return XComOperatorLink(name=xcom_key, xcom_key=xcom_key).get_link(None, ti_key=register)


try:
    from airflow.plugins_manager import AirflowPlugin
    from airflow.sdk import BaseOperatorLink

    class MlflowVersionLink(BaseOperatorLink):
        """The registered candidate's page in the MLflow UI."""

        name = "MLflow model version"

        def get_link(self, operator, *, ti_key) -> str:
            return _link_from_register(ti_key, VERSION_URL_KEY)

    class MlflowReviewLink(BaseOperatorLink):
        """The training run's artifacts: gallery, gate decision, segments."""

        name = "Gate review in MLflow"

        def get_link(self, operator, *, ti_key) -> str:
            return _link_from_register(ti_key, REVIEW_URL_KEY)

    class FusionPlatformPlugin(AirflowPlugin):
        name = "fusion_platform"
        global_operator_extra_links = [MlflowVersionLink(), MlflowReviewLink()]
except ImportError:  # imported without Airflow (a library test): no links
    pass
