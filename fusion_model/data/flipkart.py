"""Importer for the Flipkart products sample (``products.csv`` + ``images/``).

Seven verticals (watches, baby care, computers, kitchen, home decor, furnishing, beauty).
Products keep Flipkart's name and description. Queries come from the category path (the
second level, "Wrist Watches", and the third where it names a kind, not a brand), the
specifications' colour and material, and who it is for, graded by how many of them a
product matches. With ``sparse_titles`` a fraction of products lose every colour word from
their name and description, so that for colour queries only the photo tells.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd

from fusion_model.data.catalog import check_product_ids
from fusion_model.data.importing import (
    attribute_queries,
    basic_colour,
    check_fraction,
    check_image_paths,
    colour_words,
    image_column,
    save_import,
    strip_chosen,
)
from fusion_model.data.judging import judgments_for
from fusion_model.errors import CatalogError

REQUIRED_COLUMNS = ("pid", "product_name", "product_category_tree", "image", "description",
                    "product_specifications")
QUERY_TEMPLATES = (("category",), ("category", "type"), ("category", "colour"),
                   ("category", "material"), ("category", "audience"),
                   ("category", "colour", "audience"), ("category", "type", "colour"))
# Who a product is for, from its "Ideal For" list; a query for one accepts products for both.
AUDIENCES = (({"baby boy's", "baby boys"}, "baby boys"), ({"baby girl's", "baby girls"},
             "baby girls"), ({"boys"}, "boys"), ({"girls"}, "girls"), ({"men"}, "men"),
             ({"women"}, "women"))
BOTH = {frozenset({"men", "women"}): "unisex", frozenset({"boys", "girls"}): "kids",
        frozenset({"baby boys", "baby girls"}): "babies"}
AUDIENCE_EQUIVALENTS = {"audience": {"men": {"unisex"}, "women": {"unisex"}, "boys": {"kids"},
                                     "girls": {"kids"}, "baby boys": {"babies"},
                                     "baby girls": {"babies"}}}
# Values that make no query: a query names one audience and one colour.
EXCLUDED = {"audience": {"unisex", "kids", "babies"}, "colour": {"multicolour"}}
ATTRIBUTES = ("category", "type", "colour", "material", "audience")


def import_flipkart(source: str, out: str, sparse_titles: float = 0.0, n_queries: int = 2000,
                    seed: int = 0, copy_photos: bool = False) -> str:
    """Convert the Flipkart sample at ``source`` into a catalog at ``out``; products whose
    photo is absent from ``source`` are left out (the sample lacks 3)."""
    check_fraction("sparse_titles", sparse_titles)
    rows = read_products(source)
    products = products_from_rows(rows, source, copy_photos)
    rng = np.random.default_rng(seed)
    sparse = rng.random(len(products)) < sparse_titles
    strip_chosen(products, sparse, ("title", "description"), colour_words())
    queries = attribute_queries(products, QUERY_TEMPLATES, n_queries, rng, query_text,
                                "flipkart", EXCLUDED)
    judgments = judgments_for(queries, products[list(ATTRIBUTES)], products["product_id"],
                              "category", AUDIENCE_EQUIVALENTS)
    return save_import("flipkart", source, out, products, queries, judgments,
                       photos=rows["image"].tolist() if copy_photos else None, sparse=sparse,
                       sparse_titles=sparse_titles, seed=seed)


def read_products(source: str) -> pd.DataFrame:
    """``products.csv`` rows whose photo is present, with the category path and the
    specifications parsed."""
    path = os.path.join(source, "products.csv")
    if not os.path.isfile(path):
        raise CatalogError(path, "Flipkart source has no products.csv",
                           detail="point --source at the folder holding products.csv and images/")
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise CatalogError(path, f"missing required column(s) {', '.join(missing)}")
    check_product_ids(rows["pid"], path)
    check_image_paths(rows["image"].map(lambda name: f"images/{name}"), path)
    rows["image"] = "images/" + rows["image"]
    present = rows["image"].map(lambda img: os.path.isfile(os.path.join(source, img)))
    if not present.any():
        raise CatalogError(path, "none of the photos named in image is present",
                           detail=f"looked under {os.path.abspath(source)}/images")
    rows = rows[present].reset_index(drop=True)
    rows["path"] = rows["product_category_tree"].map(category_path)
    rows["specifications"] = rows["product_specifications"].map(specifications)
    return rows


def category_path(tree: str) -> list[str]:
    """'["Watches >> Wrist Watches >> Sonata Wrist Watches >> ..."]' -> the levels."""
    return [level.strip() for level in tree.strip().strip("[]").strip('"').split(">>")]


def specifications(text: str) -> dict[str, str]:
    """Flipkart's Ruby-hash specification list as {key: value} (first value per key)."""
    pairs = re.findall(r'"key"=>"([^"]*)",\s*"value"=>"([^"]*)"', text or "")
    found: dict[str, str] = {}
    for key, value in pairs:
        found.setdefault(key.strip(), value.strip())
    return found


def products_from_rows(rows: pd.DataFrame, source: str, copy_photos: bool) -> pd.DataFrame:
    """Catalog rows: Flipkart's name and description, the photo and the attributes."""
    specs = rows["specifications"]
    return pd.DataFrame({
        "product_id": rows["pid"].astype(str),
        "title": rows["product_name"].str.strip(),
        "description": rows["description"].str.replace(r"\s+", " ", regex=True).str.strip(),
        "image": image_column(rows["image"], source, copy_photos),
        "category": rows["path"].map(lambda path: path[1].lower() if len(path) > 1 else None),
        "type": rows["path"].map(kind_of),
        "colour": specs.map(lambda s: basic_colour(s.get("Color"))),
        "material": specs.map(lambda s: material(s.get("Material"))),
        "audience": specs.map(lambda s: audience(s.get("Ideal For"))),
    })


def kind_of(path: list[str]) -> str | None:
    """The third level when it names a kind of product ("Deodorants"), not a brand's shelf
    ("Sonata Wrist Watches") or the product itself (the last level)."""
    if len(path) < 4 or path[2].lower().endswith(path[1].lower()):
        return None
    return path[2].lower()


def material(text: str | None) -> str | None:
    """The first material listed, lower case ("Stoneware, Wooden" -> "stoneware")."""
    first = re.split(r"[,/&]|\band\b", text or "")[0].strip().lower()
    return first or None


def audience(ideal_for: str | None) -> str | None:
    """"Men, Women" -> "unisex"; "Baby Girl's" -> "baby girls"; None when not given."""
    if not ideal_for:
        return None
    named = {part.strip().lower() for part in re.split(r",|\band\b", ideal_for) if part.strip()}
    groups = {name for spellings, name in AUDIENCES if named & spellings}
    if len(groups) == 1:
        return groups.pop()
    return BOTH.get(frozenset(groups))


def query_text(attributes: dict[str, str]) -> str:
    """'[colour] [material] kind-or-category [for audience]': "black wrist watches for men"."""
    noun = attributes.get("type") or attributes["category"]
    words = [w for w in (attributes.get("colour"), attributes.get("material"), noun) if w]
    text = " ".join(dict.fromkeys(" ".join(words).split()))
    return f"{text} for {attributes['audience']}" if "audience" in attributes else text
