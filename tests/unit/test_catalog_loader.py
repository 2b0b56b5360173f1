"""The loader's contract: formats, typing, image resolution, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fusion_model.data.catalog import load_catalog, write_catalog
from fusion_model.errors import CatalogError


def write_tables(root: Path, products, queries=None, judgments=None, fmt="csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("products", products), ("queries", queries), ("judgments", judgments)):
        if rows is not None:
            frame = pd.DataFrame(rows)
            path = root / f"{name}.{fmt}"
            if fmt == "csv":
                frame.to_csv(path, index=False)
            elif fmt == "jsonl":
                frame.to_json(path, orient="records", lines=True)
            else:
                frame.to_parquet(path, index=False)
    return root


PRODUCTS = [
    {"product_id": "a1", "title": "Red shirt", "description": "cotton", "image": "img/a1.jpg",
     "colour": "red"},
    {"product_id": "a2", "title": "Blue jeans", "description": "", "image": "", "colour": "blue"},
    {"product_id": "a3", "title": "Green cap", "description": "wool",
     "image": "s3://bucket/x/a3.jpg", "colour": "green"},
]
QUERIES = [{"query_id": "q1", "text": "red shirt", "split": "train"},
           {"query_id": "q2", "text": "blue jeans", "split": "test"}]
JUDGMENTS = [{"query_id": "q1", "product_id": "a1", "grade": 3},
             {"query_id": "q2", "product_id": "a2", "grade": 2}]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_all_three_formats_load_to_the_same_typed_frames(tmp_path, fmt):
    catalog = load_catalog(str(write_tables(tmp_path / fmt, PRODUCTS, QUERIES, JUDGMENTS, fmt)))
    products = catalog.products.set_index("product_id")
    assert list(products.index) == ["a1", "a2", "a3"]
    assert products.loc["a1", "image_uri"] == str(tmp_path / fmt / "img" / "a1.jpg")
    assert products.loc["a2", "image"] is None and products.loc["a2", "image_uri"] is None
    assert products.loc["a3", "image_uri"] == "s3://bucket/x/a3.jpg"
    assert products.loc["a2", "description"] == ""
    assert catalog.attribute_columns == ["colour"]
    assert catalog.judgments["grade"].dtype == "int8"
    assert catalog.qrels("test") == {"q2": {"a2": 2}}
    assert catalog.qrels() == {"q1": {"a1": 3}, "q2": {"a2": 2}}


def test_numeric_ids_are_read_as_strings(tmp_path):
    products = [{"product_id": 15970, "title": "Shirt"}, {"product_id": 21379, "title": "Cap"}]
    catalog = load_catalog(str(write_tables(tmp_path, products, fmt="jsonl")))
    assert catalog.products["product_id"].tolist() == ["15970", "21379"]
    assert not catalog.has_queries


def test_products_only_catalog_has_empty_query_tables(tmp_path):
    catalog = load_catalog(str(write_tables(tmp_path, PRODUCTS)))
    assert catalog.queries.empty and catalog.judgments.empty
    assert catalog.summary()["queries"] == {"train": 0, "val": 0, "test": 0}


def test_absolute_image_paths_are_kept(tmp_path):
    products = [{"product_id": "a", "title": "x", "image": "/data/photos/a.jpg"}]
    catalog = load_catalog(str(write_tables(tmp_path, products)))
    assert catalog.products.loc[0, "image_uri"] == "/data/photos/a.jpg"


def expect_error(root: Path, file: str, rule: str, rows: list[int] | None = None):
    with pytest.raises(CatalogError) as info:
        load_catalog(str(root))
    error = info.value
    assert error.file.endswith(file), str(error)
    assert rule in error.rule, str(error)
    if rows is not None:
        assert error.rows == rows, str(error)
    return error


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nope", "nope", "does not exist")


def test_no_products_table(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    expect_error(tmp_path, str(tmp_path), "no products table")


def test_two_products_tables_are_ambiguous(tmp_path):
    write_tables(tmp_path, PRODUCTS, fmt="csv")
    write_tables(tmp_path, PRODUCTS, fmt="jsonl")
    with pytest.raises(CatalogError, match="several products tables"):
        load_catalog(str(tmp_path))


def test_missing_required_column_names_the_column(tmp_path):
    rows = [{"product_id": "a", "name": "shirt"}]
    error = expect_error(write_tables(tmp_path, rows), "products.csv", "missing required")
    assert "title" in str(error) and "found columns: product_id, name" in str(error)


def test_duplicate_product_ids_name_the_rows(tmp_path):
    rows = PRODUCTS + [{"product_id": "a2", "title": "again"}]
    error = expect_error(write_tables(tmp_path, rows), "products.csv", "must be unique", [2, 4])
    assert "'a2' appears 2 times" in str(error)


def test_empty_product_id(tmp_path):
    rows = PRODUCTS + [{"product_id": "", "title": "no id"}]
    expect_error(write_tables(tmp_path, rows), "products.csv", "must not be empty", [4])


def test_null_title_in_jsonl(tmp_path):
    rows = [{"product_id": "a", "title": "ok"}, {"product_id": "b", "title": None}]
    expect_error(write_tables(tmp_path, rows, fmt="jsonl"), "products.jsonl",
                 "title must not be null", [2])


def test_empty_file(tmp_path):
    (tmp_path / "products.csv").write_bytes(b"")
    expect_error(tmp_path, "products.csv", "file is empty")


def test_unreadable_parquet(tmp_path):
    (tmp_path / "products.parquet").write_bytes(b"this is not parquet")
    expect_error(tmp_path, "products.parquet", "not a readable parquet file")


def test_invalid_json_line(tmp_path):
    (tmp_path / "products.jsonl").write_text('{"product_id": "a", "title": "x"}\n{oops\n')
    expect_error(tmp_path, "products.jsonl", "not valid JSON", [2])


def test_non_utf8_bytes_name_the_line(tmp_path):
    (tmp_path / "products.csv").write_bytes(b"product_id,title\na,ok\nb,caf\xe9\n")
    error = expect_error(tmp_path, "products.csv", "not valid UTF-8")
    assert "line 3" in str(error)


@pytest.mark.parametrize("grade", [-1, 7, "high", 2.5, ""])
def test_grades_out_of_range_or_not_integers(tmp_path, grade):
    judgments = JUDGMENTS + [{"query_id": "q2", "product_id": "a3", "grade": grade}]
    error = expect_error(write_tables(tmp_path, PRODUCTS, QUERIES, judgments), "judgments.csv",
                         "grade must be an integer from 0 to 3", [3])
    assert "found" in str(error) and "np." not in str(error)  # 2.5, not np.float64(2.5)


def test_judgment_for_unknown_product(tmp_path):
    judgments = JUDGMENTS + [{"query_id": "q1", "product_id": "zz", "grade": 1}]
    error = expect_error(write_tables(tmp_path, PRODUCTS, QUERIES, judgments), "judgments.csv",
                         "product_id must refer to a row of the products table", [3])
    assert "'zz'" in str(error)


def test_judgment_for_unknown_query(tmp_path):
    judgments = [{"query_id": "q9", "product_id": "a1", "grade": 1}] + JUDGMENTS
    expect_error(write_tables(tmp_path, PRODUCTS, QUERIES, judgments), "judgments.csv",
                 "query_id must refer to a row of the queries table", [1])


def test_duplicate_judgment_pairs(tmp_path):
    judgments = JUDGMENTS + [{"query_id": "q1", "product_id": "a1", "grade": 2}]
    expect_error(write_tables(tmp_path, PRODUCTS, QUERIES, judgments), "judgments.csv",
                 "pair must appear once", [1, 3])


def test_bad_split_and_duplicate_query_ids(tmp_path):
    queries = QUERIES + [{"query_id": "q3", "text": "caps", "split": "holdout"}]
    expect_error(write_tables(tmp_path / "split", PRODUCTS, queries, JUDGMENTS), "queries.csv",
                 "split must be one of train, val, test", [3])
    queries = QUERIES + [{"query_id": "q1", "text": "caps", "split": "val"}]
    expect_error(write_tables(tmp_path / "dup", PRODUCTS, queries, JUDGMENTS), "queries.csv",
                 "query_id must be unique", [1, 3])


def test_queries_without_judgments(tmp_path):
    expect_error(write_tables(tmp_path, PRODUCTS, QUERIES), "queries.csv", "come together")


def test_error_message_lists_file_rows_and_rule(tmp_path):
    rows = PRODUCTS + [{"product_id": "a1", "title": "dup"}]
    with pytest.raises(CatalogError) as info:
        load_catalog(str(write_tables(tmp_path, rows)))
    assert str(info.value).startswith(f"{tmp_path / 'products.csv'}, rows 1, 4: ")


def test_write_then_load_round_trip(tmp_path, synthetic_catalog):
    original = load_catalog(str(synthetic_catalog))
    shutil.copytree(synthetic_catalog / "images", tmp_path / "copy" / "images")
    write_catalog(str(tmp_path / "copy"), original.products, original.queries,
                  original.judgments, fmt="jsonl")
    copy = load_catalog(str(tmp_path / "copy"))
    assert copy.fingerprint == original.fingerprint
    assert json.loads(copy.queries.loc[0, "attributes"]) == json.loads(
        original.queries.loc[0, "attributes"])


def test_fingerprint_changes_with_rows_and_image_bytes(tmp_path, synthetic_catalog):
    shutil.copytree(synthetic_catalog, tmp_path / "c")
    before = load_catalog(str(tmp_path / "c")).fingerprint
    image = next((tmp_path / "c" / "images").iterdir())
    image.write_bytes(image.read_bytes() + b"\0")
    after_image = load_catalog(str(tmp_path / "c")).fingerprint
    catalog = load_catalog(str(tmp_path / "c"))
    products = catalog.products.copy()
    products.loc[0, "title"] += " v2"
    write_catalog(str(tmp_path / "c"), products, catalog.queries, catalog.judgments)
    after_title = load_catalog(str(tmp_path / "c")).fingerprint
    assert len({before, after_image, after_title}) == 3


def test_a_repeated_column_name_is_refused_not_renamed(tmp_path):
    (tmp_path / "products.csv").write_text("product_id,title,colour,title\na,x,red,y\n")
    error = expect_error(tmp_path, "products.csv", "each column name must appear once")
    assert "repeated: title" in str(error)


@pytest.mark.parametrize("image", ["../outside.jpg", "img/../../outside.jpg"])
def test_a_relative_image_path_may_not_leave_the_catalog(tmp_path, image):
    products = PRODUCTS + [{"product_id": "a4", "title": "Hat", "image": image}]
    error = expect_error(write_tables(tmp_path, products), "products.csv",
                         "must stay inside the catalog directory", [4])
    assert "product a4" in str(error) and image in str(error)


def test_absolute_and_inside_paths_with_dots_in_names_load(tmp_path):
    products = [{"product_id": "a1", "title": "Shirt", "image": "/photos/../a1.jpg"},
                {"product_id": "a2", "title": "Cap", "image": "img/a2..v2.jpg"}]
    loaded = load_catalog(str(write_tables(tmp_path, products))).products
    assert loaded["image_uri"].tolist()[0] == "/photos/../a1.jpg"
    assert loaded["image_uri"].tolist()[1] == str(tmp_path / "img" / "a2..v2.jpg")


@pytest.mark.parametrize(("text", "rows", "found"), [
    ("product_id,title\na,x,extra\nb,y\n", [1], "row 1 has 3"),  # pandas: index a, title extra
    ("product_id,title\na,x\n\nb\nc,\"y, z\"\n", [2], "row 2 has 1"),
], ids=["one-too-many", "one-too-few"])
def test_a_row_with_another_number_of_fields_than_the_header(tmp_path, text, rows, found):
    (tmp_path / "products.csv").write_text(text)
    error = expect_error(tmp_path, "products.csv", "every row must have the header's 2 fields",
                         rows)
    assert found in str(error)


def test_a_column_without_a_name_is_refused(tmp_path):
    (tmp_path / "products.csv").write_text("product_id,title,\na,x,\n")
    error = expect_error(tmp_path, "products.csv", "every column needs a name")
    assert "column 3" in str(error)


def test_a_repeated_key_in_a_jsonl_line_is_refused(tmp_path):
    (tmp_path / "products.jsonl").write_text('{"product_id": "a", "title": "x"}\n'
                                             '{"product_id": "b", "title": "x", "title": "y"}\n')
    error = expect_error(tmp_path, "products.jsonl", "each key must appear once", [2])
    assert "repeated: title" in str(error)


def test_a_repeated_parquet_column_is_refused_in_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table([pa.array(["a"]), pa.array(["x"]), pa.array(["y"])],
                            names=["product_id", "title", "title"]),
                   tmp_path / "products.parquet")
    error = expect_error(tmp_path, "products.parquet", "each column name must appear once")
    assert "repeated: title" in str(error) and "\n" not in str(error)
