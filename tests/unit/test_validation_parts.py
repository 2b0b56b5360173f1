"""Validation in batches and parts: catalog-wide rules hold across batch and part borders,
and parts validated separately give the same report as one pass."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fusion_model.data.synthetic import generate_synthetic_catalog
from fusion_model.validation import DataValidationError, runner, validate_catalog
from fusion_model.validation.runner import finish_validation, validate_products_part


@pytest.fixture()
def catalog(tmp_path, monkeypatch) -> Path:
    """A parquet catalog validated 25 product rows at a time (4 batches)."""
    root = tmp_path / "catalog"
    generate_synthetic_catalog(str(root), n_products=100, n_queries=40, seed=5,
                               progress=False)
    monkeypatch.setattr(runner, "PRODUCT_BATCH_ROWS", 25)
    return root


def edit_products(catalog: Path, edit) -> None:
    path = catalog / "products.parquet"
    frame = pd.read_parquet(path)
    edit(frame)
    frame.to_parquet(path, index=False)


def failures_of(catalog: Path, report_dir: Path) -> list[dict]:
    with pytest.raises(DataValidationError) as info:
        validate_catalog(str(catalog), report_dir, progress=False)
    return info.value.report.failures


def test_duplicate_ids_in_different_batches_are_found_by_row_and_value(catalog, tmp_path):
    def duplicate(frame):
        frame.loc[90, "product_id"] = frame.loc[3, "product_id"]

    edit_products(catalog, duplicate)
    [unique] = [f for f in failures_of(catalog, tmp_path / "r")
                if f["expectation"] == "expect_column_values_to_be_unique"]
    value = pd.read_parquet(catalog / "products.parquet")["product_id"][3]
    assert unique["unexpected_count"] == 2
    assert unique["examples"] == [{"row": 4, "value": value}, {"row": 91, "value": value}]


def test_row_numbers_of_a_later_batch_count_from_the_table_start(catalog, tmp_path):
    def blank_title(frame):
        frame.loc[60, "title"] = ""

    edit_products(catalog, blank_title)
    [title] = [f for f in failures_of(catalog, tmp_path / "r") if f["column"] == "title"]
    assert [e["row"] for e in title["examples"]] == [61]
    assert title["unexpected_count"] == 1


def test_missing_photo_share_is_decided_over_the_whole_table(catalog, tmp_path):
    """The first batch of 25 loses 5 photos (20% > the 10% allowed) while the whole table
    stays under 10% and passes; more missing photos fail with the whole table's share."""
    def drop_photos(rows):
        def edit(frame):
            frame.loc[rows, "image"] = None
        return edit

    def missing_share() -> float:
        images = pd.read_parquet(catalog / "products.parquet")["image"]
        return 100.0 * images.isna().mean()

    edit_products(catalog, drop_photos(list(range(5))))
    assert missing_share() < 10
    assert validate_catalog(str(catalog), tmp_path / "ok", progress=False).success
    edit_products(catalog, drop_photos(list(range(0, 100, 8))))
    assert missing_share() > 10
    [share] = [f for f in failures_of(catalog, tmp_path / "bad")
               if f["suite"] == "image_status"]
    assert share["unexpected_percent"] == pytest.approx(missing_share())


def test_judged_product_missing_from_the_catalog_is_named(catalog, tmp_path):
    path = catalog / "judgments.parquet"
    judgments = pd.read_parquet(path)
    judgments.loc[0, "product_id"] = "NOT-A-PRODUCT"
    judgments.to_parquet(path, index=False)
    [unknown] = [f for f in failures_of(catalog, tmp_path / "r")
                 if f["suite"] == "judgments" and f["column"] == "product_id"]
    assert unknown["examples"][0]["value"] == "NOT-A-PRODUCT"


def test_three_parts_give_the_one_pass_report(catalog, tmp_path):
    profile_one, profile_parts = tmp_path / "one.json", tmp_path / "parts.json"
    one = validate_catalog(str(catalog), tmp_path / "one", profile_uri=str(profile_one),
                           progress=False)
    summaries = [validate_products_part(str(catalog), tmp_path / "parts", part, 3,
                                        progress=False) for part in (2, 0, 1)]
    assert sum(s["rows"] for s in summaries) == 100
    parts = finish_validation(str(catalog), tmp_path / "parts", profile_uri=str(profile_parts),
                              parts=3)
    assert parts.success and one.success
    assert json.loads(profile_parts.read_text()) == json.loads(profile_one.read_text())

    def outcome(report):
        return sorted((c["suite"], c["expectation"], str(c["column"]), c["success"],
                       c.get("unexpected_count") or 0) for c in report.checks)

    assert outcome(parts) == outcome(one)


def test_finish_refuses_when_a_part_is_missing(catalog, tmp_path):
    validate_products_part(str(catalog), tmp_path / "r", 0, 2, progress=False)
    with pytest.raises(FileNotFoundError, match="part 2 of 2 is missing"):
        finish_validation(str(catalog), tmp_path / "r", parts=2)


def test_an_unreadable_queries_table_does_not_hide_duplicate_product_ids(catalog, tmp_path):
    def duplicate(frame):
        frame.loc[90, "product_id"] = frame.loc[3, "product_id"]

    edit_products(catalog, duplicate)
    (catalog / "queries.parquet").write_bytes(b"not parquet")
    failures = failures_of(catalog, tmp_path / "r")
    assert any(f["suite"] == "queries" and f["expectation"] == "table readable"
               for f in failures)
    [unique] = [f for f in failures if f["expectation"] == "expect_column_values_to_be_unique"]
    assert [e["row"] for e in unique["examples"]] == [4, 91]
