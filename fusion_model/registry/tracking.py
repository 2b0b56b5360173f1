"""MLflow tracking of a training run: params, per-epoch metrics, plots, tables, encoders."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from fusion_model.config import RunConfig
from fusion_model.data.catalog import Catalog
from fusion_model.registry.connection import configure, probe_server

if TYPE_CHECKING:  # a type only: serving imports this package, never training
    from fusion_model.training.trainer import TrainResult

log = logging.getLogger(__name__)
__all__ = ["configure", "probe_server"]  # re-exported from registry.connection


def experiment_id(name: str, artifact_location: str | None = None) -> str:
    import mlflow

    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        if EXPERIMENT_KIND_TAG not in existing.tags:
            mlflow.MlflowClient().set_experiment_tag(existing.experiment_id,
                                                     EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return existing.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location,
                                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


# MLflow 3 opens an experiment without this tag in its GenAI view (traces, an assistant
# panel); ours holds trained models, metrics and artifacts
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def metric_key(name: str) -> str:
    """MLflow metric names allow no '@': recall@10 -> recall_at_10."""
    return name.replace("@", "_at_")


def log_metrics(values: dict[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics({metric_key(k): float(v) for k, v in values.items()}, step=step)


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


def git_commit() -> str:
    """The source checkout's commit; in an image without .git, the ``FUSION_GIT_COMMIT``
    it was built with (infra/Dockerfile's GIT_COMMIT); else "unknown"."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("FUSION_GIT_COMMIT") or "unknown"


def tag_run(run_id: str, tags: dict[str, str]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def log_training_run(result: TrainResult, config: RunConfig, catalog: Catalog,
                     experiment: str, validation_report: str | None = None,
                     artifact_location: str | None = None) -> tuple[str, dict[str, str]]:
    """One MLflow run with everything a reviewer needs; returns (run_id, encoder URIs)."""
    import mlflow
    import yaml

    from fusion_model.registry.pyfunc import log_encoders

    with mlflow.start_run(experiment_id=experiment_id(experiment, artifact_location),
                          run_name=f"{config.name}-{config.model.fusion}") as run:
        mlflow.log_params(flatten(config.to_dict()))
        mlflow.set_tags({"catalog_uri": catalog.uri, "catalog_fingerprint": catalog.fingerprint,
                         "config_hash": config.hash, "git_commit": git_commit(),
                         "fusion": config.model.fusion})
        for record in result.history:
            step = record["epoch"]
            log_metrics({f"{record['stage']}/{k}": v for k, v in record.items()
                         if k not in ("stage", "epoch")}, step=step)
        log_metrics({f"test/{k}": v for k, v in result.test.metrics.items()})
        log_metrics(confidence_bounds("test", result.test))
        log_metrics({f"val/{k}": v for k, v in result.val.metrics.items()})
        for segment, values in result.test.segments.items():
            log_metrics({f"test_segment/{segment}/{k}": v for k, v in values.items()
                         if "@" in k or k == "mrr"})
        log_metrics({f"seconds/{k}": v for k, v in result.seconds.items()})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
            (folder / "history.json").write_text(json.dumps(result.history, indent=2))
            write_segment_table(result, folder)
            write_curves(result.history, folder, config.eval.ks)
            mlflow.log_artifacts(str(folder), artifact_path="review")
        if validation_report:
            report = Path(validation_report)
            mlflow.log_artifacts(str(report.parent if report.is_file() else report),
                                 artifact_path="validation")
        uris = log_encoders(result.model_dir, _embedding_dim(result.model_dir))
    log.info("logged run %s with encoders %s", run.info.run_id, uris)
    return run.info.run_id, uris


def confidence_bounds(split: str, evaluation) -> dict[str, float]:
    """95% bootstrap bounds over queries of each headline metric, beside its value:
    ``test/ndcg@10_ci95_low`` and ``_high``."""
    bounds = {}
    for metric in SEGMENT_METRICS:
        if metric in evaluation.metrics and evaluation.per_query:
            interval = evaluation.ci95(metric)
            bounds[f"{split}/{metric}_ci95_low"] = interval["low"]
            bounds[f"{split}/{metric}_ci95_high"] = interval["high"]
    return bounds


def _embedding_dim(model_dir: str) -> int:
    import yaml

    from fusion_model.config import from_dict
    from fusion_model.models.towers import CONFIG_FILE, embedding_dim_of

    return embedding_dim_of(from_dict(yaml.safe_load(
        (Path(model_dir) / CONFIG_FILE).read_text())))


SEGMENT_METRICS = ("recall@10", "recall@100", "ndcg@10", "mrr")


def segment_table(result, baseline=None):
    """One row per segment ("all" first): query count and metrics; with a ``baseline``
    EvaluationResult also its metrics and the difference (``metric vs baseline``)."""
    import pandas as pd

    def rows_of(evaluation) -> dict[str, dict]:
        rows = {"all": {**evaluation.metrics, "queries": len(evaluation.per_query)}}
        return rows | {name: values for name, values in evaluation.segments.items()}

    ours, theirs = rows_of(result), rows_of(baseline) if baseline is not None else {}
    table = []
    for segment, values in ours.items():
        row = {"segment": segment, "queries": int(values.get("queries", 0))}
        for metric in SEGMENT_METRICS:
            if metric not in values:
                continue
            row[metric] = values[metric]
            if baseline is not None:
                other = theirs.get(segment, {}).get(metric)
                row[f"{metric} baseline"] = other
                row[f"{metric} vs baseline"] = None if other is None else values[metric] - other
        table.append(row)
    return pd.DataFrame(table)


def segment_html(table) -> str:
    """The segment table as HTML: counts as integers, metrics to 4 places, gains signed."""
    def number(spec: str):
        return lambda v: "-" if v is None or v != v else format(v, spec)

    formatters = {column: number("+.4f" if column.endswith("vs baseline") else ".4f")
                  for column in table.columns if column not in ("segment", "queries")}
    return table.to_html(index=False, formatters=formatters, na_rep="-")


def write_segment_table(result: TrainResult, folder: Path) -> None:
    table = segment_table(result.test)
    table.to_csv(folder / "segments.csv", index=False)
    (folder / "segments.html").write_text(segment_html(table))


def write_curves(history: list[dict], folder: Path, ks: tuple[int, ...]) -> None:
    """loss_curve.png and recall_curve.png (val Recall@K per epoch, both stages in a row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    steps = list(range(1, len(history) + 1))
    labels = [f"{h['stage'][-1]}.{h['epoch']}" for h in history]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(steps, [h["loss"] for h in history], marker="o")
    axis.set(xlabel="stage.epoch", ylabel="train loss (InfoNCE)", title="Training loss")
    axis.set_xticks(steps, labels)
    figure.tight_layout()
    figure.savefig(folder / "loss_curve.png", dpi=100)
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for k in ks:
        values = [h.get(f"val_recall@{k}") for h in history]
        if all(v is not None for v in values):
            axis.plot(steps, values, marker="o", label=f"Recall@{k}")
    axis.set(xlabel="stage.epoch", ylabel="validation", title="Validation Recall@K")
    axis.set_xticks(steps, labels)
    axis.legend()
    figure.tight_layout()
    figure.savefig(folder / "recall_curve.png", dpi=100)
    plt.close(figure)
