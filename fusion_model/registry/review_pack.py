"""The gate's per-query results, for the review page.

The gate logs ``review/queries.json`` on the candidate's training run: each test query's
metric for the candidate and the baseline, their difference, and the query's graded
products. The search service reads it back (``load_review_pack``) to show a card's grade,
a query's metric on each side, and the queries where the candidate loses most. The
artifact is read as untrusted input: anything of another shape or size is dropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

ARTIFACT = "review/queries.json"
MAX_QUERIES = 5_000
MAX_GRADED = 200         # graded products kept per query
MAX_TEXT = 512


def build_review_pack(version: str, baseline: str, metric: str, query_ids: Sequence[str],
                      query_texts: Sequence[str], candidate: Mapping[str, Mapping],
                      reference: Mapping[str, Mapping],
                      qrels: Mapping[str, Mapping[str, int]]) -> dict:
    """The artifact's content; queries ordered by the candidate's loss, largest first."""
    rows = []
    for qid, text in zip(query_ids, query_texts):
        if qid not in candidate or qid not in reference:
            continue
        ours, theirs = float(candidate[qid][metric]), float(reference[qid][metric])
        graded = sorted(((pid, int(g)) for pid, g in qrels.get(qid, {}).items() if g > 0),
                        key=lambda item: -item[1])[:MAX_GRADED]
        rows.append({"query_id": qid, "text": text, "candidate": round(ours, 4),
                     "baseline": round(theirs, 4), "difference": round(ours - theirs, 4),
                     "grades": dict(graded)})
    rows.sort(key=lambda row: (row["difference"], row["query_id"]))
    return {"version": str(version), "baseline": baseline, "metric": metric,
            "queries": rows[:MAX_QUERIES]}


def check_review_pack(data: object) -> dict | None:
    """The pack if it has the expected shape (sizes capped, numbers finite), else None."""
    if not isinstance(data, dict) or not isinstance(data.get("queries"), list):
        return None
    metric, baseline = data.get("metric"), data.get("baseline")
    if not isinstance(metric, str) or not isinstance(baseline, str):
        return None
    queries = []
    for row in data["queries"][:MAX_QUERIES]:
        checked = _checked_row(row)
        if checked is not None:
            queries.append(checked)
    return {"version": str(data.get("version", "")), "baseline": baseline[:MAX_TEXT],
            "metric": metric[:32], "queries": queries}


def _checked_row(row: object) -> dict | None:
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        return None
    numbers = [row.get(k) for k in ("candidate", "baseline", "difference")]
    if not all(isinstance(n, int | float) and math.isfinite(n) for n in numbers):
        return None
    grades = row.get("grades")
    if not isinstance(grades, dict):
        return None
    kept = {pid: grade for pid, grade in list(grades.items())[:MAX_GRADED]
            if isinstance(pid, str) and len(pid) <= 128 and isinstance(grade, int)
            and 0 < grade <= 10}
    return {"query_id": str(row.get("query_id", ""))[:128], "text": row["text"][:MAX_TEXT],
            "candidate": float(numbers[0]), "baseline": float(numbers[1]),
            "difference": float(numbers[2]), "grades": kept}


def load_review_pack(run_id: str) -> dict | None:
    """The gate's pack of a training run, checked; None when it has none (an older run,
    a version never gated) or it cannot be read."""
    import mlflow

    try:
        data = mlflow.artifacts.load_dict(f"runs:/{run_id}/{ARTIFACT}")
    except Exception as error:  # noqa: BLE001 - absent or unreadable: no review data
        log.info("no review data for run %s (%s)", run_id, type(error).__name__)
        return None
    pack = check_review_pack(data)
    if pack is None:
        log.warning("run %s: %s has another shape; ignored", run_id, ARTIFACT)
    return pack
