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
    return finish_profile(profile_counts(products, columns))


def profile_counts(products: pd.DataFrame, columns: tuple[str, ...]) -> dict:
    """The additive part of a profile for one batch of rows (see ``merge_counts``)."""
    text = products.replace("", None)
    return {
        "row_count": len(products),
        "columns": sorted(map(str, products.columns)),
        "null_counts": {str(c): int(text[c].isna().sum()) for c in products.columns},
        "value_counts": {c: {str(k): int(v) for k, v in
                             products[c].astype(str).value_counts().items()}
                         for c in columns if c in products.columns},
    }


def merge_counts(parts: list[dict]) -> dict:
    """Batches' ``profile_counts`` summed (the columns are the first batch's)."""
    merged = {"row_count": 0, "columns": parts[0]["columns"] if parts else [],
              "null_counts": {}, "value_counts": {}}
    for part in parts:
        merged["row_count"] += part["row_count"]
        for column, nulls in part["null_counts"].items():
            merged["null_counts"][column] = merged["null_counts"].get(column, 0) + nulls
        for column, counts in part["value_counts"].items():
            total = merged["value_counts"].setdefault(column, {})
            for value, count in counts.items():
                total[value] = total.get(value, 0) + count
    return merged


def finish_profile(counts: dict) -> dict:
    """Counts as the profile the drift checks compare (shares rounded to 6 places)."""
    rows = counts["row_count"]
    return {
        "row_count": rows,
        "columns": counts["columns"],
        "null_rates": {c: (n / rows if rows else float("nan"))
                       for c, n in counts["null_counts"].items()},
        "distributions": {c: {v: round(n / rows, 6) for v, n in
                              sorted(values.items(), key=lambda item: -item[1])}
                          for c, values in counts["value_counts"].items()},
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
