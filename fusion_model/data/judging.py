"""Queries from attribute combinations, and graded judgments from attribute matches.

Shared by the synthetic generator and the Myntra importer so that both grade the same way.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

SPLIT_SHARES = {"train": 0.7, "val": 0.15, "test": 0.15}


def grade_products(query: dict[str, str], attributes: pd.DataFrame, primary: str,
                   equivalents: dict[str, dict[str, set[str]]] | None = None) -> pd.Series:
    """Grade every product (0-3) for a query given as ``{attribute: value}``.

    The primary attribute (the product type) must match, else grade 0. Of the other n
    named attributes, m match: m == n -> 3; m == n-1 with n >= 3 -> 2; otherwise m >= 1 with
    n >= 2 -> 1. ``equivalents[attr][value]`` lists product values that also satisfy a
    query value (e.g. a unisex product satisfies a "men" query).
    """
    equivalents = equivalents or {}
    primary_match = attributes[primary].to_numpy() == query[primary]
    others = [a for a in query if a != primary]
    matched = np.zeros(len(attributes), dtype=np.int32)
    for attr in others:
        accepted = {query[attr], *equivalents.get(attr, {}).get(query[attr], set())}
        matched += attributes[attr].isin(accepted).to_numpy()
    n = len(others)
    grade = np.where(matched == n, 3, 0)
    if n >= 2:
        grade = np.where((matched >= 1) & (matched < n), 1, grade)
    if n >= 3:
        grade = np.where(matched == n - 1, 2, grade)
    return pd.Series(np.where(primary_match, grade, 0), index=attributes.index, dtype="int8")


def judgments_for(queries: list[dict], attributes: pd.DataFrame, product_ids: pd.Series,
                  primary: str, equivalents: dict | None = None,
                  per_query: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Long table (query_id, product_id, grade) of all pairs with grade > 0; with
    ``per_query``, a seeded random sample of at most that many per query (a judged pool
    that does not grow with the catalog, as a shop's hand judgments do not)."""
    frames = []
    for number, query in enumerate(queries):
        grades = grade_products(query["attributes"], attributes, primary, equivalents)
        hit = (grades > 0).to_numpy()
        if per_query is not None and hit.sum() > per_query:
            keep = np.random.default_rng([seed, number]).choice(
                np.flatnonzero(hit), per_query, replace=False)
            hit = np.zeros_like(hit)
            hit[keep] = True
        frames.append(pd.DataFrame({"query_id": query["query_id"],
                                    "product_id": product_ids[hit].to_numpy(),
                                    "grade": grades[hit].to_numpy()}))
    return pd.concat(frames, ignore_index=True)


def assign_splits(keys: list[str], salt: str = "") -> list[str]:
    """Deterministic 70/15/15 train/val/test split, ranked by a stable hash of each key.

    With three or more keys, val and test each get at least one.
    """
    n = len(keys)
    order = sorted(range(n), key=lambda i: hashlib.sha256(f"{salt}{keys[i]}".encode()).digest())
    n_val = max(1, round(n * SPLIT_SHARES["val"])) if n >= 3 else 0
    n_test = max(1, round(n * SPLIT_SHARES["test"])) if n >= 3 else 0
    n_train = n - n_val - n_test
    splits = [""] * n
    for rank, index in enumerate(order):
        splits[index] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return splits


def queries_frame(queries: list[dict]) -> pd.DataFrame:
    """Queries table: query_id, text, split and the attributes as a JSON string."""
    return pd.DataFrame({
        "query_id": [q["query_id"] for q in queries],
        "text": [q["text"] for q in queries],
        "split": [q["split"] for q in queries],
        "attributes": [json.dumps(q["attributes"], sort_keys=True) for q in queries],
    })
