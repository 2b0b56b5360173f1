"""The IKEA and Flipkart importers on the real samples and on tiny hand-made inputs, and
the helpers every importer shares."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from fusion_model.cli import main
from fusion_model.data.catalog import load_catalog
from fusion_model.data.flipkart import audience, category_path, import_flipkart, kind_of
from fusion_model.data.ikea import head_noun, import_ikea
from fusion_model.data.importing import basic_colour, colour_words, strip_phrases
from fusion_model.errors import CatalogError


@pytest.fixture(scope="module")
def ikea_catalog(ikea_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("ikea") / "catalog"
    import_ikea(str(ikea_source), str(out), sparse_titles=1.0)
    return load_catalog(str(out))


@pytest.fixture(scope="module")
def flipkart_catalog(flipkart_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("flipkart") / "catalog"
    import_flipkart(str(flipkart_source), str(out), sparse_titles=0.0)
    return load_catalog(str(out))


def query_attributes(catalog) -> pd.Series:
    return catalog.queries.set_index("query_id")["attributes"].map(json.loads)


def test_ikea_keeps_products_with_photos_and_ikea_text(ikea_catalog, ikea_source):
    summary = ikea_catalog.summary()
    assert summary["products"] == 2042 == summary["products_with_image"]
    assert min(summary["queries"].values()) > 150
    assert summary["judgments"][3] > summary["queries"]["test"]
    products = ikea_catalog.products.set_index("product_id")
    shelf = products.loc["000.114.28"]  # GRUNDTAL wall shelf, stainless steel (no colour)
    assert shelf["title"].startswith("GRUNDTAL Wall shelf") and "80 cm" in shelf["title"]
    assert (shelf["category"], shelf["type"]) == ("shelf", "wall shelf")
    assert pd.isna(shelf["colour"])
    assert shelf["image_uri"] == str(ikea_source / "images" / "objects" / "000.114.28.jpg")
    assert not products["description"].str.contains("View more product information").any()


def test_ikea_sparse_text_never_names_the_colour_the_queries_ask_for(ikea_catalog):
    products = ikea_catalog.products
    coloured = products.dropna(subset=["colour"])
    assert len(coloured) > 1000
    text = (coloured["title"] + " " + coloured["description"]).str.lower()
    named = [f" {colour}" in f" {words}" for colour, words in zip(coloured["colour"], text)]
    assert sum(named) / len(coloured) < 0.01  # every product lost its colour words
    assert products["title"].str.contains("HEMNES").any()  # and kept the rest


def test_ikea_grades_follow_kind_type_and_colour(ikea_catalog):
    products = ikea_catalog.products.set_index("product_id")
    attributes = query_attributes(ikea_catalog)
    query_id = next(q for q, a in attributes.items()
                    if set(a) == {"category", "type", "colour"}
                    and ((products["category"] == a["category"])
                         & (products["colour"] != a["colour"])).any())
    asked = attributes[query_id]
    grades = ikea_catalog.judgments.query("query_id == @query_id").set_index("product_id")["grade"]
    judged = products.loc[grades.index]
    assert (judged["category"] == asked["category"]).all()
    exact = ((judged["type"] == asked["type"]) & (judged["colour"] == asked["colour"])
             ).fillna(False).to_numpy(dtype=bool)
    assert (grades[exact] == 3).all() and (grades[~exact] == 1).all()
    same_kind = products[products["category"] == asked["category"]]
    unmatched = same_kind[((same_kind["type"] != asked["type"])
                           & (same_kind["colour"] != asked["colour"])).fillna(True)]
    assert not set(unmatched.index) & set(grades.index)  # nothing matched: not judged


def test_flipkart_attributes_from_category_path_and_specifications(flipkart_catalog):
    summary = flipkart_catalog.summary()
    assert summary["products"] == 1047 == summary["products_with_image"]
    assert summary["queries"]["train"] > 300 and summary["queries"]["test"] > 50
    products = flipkart_catalog.products.set_index("product_id")
    sheet = products.loc["BDSEJT9UQWHDUBH4"]  # SANTOSH ROYAL FASHION cotton bedsheet
    assert (sheet["category"], sheet["type"]) == ("bed linen", "bedsheets")
    assert (sheet["colour"], sheet["material"]) == ("multicolour", "cotton")
    assert "SANTOSH ROYAL FASHION" in sheet["title"]
    assert products["category"].nunique() > 40


def test_flipkart_query_for_men_accepts_unisex_products(flipkart_catalog):
    products = flipkart_catalog.products.set_index("product_id")
    attributes = query_attributes(flipkart_catalog)
    query_id = next(q for q, a in attributes.items() if a == {"category": "wrist watches",
                                                             "audience": "men"})
    assert flipkart_catalog.queries.set_index("query_id").loc[query_id, "text"] == \
        "wrist watches for men"
    grades = flipkart_catalog.judgments.query("query_id == @query_id").set_index(
        "product_id")["grade"]
    watches = products[products["category"] == "wrist watches"]
    expected = set(watches.index[watches["audience"].isin({"men", "unisex"})])
    assert set(grades.index[grades == 3]) == expected
    assert "women" not in set(products.loc[list(expected), "audience"])


@pytest.mark.parametrize("importer", [import_ikea, import_flipkart])
def test_real_imports_are_deterministic(importer, ikea_source, flipkart_source, tmp_path):
    source = ikea_source if importer is import_ikea else flipkart_source
    digests = []
    for name in ("a", "b"):
        importer(str(source), str(tmp_path / name), sparse_titles=0.3, n_queries=200)
        digests.append({f: hashlib.sha256((tmp_path / name / f).read_bytes()).hexdigest()
                        for f in ("products.parquet", "queries.parquet", "judgments.parquet")})
    assert digests[0] == digests[1]
    assert len(pd.read_parquet(tmp_path / "a" / "queries.parquet")) == 200


def write_tiny_ikea(source, img="images/objects/1.jpg") -> None:
    (source / "images" / "objects").mkdir(parents=True)
    items = []
    for i, (kind, colour) in enumerate([("Pendant lamp", "White"), ("Pendant lamp", "Black"),
                                        ("Work lamp", "White"), ("Table lamp", "Grey")]):
        (source / "images" / "objects" / f"{i}.jpg").write_bytes(b"jpeg %d" % i)
        items.append({"article": f"00{i}.000.00", "name": "LAMPA", "type": kind,
                      "color": colour, "size": "", "desc": f"A {colour.lower()} lamp.",
                      "img": f"images/objects/{i}.jpg"})
    items[1]["img"] = img
    (source / "products.json").write_text(json.dumps(items))


def test_ikea_copy_images_and_cli(tmp_path, capsys):
    write_tiny_ikea(tmp_path / "src")
    assert main(["catalog", "ikea", "--source", str(tmp_path / "src"), "--out",
                 str(tmp_path / "out"), "--sparse-titles", "1", "--copy-images"]) == 0
    assert "fingerprint" in capsys.readouterr().out
    catalog = load_catalog(str(tmp_path / "out"))
    assert (tmp_path / "out" / "images" / "objects" / "2.jpg").read_bytes() == b"jpeg 2"
    assert catalog.products["title"].tolist() == ["LAMPA Pendant lamp", "LAMPA Pendant lamp",
                                                  "LAMPA Work lamp", "LAMPA Table lamp"]
    assert "white pendant lamp" in set(catalog.queries["text"])


def test_ikea_photo_outside_the_source_is_refused_by_row(tmp_path):
    write_tiny_ikea(tmp_path / "src", img="../../etc/passwd")
    with pytest.raises(CatalogError, match="relative path inside the source") as error:
        import_ikea(str(tmp_path / "src"), str(tmp_path / "out"))
    assert "2" in str(error.value)  # the row


def test_missing_source_files_are_clear_errors(tmp_path):
    with pytest.raises(CatalogError, match="no products.json"):
        import_ikea(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(CatalogError, match="no products.csv"):
        import_flipkart(str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "products.csv").write_text("pid,product_name\nA,thing\n")
    with pytest.raises(CatalogError, match="missing required column"):
        import_flipkart(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="sparse_titles"):
        import_ikea(str(tmp_path), str(tmp_path / "out"), sparse_titles=1.5)


def test_basic_colour_reads_catalog_spellings():
    assert basic_colour("Softwood,white") == "white"
    assert basic_colour("Black-brown stain") == "brown"
    assert basic_colour("Off-white") == "white"
    assert basic_colour("In,outdoor,dark blue") == "blue"
    assert basic_colour("Multicolor") == "multicolour"
    assert basic_colour("Stainless steel") is None and basic_colour(None) is None


def test_strip_phrases_removes_colours_but_not_other_words():
    words = colour_words()
    assert strip_phrases("HEMNES Side table, black-brown, 90x200 cm", words) == \
        "HEMNES Side table, 90x200 cm"
    assert strip_phrases("Rama Floral Single Quilts Blue-Beige", words) == \
        "Rama Floral Single Quilts"
    assert strip_phrases("LED lamp in light grey gives a bright light", words) == \
        "LED lamp in gives a bright light"


def test_kinds_and_audiences():
    assert head_noun("pendant lamp") == "lamp" and head_noun("box with lid") == "box"
    path = category_path('["Watches >> Wrist Watches >> Sonata Wrist Watches >> Sonata 1"]')
    assert path[1] == "Wrist Watches" and kind_of(path) is None  # a brand's shelf
    assert kind_of(category_path('["Home >> Bed Linen >> Bedsheets >> X >> Y"]')) == "bedsheets"
    assert audience("Men, Women") == "unisex" and audience("Baby Girl's") == "baby girls"
    assert audience("Boys and Girls") == "kids" and audience(None) is None
