"""Retrieval evaluation of embeddings by exact search over the whole catalog."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fusion_model.evaluation.bootstrap import bootstrap_mean
from fusion_model.evaluation.metrics import mean_metrics, per_query_table
from fusion_model.evaluation.search import exact_top_k


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    segments: dict[str, dict[str, float]] = field(default_factory=dict)

    def values(self, metric: str, query_ids: Sequence[str]) -> np.ndarray:
        return np.array([self.per_query[q][metric] for q in query_ids])

    def ci95(self, metric: str, samples: int = 1000) -> dict[str, float]:
        return bootstrap_mean(self.values(metric, sorted(self.per_query)), samples).as_dict()

    def as_dict(self) -> dict:
        return {"metrics": self.metrics, "per_query": self.per_query, "segments": self.segments}

    @classmethod
    def from_dict(cls, data: dict) -> EvaluationResult:
        return cls(data["metrics"], data["per_query"], data.get("segments", {}))


@dataclass
class Evaluator:
    """One split of one catalog, bound once: its queries, qrels and segments, the catalog's
    product ids, the cut-offs and the relevance grade. The trainer, inference, the
    benchmark and the gate all score through it."""

    query_ids: list[str]
    query_texts: list[str]
    qrels: Mapping[str, Mapping[str, int]]
    product_ids: list[str]
    segments: dict[str, set[str]]
    ks: tuple[int, ...]
    min_grade: int

    @classmethod
    def for_split(cls, catalog, config, data, split: str = "test") -> Evaluator:
        """``config``: a RunConfig (its ``eval`` and thresholds); ``data``: the catalog's
        RetrievalData (``fusion_model.data.retrieval.build_data``): evaluation scores the
        data it is given, it builds none."""
        config = config.for_catalog(catalog.max_grade)
        queries = data.splits[split]
        segments = query_segments(catalog.queries, catalog.products, catalog.judgments,
                                  config.eval.segments)
        return cls(queries.ids, queries.texts, queries.qrels, data.product_ids, segments,
                   tuple(config.eval.ks), config.eval.min_relevant_grade)

    def score_vectors(self, query_vectors: torch.Tensor,
                      product_vectors: torch.Tensor) -> EvaluationResult:
        """Exact search of this split's query vectors over every product vector."""
        return evaluate_vectors(query_vectors, product_vectors, self.query_ids,
                                self.product_ids, self.qrels, self.ks, self.min_grade,
                                self.segments)

    def score_top(self, top: torch.Tensor) -> EvaluationResult:
        """Given each query's top product indices (rows in query order), best first."""
        return self.score_rankings(rankings_from(top, self.query_ids, self.product_ids))

    def score_rankings(self, rankings: Mapping[str, Sequence[str]]) -> EvaluationResult:
        """Given rankings (an ANN index's) of this split's queries."""
        return evaluate_rankings(rankings, self.qrels, self.ks, self.min_grade, self.segments)


def rank(query_vectors: torch.Tensor, product_vectors: torch.Tensor | Iterable[torch.Tensor],
         query_ids: Sequence[str], product_ids: Sequence[str], k: int
         ) -> dict[str, list[str]]:
    """Top-k product ids per query by inner product (products: a tensor or streamed
    chunks in product order)."""
    _, index = exact_top_k(query_vectors, product_vectors, k)
    return rankings_from(index, query_ids, product_ids)


def rankings_from(top: torch.Tensor, query_ids: Sequence[str], product_ids: Sequence[str]
                  ) -> dict[str, list[str]]:
    """Query id -> product ids, from rows of product indices in query order."""
    return {qid: [product_ids[j] for j in row] for qid, row in zip(query_ids, top.tolist())}


def evaluate_vectors(query_vectors: torch.Tensor, product_vectors: torch.Tensor,
                     query_ids: Sequence[str], product_ids: Sequence[str],
                     qrels: Mapping[str, Mapping[str, int]], ks: Sequence[int],
                     min_grade: int, segments: Mapping[str, set[str]] | None = None
                     ) -> EvaluationResult:
    """Metrics for every judged query (queries without judgments are skipped)."""
    rankings = rank(query_vectors, product_vectors, query_ids, product_ids, max(ks))
    return evaluate_rankings(rankings, qrels, ks, min_grade, segments)


def evaluate_rankings(rankings: Mapping[str, Sequence[str]],
                      qrels: Mapping[str, Mapping[str, int]], ks: Sequence[int],
                      min_grade: int, segments: Mapping[str, set[str]] | None = None
                      ) -> EvaluationResult:
    """Metrics of given rankings (exact search or an ANN index) for every judged query."""
    judged = {q: qrels[q] for q in rankings if q in qrels}
    table = per_query_table(rankings, judged, ks, min_grade)
    result = EvaluationResult(mean_metrics(table), table)
    for name, members in (segments or {}).items():
        rows = {q: table[q] for q in members if q in table}
        if rows:
            result.segments[name] = {**mean_metrics(rows), "queries": float(len(rows))}
    return result


SEGMENT_KINDS = ("any", "title_lacks")
DEFAULT_SEGMENTS = ("visual_query=any:colour,pattern", "text_only_attribute=any:brand,material",
                    "title_lacks_attribute=title_lacks:colour")


@dataclass(frozen=True)
class SegmentRule:
    """A named query subset: ``name=any:a,b`` (the query names attribute a or b) or
    ``name=title_lacks:a`` (most exact matches' titles do not state the queried a)."""

    name: str
    kind: str
    attributes: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str) -> SegmentRule:
        name, _, rule = spec.partition("=")
        kind, _, attributes = rule.partition(":")
        names = tuple(a.strip() for a in attributes.split(",") if a.strip())
        if not name.strip() or kind not in SEGMENT_KINDS or not names or \
                (kind == "title_lacks" and len(names) != 1):
            raise ValueError(f"segment {spec!r}: write NAME=any:ATTR[,ATTR...] or "
                             "NAME=title_lacks:ATTR")
        return cls(name.strip(), kind, names)


def query_segments(queries, products, judgments,
                   rules: Sequence[str] = DEFAULT_SEGMENTS) -> dict[str, set[str]]:
    """Named query subsets (``eval.segments``), from the queries' ``attributes`` JSON column
    when present. A segment no query falls into is left out of every result."""
    parsed = [SegmentRule.parse(rule) for rule in rules]
    if "attributes" not in queries.columns:
        return {}
    exact: dict[str, list[str]] = {}
    for qid, pid in judgments.loc[judgments["grade"] == 3, ["query_id", "product_id"]
                                  ].itertuples(index=False):
        exact.setdefault(qid, []).append(pid)
    judged = products[products["product_id"].isin({p for ps in exact.values() for p in ps})]
    titles = dict(zip(judged["product_id"], judged["title"].str.lower()))  # judged ones only
    segments: dict[str, set[str]] = {rule.name: set() for rule in parsed}
    for qid, raw in zip(queries["query_id"], queries["attributes"]):
        attributes = json.loads(raw) if isinstance(raw, str) else {}
        for rule in parsed:
            if _in_segment(rule, attributes, exact.get(qid, []), titles):
                segments[rule.name].add(qid)
    return segments


def _in_segment(rule: SegmentRule, attributes: dict, matches: list[str],
                titles: dict[str, str]) -> bool:
    if rule.kind == "any":
        return any(a in attributes for a in rule.attributes)
    value = str(attributes.get(rule.attributes[0], "")).lower()
    if not value or not matches:
        return False
    return sum(value not in titles[p] for p in matches) / len(matches) >= 0.5
