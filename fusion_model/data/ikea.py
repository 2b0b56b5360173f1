"""Importer for the IKEA interior sample (``products.json`` + ``images/``).

Products keep IKEA's own text (line name, type, colour, size and the product sentence).
Queries come from the product's kind (the type's head noun: "lamp"), its type ("pendant
lamp") and its basic colour ("white"), graded by how many of them a product matches. With
``sparse_titles`` a fraction of products lose every colour word from their text, so that
for colour queries only the photo tells.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

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

REQUIRED_KEYS = ("article", "name", "type", "color", "desc", "img")
BOILERPLATE = "View more product information"
QUERY_TEMPLATES = (("category",), ("category", "colour"), ("category", "type"),
                   ("category", "type", "colour"))


def import_ikea(source: str, out: str, sparse_titles: float = 0.0, n_queries: int = 2000,
                seed: int = 0, copy_photos: bool = False) -> str:
    """Convert the IKEA sample at ``source`` into a catalog at ``out``; products whose
    photo is absent from ``source`` are left out (the sample lacks 149)."""
    check_fraction("sparse_titles", sparse_titles)
    items = read_products(source)
    products = products_from_items(items, source, copy_photos)
    rng = np.random.default_rng(seed)
    sparse = rng.random(len(products)) < sparse_titles
    strip_chosen(products, sparse, ("title", "description"), colour_words())
    queries = attribute_queries(products, QUERY_TEMPLATES, n_queries, rng, query_text, "ikea")
    judgments = judgments_for(queries, products[["category", "type", "colour"]],
                              products["product_id"], "category")
    return save_import("ikea", source, out, products, queries, judgments,
                       photos=items["img"].tolist() if copy_photos else None, sparse=sparse,
                       sparse_titles=sparse_titles, seed=seed)


def read_products(source: str) -> pd.DataFrame:
    """``products.json`` as a frame of the products whose photo is present."""
    path = os.path.join(source, "products.json")
    if not os.path.isfile(path):
        raise CatalogError(path, "IKEA source has no products.json",
                           detail="point --source at the folder holding products.json and images/")
    try:
        items = pd.DataFrame(json.loads(Path(path).read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise CatalogError(path, "products.json is not a JSON list of objects",
                           detail=str(error)) from None
    missing = [key for key in REQUIRED_KEYS if key not in items.columns]
    if missing:
        raise CatalogError(path, f"missing required key(s) {', '.join(missing)}")
    items = items.astype({key: "string" for key in REQUIRED_KEYS}).fillna("")
    check_product_ids(items["article"], path)
    check_image_paths(items["img"], path)
    present = items["img"].map(lambda img: os.path.isfile(os.path.join(source, img)))
    if not present.any():
        raise CatalogError(path, "none of the photos named in img is present",
                           detail=f"looked under {os.path.abspath(source)}")
    return items[present].reset_index(drop=True)


def products_from_items(items: pd.DataFrame, source: str, copy_photos: bool) -> pd.DataFrame:
    """Catalog rows: IKEA's title ("HEMNES Side table, black-brown, 55x40 cm"), the product
    sentence, the photo and the attributes queries are made of."""
    kinds = items["type"].map(type_name)
    categories = kinds.map(head_noun)
    sizes = (items["size"].fillna("").astype(str) if "size" in items
             else pd.Series("", index=items.index))
    return pd.DataFrame({
        "product_id": items["article"].astype(str),
        "title": [title(*row) for row in zip(items["name"], items["type"], items["color"],
                                             sizes)],
        "description": items["desc"].str.replace(BOILERPLATE, " ", regex=False)
                                    .str.replace(r"\s+", " ", regex=True).str.strip(),
        "image": image_column(items["img"], source, copy_photos),
        "category": categories,
        "type": kinds.where(kinds != categories),  # none when it only repeats the kind
        "colour": items["color"].map(basic_colour),
    })


def title(name: str, kind: str, colour: str, size: str) -> str:
    """As IKEA writes it: "HEMNES Side table, black-brown, 55x40 cm"."""
    return ", ".join(part for part in (f"{name} {kind}".strip(), colour.lower(), size) if part)


def type_name(raw: str) -> str:
    """The product type before its qualifiers, lower case ("Rug, flatwoven" -> "rug")."""
    return raw.split(",")[0].strip().lower()


def head_noun(kind: str) -> str:
    """The word that says what it is: "pendant lamp" -> "lamp", "box with lid" -> "box"."""
    words = re.split(r"\b(?:with|for|and|in)\b", kind)[0].split()
    return words[-1] if words else kind


def query_text(attributes: dict[str, str]) -> str:
    """'[colour] type-or-kind', lower case: "white pendant lamp"."""
    noun = attributes.get("type") or attributes["category"]
    return " ".join(w for w in (attributes.get("colour"), noun) if w)
