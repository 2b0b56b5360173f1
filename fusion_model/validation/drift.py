"""Catalog profiles and drift against the last snapshot that passed validation."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from fusion_model import storage


@dataclass(frozen=True)
class DriftBounds:
    max_row_count_change: float = 0.3      # relative change of the products row count
    max_null_rate_increase: float = 0.1    # absolute increase of a column's null share
    max_distribution_shift: float = 0.25   # total variation distance of a categorical column
    distribution_columns: tuple[str, ...] = ("category", "colour")


def profile(products: pd.DataFrame, columns: tuple[str, ...]) -> dict:
    """Row count, columns, null rates and the shares of categorical columns."""
    text = products.replace("", None)
    return {
        "row_count": len(products),
        "columns": sorted(map(str, products.columns)),
        "null_rates": {str(c): float(text[c].isna().mean()) for c in products.columns},
        "distributions": {c: products[c].astype(str).value_counts(normalize=True).round(6)
                          .to_dict() for c in columns if c in products.columns},
    }


def compare(current: dict, last: dict, bounds: DriftBounds) -> list[dict]:
    """One finding per drift check: name, success, observed, bound, detail."""
    findings = []
    change = (current["row_count"] - last["row_count"]) / max(last["row_count"], 1)
    findings.append({"name": "row_count_change", "success": abs(change) <=
                     bounds.max_row_count_change, "observed": round(change, 4),
                     "bound": bounds.max_row_count_change,
                     "detail": f"{last['row_count']} -> {current['row_count']} rows"})
    added = sorted(set(current["columns"]) - set(last["columns"]))
    removed = sorted(set(last["columns"]) - set(current["columns"]))
    findings.append({"name": "column_set", "success": not added and not removed,
                     "observed": {"added": added, "removed": removed}, "bound": "unchanged",
                     "detail": f"added {added or 'none'}, removed {removed or 'none'}"})
    for column, rate in current["null_rates"].items():
        before = last["null_rates"].get(column)
        if before is not None:
            increase = rate - before
            findings.append({"name": f"null_rate[{column}]",
                             "success": increase <= bounds.max_null_rate_increase,
                             "observed": round(increase, 4),
                             "bound": bounds.max_null_rate_increase,
                             "detail": f"null share {before:.3f} -> {rate:.3f}"})
    for column, shares in current["distributions"].items():
        before = last["distributions"].get(column)
        if before is not None:
            keys = set(shares) | set(before)
            tv = 0.5 * sum(abs(shares.get(k, 0.0) - before.get(k, 0.0)) for k in keys)
            findings.append({"name": f"distribution[{column}]",
                             "success": tv <= bounds.max_distribution_shift,
                             "observed": round(tv, 4), "bound": bounds.max_distribution_shift,
                             "detail": f"total variation distance {tv:.3f}"})
    return findings


def load_profile(uri: str) -> dict | None:
    if not storage.exists(uri):
        return None
    return json.loads(storage.read_bytes(uri))


def save_profile(uri: str, data: dict) -> None:
    storage.write_bytes(uri, json.dumps(data, indent=2, sort_keys=True).encode())
