"""The synthetic catalog: deterministic, realistic, and answerable only with both modalities."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusion_model.data.catalog import load_catalog
from fusion_model.data.judging import assign_splits, grade_products
from fusion_model.data.synthetic import (
    COLOURS,
    PhotoRenderer,
    generate_synthetic_catalog,
)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_synthetic_catalog(str(tmp_path / name), n_products=60, seed=seed,
                                   progress=False)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_catalog_loads_and_has_every_split(synthetic_catalog):
    catalog = load_catalog(str(synthetic_catalog))
    summary = catalog.summary()
    assert summary["products"] == 300
    assert 0.9 * 300 <= summary["products_with_image"] < 300  # a few products lack a photo
    assert all(count > 0 for count in summary["queries"].values())
    assert set(catalog.attribute_columns) == {"category", "colour", "pattern", "material",
                                              "brand", "gender"}


def test_every_query_has_an_exact_match(synthetic_catalog):
    catalog = load_catalog(str(synthetic_catalog))
    best = catalog.judgments.groupby("query_id")["grade"].max()
    assert set(best.index) == set(catalog.queries["query_id"])
    assert (best == 3).all()


def test_photos_show_the_true_colour(synthetic_catalog):
    catalog = load_catalog(str(synthetic_catalog))
    solid = catalog.products[(catalog.products["pattern"] == "solid")
                             & catalog.products["image"].notna()].head(20)
    for row in solid.itertuples():
        pixels = np.asarray(Image.open(row.image_uri).convert("RGB")).reshape(-1, 3).astype(int)
        foreground = pixels[np.abs(pixels - 250).sum(axis=1) > 30]
        if row.colour == "white":
            continue  # white on white: only the outline differs
        nearest = min(COLOURS, key=lambda c: np.abs(np.median(foreground, axis=0)
                                                    - COLOURS[c]).sum())
        assert nearest == row.colour, row


def test_text_alone_cannot_answer_every_visual_query(synthetic_catalog):
    """Titles often omit or misstate colour: many exact matches never say their colour."""
    catalog = load_catalog(str(synthetic_catalog))
    products = catalog.products.set_index("product_id")
    exact = catalog.judgments[catalog.judgments["grade"] == 3]
    queries = catalog.queries.set_index("query_id")
    silent, wrong = 0, 0
    for qid, pid in exact[["query_id", "product_id"]].itertuples(index=False):
        attrs = json.loads(queries.loc[qid, "attributes"])
        if "colour" not in attrs:
            continue
        text = f"{products.loc[pid, 'title']} {products.loc[pid, 'description']}".lower()
        mentioned = [c for c in COLOURS if c in text.split()]
        silent += not mentioned
        wrong += bool(mentioned) and attrs["colour"] not in mentioned
    assert silent > 20 and wrong > 0


def test_image_alone_cannot_answer_brand_or_material_queries(synthetic_catalog):
    """Brand and material live only in text; the renderer never sees them."""
    catalog = load_catalog(str(synthetic_catalog))
    attrs = [json.loads(a) for a in catalog.queries["attributes"]]
    assert sum("brand" in a for a in attrs) > 5 and sum("material" in a for a in attrs) > 5
    renderer = PhotoRenderer()
    # The photo depends only on (category, colour, pattern, seed).
    assert renderer.render("shirt", "red", "striped", 1) == renderer.render(
        "shirt", "red", "striped", 1)


def test_grading_rules():
    import pandas as pd

    products = pd.DataFrame({"category": ["shirt"] * 4 + ["cap"],
                             "colour": ["red", "red", "blue", "blue", "red"],
                             "pattern": ["striped", "solid", "striped", "solid", "striped"],
                             "gender": ["men", "unisex", "women", "men", "men"]})
    query = {"category": "shirt", "colour": "red", "pattern": "striped"}
    assert grade_products(query, products, "category").tolist() == [3, 1, 1, 0, 0]
    query3 = {**query, "gender": "men"}
    eq = {"gender": {"men": {"unisex"}}}
    assert grade_products(query3, products, "category", eq).tolist() == [3, 2, 1, 1, 0]
    assert grade_products({"category": "cap", "colour": "red"}, products,
                          "category").tolist() == [0, 0, 0, 0, 3]


@pytest.mark.parametrize("n", [1, 2, 3, 10, 200])
def test_splits_are_deterministic_and_cover_val_and_test(n):
    keys = [f"query {i}" for i in range(n)]
    splits = assign_splits(keys)
    assert splits == assign_splits(list(keys))
    if n >= 3:
        assert {"train", "val", "test"} <= set(splits)
    if n == 200:
        assert splits.count("train") == 140 and splits.count("test") == 30


def test_rejects_tiny_catalogs(tmp_path):
    with pytest.raises(ValueError, match="at least 10"):
        generate_synthetic_catalog(str(tmp_path), n_products=3)
