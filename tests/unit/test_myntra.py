"""The Myntra importer on the real 9,261-product sample and on tiny hand-made inputs."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from fusion_model.data.catalog import load_catalog
from fusion_model.data.myntra import import_myntra, query_text, strip_words
from fusion_model.errors import CatalogError


@pytest.fixture(scope="module")
def myntra_catalog(myntra_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("myntra") / "catalog"
    import_myntra(str(myntra_source), str(out), sparse_titles=0.5)
    return out


def test_imports_all_products_with_queries_and_judgments(myntra_catalog, myntra_source):
    catalog = load_catalog(str(myntra_catalog))
    summary = catalog.summary()
    assert summary["products"] == 9261 == summary["products_with_image"]
    assert summary["queries"]["test"] > 200 and summary["queries"]["val"] > 200
    assert summary["judgments"][3] > summary["queries"]["test"]
    assert {"category", "colour", "gender", "usage"} <= set(catalog.attribute_columns)
    first = catalog.products.set_index("product_id").loc["15970"]
    assert first["image_uri"] == str(myntra_source / "images" / "15970.jpg")
    assert first["category"] == "Shirts" and first["colour"] == "Navy Blue"
    assert "blue" not in first["description"].lower()  # colour only in the title / photo


def test_sparse_titles_strip_colours_from_about_half(myntra_catalog, myntra_source):
    styles = pd.read_csv(myntra_source / "styles.csv", dtype=str)
    catalog = load_catalog(str(myntra_catalog))
    titles = catalog.products.set_index("product_id")["title"]
    originals = styles.set_index("id")["productDisplayName"]
    changed = (titles != originals.reindex(titles.index)).mean()
    assert 0.35 < changed < 0.55  # half were picked; some had no colour/pattern word
    had_colour = [(pid, col) for pid, col in zip(styles["id"], styles["baseColour"])
                  if isinstance(col, str) and col.lower() in originals[pid].lower()]
    kept = sum(col.lower() in titles[pid].lower() for pid, col in had_colour)
    assert 0.4 < kept / len(had_colour) < 0.6


def test_import_is_deterministic(myntra_source, tmp_path):
    digests = []
    for name in ("a", "b"):
        import_myntra(str(myntra_source), str(tmp_path / name), sparse_titles=0.3, n_queries=300)
        digests.append({f: hashlib.sha256((tmp_path / name / f).read_bytes()).hexdigest()
                        for f in ("products.parquet", "queries.parquet", "judgments.parquet")})
    assert digests[0] == digests[1]


def test_strip_words_handles_phrases_and_case():
    words = ["navy blue", "blue", "stripes", "solid"]
    assert strip_words("U.S. Polo Men Stripes Navy Blue Shirt", words) == "U.S. Polo Men Shirt"
    assert strip_words("Bluebird Solid Tee", words) == "Bluebird Tee"


def test_query_text_reads_naturally():
    assert query_text({"category": "Casual Shoes", "usage": "Casual", "colour": "Black",
                       "gender": "Men"}) == "black casual shoes for men"
    assert query_text({"category": "Tshirts", "colour": "Navy Blue"}) == "navy blue t-shirts"


def test_copy_images_makes_a_self_contained_catalog(tmp_path):
    source = tmp_path / "src"
    (source / "images").mkdir(parents=True)
    rows = []
    for i, colour in enumerate(["Red", "Blue", "Red", "Black"]):
        (source / "images" / f"{i}.jpg").write_bytes(b"jpeg bytes %d" % i)
        rows.append({"id": i, "gender": "Men", "masterCategory": "Apparel",
                     "subCategory": "Topwear", "articleType": "Shirts", "baseColour": colour,
                     "season": "Fall", "usage": "Casual",
                     "productDisplayName": f"Brand Men {colour} Striped Shirt",
                     "colorgroup": colour, "image": f"images/{i}.jpg"})
    pd.DataFrame(rows).to_csv(source / "styles.csv", index=False)
    import_myntra(str(source), str(tmp_path / "out"), sparse_titles=1.0, copy_images=True)
    catalog = load_catalog(str(tmp_path / "out"))
    assert (tmp_path / "out" / "images" / "3.jpg").read_bytes() == b"jpeg bytes 3"
    assert catalog.products["image_uri"].tolist()[0] == str(tmp_path / "out" / "images" / "0.jpg")
    assert catalog.products["title"].tolist() == ["Brand Men Shirt"] * 4


def test_missing_styles_csv_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogError, match="no styles.csv"):
        import_myntra(str(tmp_path), str(tmp_path / "out"))
