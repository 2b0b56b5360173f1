"""HTML review gallery: top-10 photos per sample query, challenger beside champion."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from fusion_model import storage
from fusion_model.features import MAX_IMAGE_PIXELS

THUMBNAIL = 96


def thumbnail(uri: str | None) -> str:
    """A small inline JPEG (data URI) so the gallery is one self-contained file."""
    if not uri:
        return ""
    try:
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                return ""  # the same pixel cap as every other decoder
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a broken photo must not break the gallery
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def build_gallery(queries: Mapping[str, str], rankings: Mapping[str, Mapping[str, Sequence[str]]],
                  qrels: Mapping[str, Mapping[str, int]], products, title: str,
                  sample: int = 20, top: int = 10, seed: int = 0) -> str:
    """``rankings`` maps a model label (e.g. "challenger v3") to {query_id: product ids}."""
    info = products.set_index("product_id")[["title", "image_uri"]]
    query_ids = sorted(queries)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(query_ids, size=min(sample, len(query_ids)), replace=False))
    cache: dict[str, str] = {}
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif} td{vertical-align:top;font-size:11px;width:100px}"
             "img{width:96px;height:96px;object-fit:contain;border:4px solid #ddd}"
             "img.rel{border-color:#2a2} .label{font-weight:bold;width:140px}"
             "</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             "<p>Green border: judged relevant (grade &ge; 1); grade shown under each photo."
             "</p>"]
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
                cells.append(f"<td><img class='{'rel' if grade else ''}' src='{cache[pid]}' "
                             f"title='{name}'><br>{name}<br>grade {grade}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
