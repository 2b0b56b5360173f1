"""HTML review gallery: top-10 photos per sample query, challenger beside champion."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

import numpy as np

from fusion_model import storage
from fusion_model.photos import open_photo

THUMBNAIL = 96


def thumbnail(uri: str | None) -> str:
    """A small inline JPEG (data URI) so the gallery is one self-contained file."""
    if not uri:
        return ""
    try:
        image = open_photo(storage.read_bytes(uri), uri=uri).convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a broken photo must not break the gallery
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


STYLE = ("body{font-family:sans-serif;margin:16px} td{vertical-align:top;font-size:11px;"
         "width:100px} img,.nophoto{width:96px;height:96px;object-fit:contain;"
         "border:4px solid #ddd;box-sizing:content-box} .nophoto{display:flex;"
         "align-items:center;justify-content:center;color:#999;background:#f3f3f3}"
         ".rel{border-color:#2a2 !important} .label{font-weight:bold;width:140px}"
         ".promote{color:#186a1e} .reject{color:#a11} table.metrics td,table.metrics th"
         "{width:auto;padding:2px 10px;font-size:13px;text-align:right}")
SHOWN_METRICS = ("recall@10", "recall@100", "ndcg@10", "mrr")


def build_gallery(queries: Mapping[str, str], rankings: Mapping[str, Mapping[str, Sequence[str]]],
                  qrels: Mapping[str, Mapping[str, int]], products, title: str,
                  min_grade: int = 1, header: str = "", sample: int = 20, top: int = 10,
                  seed: int = 0) -> str:
    """``rankings`` maps a model label (e.g. "challenger v3") to {query_id: product ids},
    one row per model and sample query; a photo is framed green when its grade reaches
    ``min_grade`` (the metrics' relevance threshold). ``header``: HTML put above."""
    info = products.set_index("product_id")[["title", "image_uri"]]
    query_ids = sorted(queries)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(query_ids, size=min(sample, len(query_ids)), replace=False))
    cache: dict[str, str] = {}
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             f"{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>", header,
             f"<p>Green frame: judged relevant (grade &ge; {min_grade}, the threshold of the "
             "metrics); the grade is shown under each photo.</p>"]
    for qid in chosen:
        parts.append(f"<h3>{html.escape(queries[qid])} <small>({html.escape(qid)})</small></h3>"
                     "<table>")
        for label, ranking in rankings.items():
            cells = [f"<td class='label'>{html.escape(label)}</td>"]
            for pid in list(ranking.get(qid, []))[:top]:
                grade = qrels.get(qid, {}).get(pid, 0)
                uri = info["image_uri"].get(pid)
                if pid not in cache:
                    cache[pid] = thumbnail(uri if isinstance(uri, str) else None)
                name = html.escape(str(info["title"].get(pid, pid)))[:60]
                frame = "rel" if grade >= min_grade else ""
                photo = (f"<img class='{frame}' src='{cache[pid]}' title='{name}'>"
                         if cache[pid] else f"<div class='nophoto {frame}'>no photo</div>")
                cells.append(f"<td>{photo}<br>{name}<br>grade {grade}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def decision_header(decision: Mapping, results: Mapping[str, object], metric: str) -> str:
    """The gate decision, its reasons, and each model's metrics with 95% CIs over queries
    (``results``: label -> EvaluationResult) above the gallery."""
    rows = []
    for label, result in results.items():
        cells = []
        for name in SHOWN_METRICS:
            if name in result.metrics:
                ci = result.ci95(name)
                cells.append(f"<td>{result.metrics[name]:.4f} <small>[{ci['low']:.3f}, "
                             f"{ci['high']:.3f}]</small></td>")
            else:
                cells.append("<td>-</td>")
        rows.append(f"<tr><th>{html.escape(label)}</th>{''.join(cells)}</tr>")
    numbers = decision.get("metrics", {})
    gain = (f"<p>{html.escape(metric)} gain {numbers['gain']:+.4f}, 95% CI "
            f"[{numbers['gain_ci_low']:+.4f}, {numbers['gain_ci_high']:+.4f}] over "
            f"{int(numbers.get('queries', 0))} test queries</p>") if "gain" in numbers else ""
    verdict = str(decision.get("decision", "")).lower()
    reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in decision.get("reasons", []))
    return (f"<h2 class='{verdict}'>Gate decision: {html.escape(verdict)}"
            f"{' (forced)' if decision.get('forced') else ''}</h2><ul>{reasons}</ul>{gain}"
            "<table class='metrics'><tr><th></th>"
            + "".join(f"<th>{m}</th>" for m in SHOWN_METRICS) + "</tr>" + "".join(rows)
            + "</table>")
