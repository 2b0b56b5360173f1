"""Moving what search serves, as a recoverable transaction (promote, rollback, refresh).

A switch writes to two systems that share no transaction: the serving alias in the index,
then, in MLflow, the version's tags, the ``champion`` alias (product and query model) and
the audit record. The intent is written first, as a tag on the registered model
(``fusion.pending_switch``); each write is idempotent; the tag is removed last. A process
killed anywhere in between leaves the intent behind, and ``finish_pending`` completes it:
every mutating command (lifecycle, promote, rollback, refresh, ``fusion-model recover``)
calls it first, and read-only ones (``status``, ``search``, ``serve``) name it.

Runs on one registry are serialised by ``registry_lock`` (a lock file per tracking URI and
model name on this host): a second ``lifecycle`` fails at once with ``RegistryBusyError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fusion_model.config import RunConfig
from fusion_model.errors import BadInputError, ServingSwitchError
from fusion_model.faults import checkpoint
from fusion_model.index.base import VectorIndex, open_index
from fusion_model.registry.registry import (
    clear_pending_switch,
    pending_switch,
    record_pending_switch,
)

log = logging.getLogger(__name__)
RECOVER_COMMAND = "fusion-model recover"


class RegistryBusyError(BadInputError):
    """Another run holds the lock of this registry and model."""


@dataclass(frozen=True)
class SwitchIntent:
    """What a switch is about to do, written before its first write."""

    switch_id: str
    model: str
    version: str
    query_version: str
    collection: str
    previous_collection: str | None
    previous_champion: str | None
    entry: dict
    version_tags: dict = field(default_factory=dict)
    started: str = ""
    by: str = ""

    def describe(self) -> str:
        return (f"{self.entry.get('decision', 'switch')} of {self.model} v{self.version} to "
                f"{self.collection} (from {self.previous_collection}), started {self.started} "
                f"by {self.by}")


def pending(name: str) -> SwitchIntent | None:
    """The unfinished switch recorded on model ``name``, if any."""
    found = pending_switch(name)
    return SwitchIntent(**found) if found else None


MAX_INTENT_CHARS = 4500  # registered-model tag values are VARCHAR(5000) on SQL stores


def intent_json(intent: SwitchIntent) -> str:
    """The intent as the tag holds it; when the gate's metrics make it too long for a
    tag, without them (the audit record of a finished switch then lacks the metrics; the
    gate's run keeps them in its review artifacts)."""
    text = json.dumps(asdict(intent))
    if len(text) <= MAX_INTENT_CHARS:
        return text
    entry = {**intent.entry, "metrics": {},
             "reasons": [str(r)[:300] for r in intent.entry.get("reasons", [])][:5]}
    return json.dumps(asdict(intent) | {"entry": entry})


def _write_intent(intent: SwitchIntent) -> None:
    checkpoint("switch.intent")
    record_pending_switch(intent.model, intent_json(intent))


def _clear_intent(intent: SwitchIntent) -> None:
    checkpoint("switch.clear")
    clear_pending_switch(intent.model)


def switch_serving(config: RunConfig, candidate, collection: str, entry: dict,
                   version_tags: dict | None = None) -> str | None:
    """Serving alias -> ``collection``, then (MLflow) optional version tags, ``champion``
    -> ``candidate`` and the audit record, as one recoverable transaction; returns the
    collection served before. When an MLflow write fails, the alias and the champion are
    put back and ServingSwitchError says so; when the process dies, the recorded intent
    lets the next command finish the switch. A switch to what already serves (a retried
    step after its switch was finished) writes nothing, the audit record included."""
    from fusion_model.registry.registry import CHAMPION, get_alias

    with registry_lock(config), open_index(config.index) as index:
        finish_pending(config, index)
        before = get_alias(config.registry.model_name, CHAMPION)
        target = index.resolve_alias(config.index.alias)
        if before is not None and before.version == candidate.version \
                and target == collection and not version_tags:
            log.info("v%s already serves %s: nothing to switch (a retried step finds the "
                     "switch done)", candidate.version, collection)
            return target
        intent = SwitchIntent(
            switch_id=uuid.uuid4().hex, model=config.registry.model_name,
            version=candidate.version, query_version=candidate.query_version,
            collection=collection,
            previous_collection=None if target == config.index.alias else target,
            previous_champion=before and before.version, entry=entry,
            version_tags=dict(version_tags or {}),
            started=datetime.now(UTC).isoformat(timespec="seconds"), by=_who())
        _write_intent(intent)
        done: list[str] = []
        try:
            _apply(intent, index, config, done)
        except Exception as exc:
            restored = _undo(intent, index, config, done)
            raise ServingSwitchError(
                f"recording v{candidate.version} as champion in MLflow failed "
                f"({type(exc).__name__}: {exc}); {restored}. Fix the tracking server and "
                "run the step again") from exc
        _clear_intent(intent)
    return intent.previous_collection


def _apply(intent: SwitchIntent, index: VectorIndex, config: RunConfig,
           done: list[str] | None = None) -> None:
    """Every write of the switch, each idempotent, so that a rerun completes it; the
    writes made are appended to ``done`` (what an undo must take back)."""
    from fusion_model.registry import registry

    done = [] if done is None else done
    candidate = registry.Candidate(intent.model, intent.version, intent.query_version)
    checkpoint("switch.alias")
    if index.resolve_alias(config.index.alias) != intent.collection:
        index.point_alias(config.index.alias, intent.collection)
    done.append("alias")
    if intent.version_tags:
        checkpoint("switch.tags")
        registry.tag_version(candidate, intent.version_tags)
        done.append("tags")
    checkpoint("switch.champion")
    done.append("champion")  # set_alias writes two aliases: either may have moved
    registry.set_alias(candidate, registry.CHAMPION)
    done.append("marked")  # the description and the challenger alias
    registry.mark_champion(candidate)
    checkpoint("switch.audit")
    _record_once(candidate, intent, config)


def _record_once(candidate, intent: SwitchIntent, config: RunConfig) -> None:
    """The audit record of the switch, unless a killed attempt already wrote it."""
    import mlflow

    from fusion_model.registry.registry import audit_experiment, record_decision

    experiment = mlflow.get_experiment_by_name(audit_experiment(config.registry.experiment))
    if experiment is not None and not mlflow.search_runs(
            [experiment.experiment_id], f"tags.switch_id = '{intent.switch_id}'").empty:
        return
    record_decision(candidate, {**intent.entry, "previous_collection":
                                intent.previous_collection}, config.registry,
                    run_tags={"switch_id": intent.switch_id})


def _undo(intent: SwitchIntent, index: VectorIndex, config: RunConfig,
          done: list[str] | None = None) -> str:
    """Take back the writes in ``done`` (all of them when None): the serving alias, then,
    where MLflow allows, the version tags and the champion. The intent is removed only
    when everything is back (otherwise the next command completes the switch, which is
    consistent too). Says what was done."""
    from fusion_model.registry import registry

    done = ["alias", "tags", "champion"] if done is None else done
    said = f"serving alias {config.index.alias} unchanged"
    if "alias" in done and intent.previous_collection is None:
        index.drop_alias(config.index.alias)
        said = f"serving alias {config.index.alias} removed again (it did not exist before)"
    elif "alias" in done:
        index.point_alias(config.index.alias, intent.previous_collection)
        said = f"serving alias {config.index.alias} restored to {intent.previous_collection}"
    try:
        if "tags" in done and intent.version_tags and intent.previous_collection:
            registry.tag_version(registry.Candidate(intent.model, intent.version,
                                                    intent.query_version),
                                 {"milvus_collection": intent.previous_collection})
        if "champion" in done and intent.previous_champion \
                and intent.previous_champion != intent.version:
            before, _ = registry.candidate_for(intent.model, intent.previous_champion)
            registry.set_alias(before, registry.CHAMPION)
        if "marked" in done and intent.previous_champion != intent.version:
            registry.unmark_champion(registry.Candidate(intent.model, intent.version,
                                                        intent.query_version))
        _clear_intent(intent)
    except Exception as exc:  # noqa: BLE001 - MLflow is the thing that is failing
        log.warning("could not restore MLflow after a failed switch (%s); the recorded "
                    "intent stays: `%s` completes the switch", exc, RECOVER_COMMAND)
    return said


def finish_pending(config: RunConfig, index: VectorIndex | None = None) -> dict | None:
    """Complete an interrupted switch (its collection still exists) or undo it (it does
    not); None when there was none. Callers hold ``registry_lock``."""
    intent = pending(config.registry.model_name)
    if intent is None:
        return None
    with contextlib.ExitStack() as stack:
        if index is None:
            index = stack.enter_context(open_index(config.index))
        if index.has_collection(intent.collection):
            log.warning("finishing an interrupted switch: %s", intent.describe())
            _apply(intent, index, config)
            _clear_intent(intent)
            return {"finished": intent.switch_id, "version": intent.version,
                    "collection": intent.collection}
        log.warning("undoing an interrupted switch whose collection is gone: %s",
                    intent.describe())
        said = _undo(intent, index, config)
        return {"undone": intent.switch_id, "version": intent.version, "detail": said}


def recover(config: RunConfig) -> dict | None:
    """``fusion-model recover``: finish or undo an interrupted switch under the lock."""
    with registry_lock(config):
        return finish_pending(config)


# --- one run at a time per registry and model ------------------------------------------

_held: dict[str, int] = {}
_held_lock = threading.Lock()


def lock_path(config: RunConfig) -> Path:
    """The lock file of this tracking URI and model name."""
    key = f"{config.registry.resolved_tracking_uri()}\n{config.registry.model_name}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(config.train.cache_dir).expanduser() / "locks"
    return root / f"{config.registry.model_name}-{digest}.lock"


@contextlib.contextmanager
def registry_lock(config: RunConfig) -> Iterator[None]:
    """Hold the registry lock (re-entrant within a process); RegistryBusyError naming the
    holder when another process has it."""
    import fcntl

    path = lock_path(config)
    key = str(path)
    with _held_lock:
        if _held.get(key):
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_lock:
                _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RegistryBusyError(
                f"{config.registry.model_name} on {config.registry.resolved_tracking_uri()} "
                f"is busy: {holder} holds {path}; wait for it to finish (two runs at once "
                "would race on the champion and the serving alias)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{_who()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        with _held_lock:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_lock:
                _held.pop(key, None)
            handle.seek(0)
            handle.truncate()
    finally:
        handle.close()  # releases the lock


def _who() -> str:
    """Who runs this: pid, host and the program with its subcommand only (the intent tag
    and the lock file carry it; an override further on may hold a secret)."""
    import sys

    command = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:2]]) if sys.argv else ""
    return f"pid {os.getpid()} on {socket.gethostname()} ({command})"
