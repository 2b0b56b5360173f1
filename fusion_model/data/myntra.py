"""Importer for the Myntra fashion sample (``styles.csv`` + ``images/<id>.jpg``).

Maps its columns to the catalog format, derives queries from attribute combinations
(gender, colour, article type, usage) with graded judgments, and can strip colour and
pattern words from a fraction of titles to simulate sparse seller text.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from fusion_model import storage
from fusion_model.data.catalog import check_product_ids, climbs_out, write_catalog
from fusion_model.data.judging import assign_splits, judgments_for, queries_frame
from fusion_model.errors import CatalogError
from fusion_model.storage.core import parallel_map

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "gender", "masterCategory", "subCategory", "articleType",
                    "baseColour", "season", "usage", "productDisplayName", "image")
ATTRIBUTE_COLUMNS = {"articleType": "category", "gender": "gender", "baseColour": "colour",
                     "colorgroup": "colour_group", "masterCategory": "master_category",
                     "subCategory": "sub_category", "season": "season", "usage": "usage"}
QUERY_TEMPLATES = (("colour",), ("gender",), ("colour", "gender"), ("usage",),
                   ("colour", "usage"), ("gender", "usage"), ("colour", "gender", "usage"))
GENDER_EQUIVALENTS = {"gender": {"Men": {"Unisex"}, "Women": {"Unisex"}}}
PATTERN_WORDS = ("solid", "striped", "stripes", "stripe", "checked", "checks", "check",
                 "checkered", "printed", "prints", "print", "floral", "polka", "dotted",
                 "dots", "colourblocked", "colorblocked", "self design", "melange")
EXTRA_COLOUR_WORDS = ("torquoise", "turquoise", "light", "dark", "navy", "multicolour",
                      "multi-coloured", "multicoloured")
ARTICLE_WORDS = {"Tshirts": "t-shirts", "Kurtis": "kurtis", "Track Pants": "track pants"}


def import_myntra(source: str, out: str, sparse_titles: float = 0.0, n_queries: int = 2000,
                  seed: int = 0, copy_images: bool = False) -> str:
    """Convert the Myntra sample at ``source`` into a catalog at ``out``."""
    if not 0.0 <= sparse_titles <= 1.0:
        raise ValueError(f"sparse_titles must be within [0, 1], got {sparse_titles}")
    styles = _read_styles(source)
    rng = np.random.default_rng(seed)
    products = products_from_styles(styles, source, copy_images)
    colour_words = sorted({*styles["baseColour"].dropna().str.lower(),
                           *styles.get("colorgroup", pd.Series(dtype=str)).dropna().str.lower(),
                           *EXTRA_COLOUR_WORDS}, key=len, reverse=True)
    sparse = rng.random(len(products)) < sparse_titles
    products.loc[sparse, "title"] = products.loc[sparse, "title"].map(
        lambda t: strip_words(t, [*colour_words, *PATTERN_WORDS]))
    queries = sample_queries(products, n_queries, rng)
    judgments = judgments_for(queries, products[["category", "colour", "gender", "usage"]],
                              products["product_id"], "category", GENDER_EQUIVALENTS)
    root = write_catalog(out, products, queries_frame(queries), judgments)
    if copy_images:
        _copy_images(source, root, styles)
    manifest = {"importer": "fusion_model.data.myntra", "source": os.path.abspath(source),
                "sparse_titles": sparse_titles, "sparse_title_count": int(sparse.sum()),
                "seed": seed, "products": len(products), "queries": len(queries)}
    storage.write_bytes(storage.join(root, "catalog.json"),
                        json.dumps(manifest, indent=2, sort_keys=True).encode())
    log.info("myntra catalog: %d products (%d sparse titles), %d queries, %d judgments -> %s",
             len(products), int(sparse.sum()), len(queries), len(judgments), root)
    return root


def _read_styles(source: str) -> pd.DataFrame:
    path = os.path.join(source, "styles.csv")
    if not os.path.isfile(path):
        raise CatalogError(path, "Myntra source has no styles.csv",
                           detail="point --source at the folder holding styles.csv and images/")
    styles = pd.read_csv(path, dtype=str, keep_default_na=False).replace("", None)
    missing = [c for c in REQUIRED_COLUMNS if c not in styles.columns]
    if missing:
        raise CatalogError(path, f"missing required column(s) {', '.join(missing)}")
    check_product_ids(styles["id"].astype(str), path)
    _check_image_paths(styles["image"], path)
    return styles


def _check_image_paths(images: pd.Series, path: str) -> None:
    """Image references must be relative paths inside the source folder (no '..')."""
    def leaves(image) -> bool:
        path = str(image or "").replace("\\", "/")
        return PurePosixPath(path).is_absolute() or climbs_out(path) or "://" in path

    bad = images.map(leaves)
    if bad.any():
        rows = [int(i) + 1 for i in bad[bad].index]
        raise CatalogError(path, "image must be a relative path inside the source folder",
                           rows=rows, detail=f"found {images[bad].iloc[0]!r}")


def products_from_styles(styles: pd.DataFrame, source: str, copy_images: bool) -> pd.DataFrame:
    """Catalog products: title, an attribute description without colour, and attributes."""
    source = os.path.abspath(source)
    products = pd.DataFrame({
        "product_id": styles["id"].astype(str),
        "title": styles["productDisplayName"].fillna(""),
        "description": [
            f"{m} > {s} > {a}. {u or 'Everyday'} wear, {se} collection."
            for m, s, a, u, se in zip(styles["masterCategory"], styles["subCategory"],
                                      styles["articleType"], styles["usage"], styles["season"])
        ],
        "image": [img if copy_images else os.path.join(source, img) for img in styles["image"]],
    })
    for column, name in ATTRIBUTE_COLUMNS.items():
        if column in styles.columns:
            products[name] = styles[column]
    return products


def strip_words(title: str, words: list[str]) -> str:
    """Remove whole words/phrases (case-insensitive) and tidy the spaces left behind."""
    pattern = r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b"
    return re.sub(r"\s+", " ", re.sub(pattern, " ", title, flags=re.IGNORECASE)).strip()


def sample_queries(products: pd.DataFrame, n: int, rng: np.random.Generator) -> list[dict]:
    """Distinct attribute combinations that at least one product has exactly."""
    candidates = []
    for template in QUERY_TEMPLATES:
        columns = ["category", *template]
        combos = products[columns].dropna().drop_duplicates()
        if "gender" in template:
            combos = combos[combos["gender"].isin(["Men", "Women", "Boys", "Girls"])]
        candidates += [dict(zip(columns, values)) for values in combos.itertuples(index=False)]
    candidates.sort(key=lambda q: json.dumps(q, sort_keys=True))
    chosen = rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)
    queries = [{"attributes": candidates[i], "text": query_text(candidates[i])}
               for i in sorted(chosen)]
    queries = list({q["text"]: q for q in queries}.values())
    splits = assign_splits([q["text"] for q in queries], salt="myntra")
    for i, (query, split) in enumerate(zip(queries, splits)):
        query["query_id"], query["split"] = f"Q{i:05d}", split
    return queries


def query_text(attributes: dict[str, str]) -> str:
    """'[usage] [colour] article [for gender]', lower case, no repeated words."""
    article = ARTICLE_WORDS.get(attributes["category"], attributes["category"]).lower()
    words = [attributes.get("usage"), attributes.get("colour"), article]
    words = [w.lower() for w in words if w]
    words = [w for w in words if w == article or w not in article]
    text = " ".join(words)
    return f"{text} for {attributes['gender'].lower()}" if "gender" in attributes else text


def _copy_images(source: str, root: str, styles: pd.DataFrame) -> None:
    def copy_one(relative: str) -> None:
        storage.write_bytes(storage.join_within(root, relative),
                            storage.read_bytes(storage.join_within(source, relative)))

    parallel_map(copy_one, styles["image"].tolist())


