"""Registry operations: candidate versions, aliases, lineage tags, promotion audit, rollback.

Each candidate is two registered models kept in lock step: ``<name>`` (product encoder,
what the index is built with) and ``<name>_query`` (query encoder). Aliases
``challenger`` and ``champion`` (not the deprecated stages) move on both together.
Every gate decision is written as tags on the version and as one run of the
``<name>-promotion-audit`` experiment, so "which version was champion on date X and
why" has an answer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fusion_model import storage
from fusion_model.errors import UnknownVersionError
from fusion_model.faults import checkpoint

if TYPE_CHECKING:
    from fusion_model.config import RegistryConfig

log = logging.getLogger(__name__)

CHALLENGER, CHAMPION = "challenger", "champion"
CANDIDATE = "candidate"   # passed the offline gate; interleaved with the champion online


@dataclass(frozen=True)
class Candidate:
    name: str
    version: str
    query_version: str


def _client():
    import mlflow

    return mlflow.MlflowClient()


PENDING_SWITCH_TAG = "fusion.pending_switch"  # the intent of an unfinished switch


def pending_switch(name: str) -> dict | None:
    """The intent of a switch of ``name`` that has not finished (see pipelines.switch)."""
    from mlflow.exceptions import MlflowException

    try:
        text = _client().get_registered_model(name).tags.get(PENDING_SWITCH_TAG)
    except MlflowException:
        return None
    return json.loads(text) if text else None


def record_pending_switch(name: str, text: str) -> None:
    """Write the intent of a switch of ``name`` (JSON) before its first write."""
    _client().set_registered_model_tag(name, PENDING_SWITCH_TAG, text)


def clear_pending_switch(name: str) -> None:
    """Remove the intent once the switch is complete (or undone)."""
    _client().delete_registered_model_tag(name, PENDING_SWITCH_TAG)


def query_model_name(name: str) -> str:
    return f"{name}_query"


def register_candidate(name: str, encoder_uris: dict[str, str], lineage: dict[str, str]
                       ) -> Candidate:
    """Register both encoders, tag lineage, and point ``challenger`` at them."""
    import mlflow

    product = mlflow.register_model(encoder_uris["product_encoder"], name)
    query = mlflow.register_model(encoder_uris["query_encoder"], query_model_name(name))
    candidate = Candidate(name, str(product.version), str(query.version))
    tag_version(candidate, {**lineage, "query_model_version": candidate.query_version,
                            "product_model_version": candidate.version})
    set_alias(candidate, CHALLENGER)
    log.info("registered %s version %s as challenger", name, candidate.version)
    return candidate


def tag_version(candidate: Candidate, tags: dict[str, object]) -> None:
    client = _client()
    for key, value in tags.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        client.set_model_version_tag(candidate.name, candidate.version, key, text)
        client.set_model_version_tag(query_model_name(candidate.name),
                                     candidate.query_version, key, text)


def describe_version(candidate: Candidate, text: str) -> None:
    """The description MLflow shows on both encoders' version pages (Markdown)."""
    client = _client()
    client.update_model_version(candidate.name, candidate.version, description=text)
    client.update_model_version(query_model_name(candidate.name), candidate.query_version,
                                description=text)


CANDIDATE_LINE = "registered as `challenger`."
PROMOTED_PREFIX = "**Champion**"


def mark_champion(candidate: Candidate) -> bool:
    """After ``candidate`` became the champion: its description says so (not "registered as
    `challenger`") and ``challenger`` leaves it (on both encoders). Idempotent; True when
    something was written."""
    client = _client()
    wrote = False
    description = client.get_model_version(candidate.name, candidate.version).description
    if description and CANDIDATE_LINE in description.split("\n", 1)[0]:
        checkpoint("switch.describe")
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        first, _, rest = description.partition("\n")
        promoted = (f"{PROMOTED_PREFIX} since {when} (v{candidate.version} was registered as "
                    "the challenger and promoted).")
        describe_version(candidate, promoted + ("\n" + rest if rest else ""))
        wrote = True
    challenger = get_alias(candidate.name, CHALLENGER)
    if challenger is not None and challenger.version == candidate.version:
        checkpoint("switch.challenger")
        _delete_alias(candidate.name, CHALLENGER)
        _delete_alias(query_model_name(candidate.name), CHALLENGER)
        log.info("%s v%s is the champion: the challenger alias is removed",
                 candidate.name, candidate.version)
        wrote = True
    online = get_alias(candidate.name, CANDIDATE)
    if online is not None and online.version == candidate.version:
        remove_alias(candidate, CANDIDATE)  # its online comparison is over
        wrote = True
    return wrote


def unmark_champion(candidate: Candidate) -> None:
    """Undo ``mark_champion`` after a switch that was taken back."""
    client = _client()
    description = client.get_model_version(candidate.name, candidate.version).description
    if description and description.startswith(PROMOTED_PREFIX):
        _, _, rest = description.partition("\n")
        describe_version(candidate, f"Candidate v{candidate.version}, {CANDIDATE_LINE}"
                         + ("\n" + rest if rest else ""))
    set_alias(candidate, CHALLENGER)


def remove_alias(candidate: Candidate, alias: str) -> None:
    """``alias`` off both encoders (nothing when it is not set)."""
    _delete_alias(candidate.name, alias)
    _delete_alias(query_model_name(candidate.name), alias)


def _delete_alias(name: str, alias: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        _client().delete_registered_model_alias(name, alias)
    except MlflowException as exc:
        if not _is_not_found(exc):
            raise


def _ui_base() -> str | None:
    """The MLflow UI: ``$FUSION_MLFLOW_UI_URL`` (the address people use), else the tracking
    server's; None for a file or database store (no UI)."""
    import os

    import mlflow

    base = os.environ.get("FUSION_MLFLOW_UI_URL") or mlflow.get_tracking_uri()
    return base.rstrip("/") if base.startswith(("http://", "https://")) else None


def version_url(name: str, version: str) -> str | None:
    """The version's page in the MLflow UI (None without a UI)."""
    base = _ui_base()
    return f"{base}/#/models/{name}/versions/{version}" if base else None


def run_artifacts_url(run_id: str) -> str | None:
    """The run's artifacts page in the MLflow UI (None without a UI)."""
    base = _ui_base()
    if not base:
        return None
    experiment = _client().get_run(run_id).info.experiment_id
    return f"{base}/#/experiments/{experiment}/runs/{run_id}/artifacts"


def set_alias(candidate: Candidate, alias: str) -> None:
    """``alias`` on both encoders (product, then query)."""
    client = _client()
    client.set_registered_model_alias(candidate.name, alias, candidate.version)
    checkpoint(f"alias.{alias}.query")
    client.set_registered_model_alias(query_model_name(candidate.name), alias,
                                      candidate.query_version)


def get_alias(name: str, alias: str) -> Candidate | None:
    """The version behind ``alias``, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _is_not_found(exc):
            return None
        raise
    return Candidate(name, str(version.version), version.tags.get("query_model_version",
                                                                  str(version.version)))


def _is_not_found(exc: Exception) -> bool:
    """MLflow's answer for a missing model, version or alias (not a broken connection)."""
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and (
        "not found" in str(exc) or "does not exist" in str(exc))


def version_tags(candidate: Candidate) -> dict[str, str]:
    """The version's tags; UnknownVersionError when the registry has no such version."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(_client().get_model_version(candidate.name, candidate.version).tags)
    except MlflowException as exc:
        if _is_not_found(exc):
            raise UnknownVersionError(candidate.name, candidate.version,
                                      _known_versions(candidate.name)) from exc
        raise


def _known_versions(name: str) -> list[str]:
    from mlflow.exceptions import MlflowException

    try:
        found = _client().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    return sorted((str(v.version) for v in found), key=int)


def candidate_for(name: str, version: str) -> tuple[Candidate, dict[str, str]]:
    """The registered pair behind product-encoder ``version``, and that version's tags."""
    tags = version_tags(Candidate(name, version, version))
    return Candidate(name, version, tags.get("query_model_version", version)), tags


def recorded_collections(name: str) -> set[str]:
    """Every Milvus collection recorded on any version of ``name``."""
    versions = _client().search_model_versions(f"name = '{name}'")
    return {v.tags["milvus_collection"] for v in versions if v.tags.get("milvus_collection")}


def audit_experiment(experiment: str) -> str:
    return f"{experiment}-promotion-audit"


def record_decision(candidate: Candidate, decision: dict, config: RegistryConfig,
                    run_tags: dict[str, str] | None = None) -> str:
    """Tag the version with the decision (metrics rounded for people) and log it as a run
    of the audit experiment, in the configured artifact store, with the exact values in
    ``decision.json``; returns the run id."""
    import mlflow

    from fusion_model.registry.tracking import experiment_id, log_metrics

    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    entry = {**decision, "model": candidate.name, "version": candidate.version, "time": stamp}
    tag_version(candidate, {"gate.decision": decision["decision"],
                            "gate.reasons": "; ".join(decision.get("reasons", [])),
                            "gate.time": stamp,
                            "gate.metrics": rounded(decision.get("metrics", {}))})
    location = (storage.join(config.artifact_location, "promotion-audit")
                if config.artifact_location else None)
    audit = experiment_id(audit_experiment(config.experiment), location)
    with mlflow.start_run(experiment_id=audit,
                          run_name=f"v{candidate.version}-{decision['decision']}") as run:
        mlflow.set_tags({"model": candidate.name, "version": candidate.version,
                         "decision": decision["decision"], "time": stamp,
                         "collection": decision.get("collection", ""), **(run_tags or {})})
        log_metrics({k: v for k, v in decision.get("metrics", {}).items()
                     if isinstance(v, int | float)})
        mlflow.log_dict(entry, "decision.json")
    return run.info.run_id


def rounded(values: dict, digits: int = 4) -> dict:
    """Floats rounded for tags people read (the artifacts keep the exact values)."""
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}


def promotion_history(name: str, experiment: str) -> list[dict]:
    """Every recorded decision for ``name``, oldest first."""
    import mlflow

    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = _client().search_runs([found.experiment_id], filter_string=f"tags.model = '{name}'",
                                 order_by=["attributes.start_time ASC"], max_results=10000)
    history = []
    for run in runs:
        path = _client().download_artifacts(run.info.run_id, "decision.json")
        with open(path) as handle:
            history.append(json.load(handle))
    return history
