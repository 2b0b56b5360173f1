"""The promotion gate: challenger vs champion on the same queries, through their real
Milvus collections (ANN search), with a paired bootstrap and guarded segments."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from fusion_model.config import GateConfig, IndexConfig
from fusion_model.evaluation.bootstrap import paired_bootstrap_difference
from fusion_model.evaluation.evaluator import EvaluationResult, Evaluator
from fusion_model.index.base import open_index

log = logging.getLogger(__name__)


@dataclass
class Decision:
    decision: str                      # "promote" or "reject"
    reasons: list[str]
    baseline: str                      # "champion vN" or "zero_shot_text"
    metrics: dict[str, float] = field(default_factory=dict)
    forced: bool = False

    def as_dict(self) -> dict:
        return {"decision": self.decision, "reasons": self.reasons, "baseline": self.baseline,
                "metrics": self.metrics, "forced": self.forced}


def ann_rankings(config: IndexConfig, collection: str, query_vectors: np.ndarray,
                 query_ids: list[str], k: int) -> dict[str, list[str]]:
    """Top-k product ids per query through the collection's ANN index."""
    with open_index(config) as index:
        hits = index.search(collection, query_vectors, k)
    return {qid: [h["product_id"] for h in row] for qid, row in zip(query_ids, hits)}


def evaluate_collection(config: IndexConfig, collection: str, query_vectors: np.ndarray,
                        evaluator: Evaluator) -> tuple[EvaluationResult, dict[str, list[str]]]:
    """The evaluator's queries searched through the collection (ANN), scored."""
    rankings = ann_rankings(config, collection, query_vectors, evaluator.query_ids,
                            max(evaluator.ks))
    return evaluator.score_rankings(rankings), rankings


def decide(challenger: EvaluationResult, baseline: EvaluationResult, baseline_name: str,
           policy: GateConfig, force: bool = False) -> Decision:
    """Promote only if the primary metric gains >= min_improvement with the paired
    bootstrap lower bound above zero and no guarded segment drops beyond tolerance."""
    metric = policy.primary_metric
    queries = sorted(set(challenger.per_query) & set(baseline.per_query))
    diff = paired_bootstrap_difference(challenger.values(metric, queries),
                                       baseline.values(metric, queries),
                                       policy.bootstrap_samples)
    reasons, ok = [], True
    gain = challenger.metrics[metric] - baseline.metrics[metric]
    metrics = {f"challenger.{metric}": challenger.metrics[metric],
               f"baseline.{metric}": baseline.metrics[metric], "gain": gain,
               "gain_ci_low": diff.low, "gain_ci_high": diff.high, "queries": len(queries)}
    if gain < policy.min_improvement:
        ok = False
        reasons.append(f"{metric} gain {gain:+.4f} is below the required "
                       f"{policy.min_improvement:+.4f} vs {baseline_name}")
    if diff.high < 0:
        ok = False
        reasons.append(f"{metric} significantly worse: 95% CI of the gain [{diff.low:+.4f}, "
                       f"{diff.high:+.4f}]")
    elif diff.low <= 0:
        ok = False
        reasons.append(f"{metric} gain not significant: 95% CI [{diff.low:+.4f}, "
                       f"{diff.high:+.4f}] includes 0")
    for segment in policy.guarded_segments:
        new, old = challenger.segments.get(segment), baseline.segments.get(segment)
        if not new or not old:
            reasons.append(f"guarded segment {segment}: no test query of this catalog is in "
                           "it, not checked (see eval.segments)")
            continue
        drop = old[metric] - new[metric]
        metrics[f"segment.{segment}.delta"] = -drop
        if drop > policy.segment_tolerance:
            ok = False
            reasons.append(f"segment {segment}: {metric} drops {drop:.4f} "
                           f"(tolerance {policy.segment_tolerance:.4f})")
    if ok:
        reasons.append(f"{metric} {challenger.metrics[metric]:.4f} vs "
                       f"{baseline.metrics[metric]:.4f} ({baseline_name}), gain {gain:+.4f}, "
                       f"95% CI [{diff.low:+.4f}, {diff.high:+.4f}]")
    if force and not ok:
        reasons.append("force_promote=true overrode the gate")
    decision = Decision("promote" if ok or force else "reject", reasons, baseline_name,
                        metrics, forced=force and not ok)
    log.info("gate: %s (%s)", decision.decision, "; ".join(reasons))
    return decision
