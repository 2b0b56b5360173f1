"""The values of each filterable field, recorded with a collection's version.

A filter names stored values (``gender == women``); a person does not know them, nor their
case. At index time the most frequent values of each attribute field are recorded on the
registered version (tag ``filter_values``); the service offers them as choices and matches
a typed value regardless of case. The tag is read as untrusted input (DESIGN.md,
principle 14): any other shape reads as "no values known".
"""

from __future__ import annotations

import json
import logging

import pandas as pd

log = logging.getLogger(__name__)

TAG = "filter_values"
MAX_VALUES = 50          # per field, the most frequent first
MAX_VALUE_CHARS = 64
MAX_TAG_CHARS = 7_500    # under MLflow's tag value limit


def facets_of(products: pd.DataFrame, fields: list[str]) -> dict[str, dict]:
    """``{field: {"values": [most frequent first], "complete": every value listed}}``."""
    facets = {}
    for field in fields:
        if field not in products.columns:
            continue
        counts = products[field].dropna().astype(str).value_counts()
        values = [v for v in counts.index[:MAX_VALUES] if 0 < len(v) <= MAX_VALUE_CHARS]
        facets[field] = {"values": values, "complete": len(values) == len(counts)}
    return facets


def facets_tag(facets: dict[str, dict]) -> str:
    """The tag's JSON, values dropped from the longest list until it fits."""
    facets = {f: {"values": list(d["values"]), "complete": d["complete"]}
              for f, d in facets.items()}
    text = json.dumps(facets, ensure_ascii=False, sort_keys=True)
    while len(text) > MAX_TAG_CHARS:
        longest = max(facets.values(), key=lambda d: len(d["values"]))
        longest["values"].pop()
        longest["complete"] = False
        text = json.dumps(facets, ensure_ascii=False, sort_keys=True)
    return text


def read_facets(text: str | None, fields: tuple[str, ...]) -> dict[str, dict]:
    """The recorded values of ``fields`` from a version's tag; {} when absent or of
    another shape (a hand-edited or foreign tag is not trusted)."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("tag %s is not JSON: no filter values offered", TAG)
        return {}
    facets = {}
    for field in fields:
        entry = data.get(field) if isinstance(data, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("values"), list):
            continue
        values = [v for v in entry["values"][:MAX_VALUES]
                  if isinstance(v, str) and 0 < len(v) <= MAX_VALUE_CHARS]
        facets[field] = {"values": values,
                         "complete": entry.get("complete") is True and
                         len(values) == len(entry["values"])}
    return facets
