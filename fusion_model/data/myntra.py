"""Importer for the Myntra fashion sample (``styles.csv`` + ``images/<id>.jpg``).

Maps its columns to the catalog format, derives queries from attribute combinations
(gender, colour, article type, usage) with graded judgments, and can strip colour and
pattern words from a fraction of titles to simulate sparse seller text.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from fusion_model.data.catalog import check_product_ids
from fusion_model.data.importing import (
    check_fraction,
    check_image_paths,
    image_column,
    pick_queries,
    save_import,
    strip_chosen,
    strip_words,
)
from fusion_model.data.judging import judgments_for
from fusion_model.errors import CatalogError

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
    check_fraction("sparse_titles", sparse_titles)
    styles = _read_styles(source)
    rng = np.random.default_rng(seed)
    products = products_from_styles(styles, source, copy_images)
    colour_words = sorted({*styles["baseColour"].dropna().str.lower(),
                           *styles.get("colorgroup", pd.Series(dtype=str)).dropna().str.lower(),
                           *EXTRA_COLOUR_WORDS}, key=len, reverse=True)
    sparse = rng.random(len(products)) < sparse_titles
    strip_chosen(products, sparse, ("title",), [*colour_words, *PATTERN_WORDS], strip_words)
    queries = sample_queries(products, n_queries, rng)
    judgments = judgments_for(queries, products[["category", "colour", "gender", "usage"]],
                              products["product_id"], "category", GENDER_EQUIVALENTS)
    return save_import("myntra", source, out, products, queries, judgments,
                       photos=styles["image"].tolist() if copy_images else None,
                       sparse=sparse, sparse_titles=sparse_titles, seed=seed)


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
    check_image_paths(styles["image"], path)
    return styles


def products_from_styles(styles: pd.DataFrame, source: str, copy_images: bool) -> pd.DataFrame:
    """Catalog products: title, an attribute description without colour, and attributes."""
    products = pd.DataFrame({
        "product_id": styles["id"].astype(str),
        "title": styles["productDisplayName"].fillna(""),
        "description": [
            f"{m} > {s} > {a}. {u or 'Everyday'} wear, {se} collection."
            for m, s, a, u, se in zip(styles["masterCategory"], styles["subCategory"],
                                      styles["articleType"], styles["usage"], styles["season"])
        ],
        "image": image_column(styles["image"], source, copy_images),
    })
    for column, name in ATTRIBUTE_COLUMNS.items():
        if column in styles.columns:
            products[name] = styles[column]
    return products


def sample_queries(products: pd.DataFrame, n: int, rng: np.random.Generator) -> list[dict]:
    """Distinct attribute combinations that at least one product has exactly."""
    candidates = []
    for template in QUERY_TEMPLATES:
        columns = ["category", *template]
        combos = products[columns].dropna().drop_duplicates()
        if "gender" in template:
            combos = combos[combos["gender"].isin(["Men", "Women", "Boys", "Girls"])]
        candidates += [dict(zip(columns, values)) for values in combos.itertuples(index=False)]
    return pick_queries(candidates, n, rng, query_text, salt="myntra")


def query_text(attributes: dict[str, str]) -> str:
    """'[usage] [colour] article [for gender]', lower case, no repeated words."""
    article = ARTICLE_WORDS.get(attributes["category"], attributes["category"]).lower()
    words = [attributes.get("usage"), attributes.get("colour"), article]
    words = [w.lower() for w in words if w]
    words = [w for w in words if w == article or w not in article]
    text = " ".join(words)
    return f"{text} for {attributes['gender'].lower()}" if "gender" in attributes else text
