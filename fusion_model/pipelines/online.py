"""The optional online stage after the offline gate (``feedback.online``).

A version that passes the gate becomes the registry's ``candidate`` instead of the
champion; services started with ``--interleave`` (or ``feedback.online``) interleave it with
the champion on a share of the searches. ``decide`` reads the recorded clicks: the
candidate is promoted (the same recoverable switch as the gate's promotion) when shoppers
significantly prefer it, withdrawn when they significantly prefer the champion or when
``feedback.max_decided`` decided searches show no preference, and otherwise kept waiting.
Each step is an audit record (decisions ``interleave``, ``promote``, ``withdraw``) and a
version tag (``online.state``), so the registry and ``fusion-model status`` show it."""

from __future__ import annotations

import datetime as dt
import logging

from fusion_model.config import RunConfig
from fusion_model.errors import BadInputError
from fusion_model.pipelines import switch

log = logging.getLogger(__name__)
STATE_TAG, SINCE_TAG = "online.state", "online.since"


def start(config: RunConfig, candidate, collection: str, decision: dict) -> dict:
    """The gate passed ``candidate``: make it the ``candidate`` and record why."""
    from fusion_model.registry.registry import (
        CANDIDATE,
        get_alias,
        record_decision,
        set_alias,
        tag_version,
    )

    _require_events(config)
    replaced = get_alias(config.registry.model_name, CANDIDATE)
    if replaced is not None and replaced.version != candidate.version:
        _withdraw(config, replaced, [f"replaced by v{candidate.version} before a verdict"])
    since = dt.datetime.now(dt.UTC).date().isoformat()
    tag_version(candidate, {STATE_TAG: "interleaving", SINCE_TAG: since})
    set_alias(candidate, CANDIDATE)
    reasons = [*decision.get("reasons", []),
               f"passed the offline gate; interleaved with the champion on "
               f"{config.feedback.share:.0%} of searches until shoppers decide"]
    record_decision(candidate, {**decision, "decision": "interleave", "reasons": reasons,
                                "collection": collection}, config.registry)
    log.info("v%s is the candidate: interleaved from %s (run `fusion-model feedback "
             "decide` or the search_feedback DAG to settle it)", candidate.version, since)
    return {"promoted": False, "interleaving": True, "version": candidate.version,
            "collection": collection, "reasons": reasons}


def _require_events(config: RunConfig) -> None:
    if not config.feedback.events:
        raise BadInputError("feedback.online needs feedback.events: where the service "
                            "records searches and clicks (a folder or s3:// prefix)")


def current(config: RunConfig) -> dict | None:
    """The running comparison: candidate version, since, and shoppers' preference so far
    (None when no candidate waits)."""
    from fusion_model.feedback.online import describe, online_preference
    from fusion_model.registry.registry import CANDIDATE, get_alias, version_tags

    candidate = get_alias(config.registry.model_name, CANDIDATE)
    if candidate is None:
        return None
    since = _since(version_tags(candidate))
    found = online_preference(config.feedback.events, candidate.version, since) \
        if config.feedback.events else None
    return {"candidate": candidate, "since": since and since.isoformat(), "preference": found,
            "summary": describe(found) if found else "feedback.events is not set"}


def _since(tags: dict[str, str]) -> dt.date | None:
    try:
        return dt.date.fromisoformat(tags.get(SINCE_TAG, ""))
    except ValueError:
        return None


def decide(config: RunConfig) -> dict:
    """Promote, withdraw or keep waiting for the candidate, from the recorded clicks."""
    from fusion_model.feedback.interleaving import A, B

    _require_events(config)
    switch.recover(config)
    running = current(config)
    if running is None:
        return {"state": "none", "reason": "no candidate is being interleaved"}
    candidate, found = running["candidate"], running["preference"]
    settings = config.feedback
    decided = found.wins_a + found.wins_b
    verdict = found.prefers(settings.alpha) if decided >= settings.min_decided else None
    summary = running["summary"]
    if verdict == B:
        return _promote(config, candidate, found, summary)
    if verdict == A:
        _withdraw(config, candidate, [f"shoppers prefer the champion: {summary}"], found)
        return {"state": "withdrawn", "version": candidate.version, "reason": summary}
    if decided >= settings.max_decided:
        _withdraw(config, candidate, [f"no preference after {decided} decided searches: "
                                      f"{summary}"], found)
        return {"state": "withdrawn", "version": candidate.version, "reason": summary}
    needed = max(settings.min_decided - decided, 0)
    log.info("v%s keeps waiting: %s%s", candidate.version, summary,
             f" ({needed} more decided searches before any verdict)" if needed else "")
    return {"state": "waiting", "version": candidate.version, "reason": summary}


def _metrics(found) -> dict:
    return {"online.wins_candidate": found.wins_b, "online.wins_champion": found.wins_a,
            "online.ties": found.ties, "online.share_candidate": found.share_b,
            "online.p_value": found.p_value}


def _promote(config: RunConfig, candidate, found, summary: str) -> dict:
    from fusion_model.index.base import open_index
    from fusion_model.registry.registry import candidate_for

    _, tags = candidate_for(config.registry.model_name, candidate.version)
    collection = tags["milvus_collection"]
    entry = {"decision": "promote", "reasons": [f"shoppers prefer it: {summary}"],
             "metrics": _metrics(found), "collection": collection}
    previous = switch.switch_serving(config, candidate, collection, entry,
                                     {STATE_TAG: "promoted"})
    with open_index(config.index) as index:
        index.prune(config.index.collection_prefix, config.index.keep_collections)
    log.info("v%s promoted online: %s", candidate.version, summary)
    return {"state": "promoted", "version": candidate.version, "collection": collection,
            "previous_collection": previous, "reason": summary}


def _withdraw(config: RunConfig, candidate, reasons: list[str], found=None) -> None:
    """The candidate leaves the comparison: audit record, then tag, then alias (a rerun
    after a crash finds the alias and records again; never serves the candidate)."""
    from fusion_model.registry.registry import (
        CANDIDATE,
        candidate_for,
        record_decision,
        remove_alias,
        tag_version,
    )

    _, tags = candidate_for(config.registry.model_name, candidate.version)
    record_decision(candidate, {"decision": "withdraw", "reasons": reasons,
                                "metrics": _metrics(found) if found else {},
                                "collection": tags.get("milvus_collection", "")},
                    config.registry)
    tag_version(candidate, {STATE_TAG: "withdrawn"})
    remove_alias(candidate, CANDIDATE)
    log.info("v%s withdrawn from the online comparison: %s", candidate.version,
             "; ".join(reasons))
