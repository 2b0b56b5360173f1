"""Validation on the real Myntra catalog, a corrupted copy of it, and photos on S3."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from fusion_model import storage
from fusion_model.data.myntra import import_myntra
from fusion_model.validation import DataValidationError, validate_catalog

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def myntra_catalog(myntra_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("myntra-validation") / "catalog"
    import_myntra(str(myntra_source), str(out))
    return out


def test_myntra_catalog_passes(myntra_catalog, tmp_path):
    report = validate_catalog(str(myntra_catalog), tmp_path / "report", progress=False)
    assert report.success and not report.failures
    image_checks = [c for c in report.checks if c["suite"] == "image_status"]
    assert len(image_checks) == 2 and all(c["success"] for c in image_checks)


def test_corrupted_copy_fails_naming_each_planted_fault(myntra_source, tmp_path):
    out = tmp_path / "corrupted"
    import_myntra(str(myntra_source), str(out), copy_images=True, n_queries=300)
    products = pd.read_parquet(out / "products.parquet")
    products.loc[10, "product_id"] = products.loc[11, "product_id"]       # duplicate id
    products.loc[20, "title"] = ""                                        # empty title
    products.to_parquet(out / "products.parquet", index=False)
    judgments = pd.read_parquet(out / "judgments.parquet")
    judgments["grade"] = judgments["grade"].astype("int64")
    judgments.loc[3, "grade"] = 7                                         # grade out of range
    judgments.to_parquet(out / "judgments.parquet", index=False)
    images = out / products.loc[30, "image"]
    images.write_bytes(images.read_bytes()[:500])                         # truncated JPEG
    (out / products.loc[40, "image"]).write_bytes(b"")                    # zero-byte JPEG
    (out / products.loc[50, "image"]).unlink()                            # missing file
    with pytest.raises(DataValidationError) as info:
        validate_catalog(str(out), tmp_path / "report", progress=False)
    failures = info.value.report.failures
    by_column = {(f["suite"], f["column"]): f for f in failures}
    assert [e["row"] for e in by_column[("products", "product_id")]["examples"]] == [11, 12]
    assert by_column[("products", "title")]["examples"][0]["row"] == 21
    assert by_column[("judgments", "grade")]["examples"] == [{"row": 4, "value": 7}]
    image_rows = {e["row"]: e["value"] for e in by_column[("image_status", "status")]["examples"]}
    assert image_rows == {31: "truncated", 41: "empty_file", 51: "not_found"}
    message = str(info.value)
    assert "expect_column_values_to_be_unique(product_id)" in message
    assert "image_status" in message


def test_s3_image_that_does_not_exist(synthetic_catalog, s3_bucket, tmp_path):
    prefix = f"s3://{s3_bucket}/catalog"
    storage.copy_tree(str(synthetic_catalog), prefix, progress=False)
    assert validate_catalog(prefix, tmp_path / "ok", progress=False).success
    products = pd.read_parquet(synthetic_catalog / "products.parquet")
    missing = f"s3://{s3_bucket}/photos/never-uploaded.jpg"
    products.loc[0, "image"] = missing
    storage.write_bytes(f"{prefix}/products.parquet", products.to_parquet(index=False))
    with pytest.raises(DataValidationError) as info:
        validate_catalog(prefix, tmp_path / "bad", progress=False)
    [failure] = [f for f in info.value.report.failures if f["suite"] == "image_status"]
    example = failure["examples"][0]
    assert example["row"] == 1 and example["value"] == "not_found"
    assert "never-uploaded.jpg" in example["detail"] and "NoSuchKey" in example["detail"]


def test_profile_store_on_s3(synthetic_catalog, s3_bucket, tmp_path):
    profile = f"s3://{s3_bucket}/profiles/catalog.json"
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_catalog, copy)
    assert validate_catalog(str(copy), tmp_path / "r1", profile_uri=profile,
                            progress=False).profile_saved
    assert storage.exists(profile)
    assert validate_catalog(str(copy), tmp_path / "r2", profile_uri=profile,
                            progress=False).success
