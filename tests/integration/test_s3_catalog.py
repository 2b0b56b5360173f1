"""Catalogs on a real S3-protocol server (moto) on 127.0.0.1."""

from __future__ import annotations

import pandas as pd
import pytest

from fusion_model import storage
from fusion_model.cli import main
from fusion_model.data.catalog import load_catalog
from fusion_model.errors import CatalogError, StorageError

pytestmark = pytest.mark.integration


def test_catalog_from_s3_equals_catalog_from_disk(synthetic_catalog, s3_bucket):
    prefix = f"s3://{s3_bucket}/shop/catalog"
    assert storage.copy_tree(str(synthetic_catalog), prefix, progress=False) > 290
    local, remote = load_catalog(str(synthetic_catalog)), load_catalog(prefix)
    columns = [c for c in local.products.columns if c != "image_uri"]
    pd.testing.assert_frame_equal(local.products[columns], remote.products[columns])
    pd.testing.assert_frame_equal(local.queries, remote.queries)
    pd.testing.assert_frame_equal(local.judgments, remote.judgments)
    first = remote.products.dropna(subset=["image"]).iloc[0]
    assert first["image_uri"] == f"{prefix}/{first['image']}"
    photo = (synthetic_catalog / first["image"]).read_bytes()
    assert storage.read_bytes(first["image_uri"]) == photo
    assert remote.fingerprint == local.fingerprint


def test_missing_s3_catalog_and_missing_s3_image(s3_bucket, tmp_path):
    with pytest.raises(CatalogError, match="does not exist or is empty"):
        load_catalog(f"s3://{s3_bucket}/nothing/here")
    prefix = f"s3://{s3_bucket}/broken"
    storage.write_bytes(f"{prefix}/products.csv",
                        b"product_id,title,image\na,Shirt,s3://" + s3_bucket.encode()
                        + b"/broken/images/a.jpg\n")
    catalog = load_catalog(prefix)
    with pytest.raises(StorageError, match="images/a.jpg: object does not exist"):
        catalog.fingerprint  # noqa: B018  (the fingerprint reads every image's tag)
    with pytest.raises(StorageError, match="NoSuchBucket"):
        storage.read_bytes("s3://no-such-bucket-here/x")


def test_cli_generates_straight_to_s3_and_shows_it(s3_bucket, capsys):
    prefix = f"s3://{s3_bucket}/gen"
    assert main(["catalog", "synthetic", "--products", "40", "--format", "jsonl",
                 "--out", prefix]) == 0
    assert main(["catalog", "show", prefix, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"products": 40' in out and '"fingerprint"' in out
    assert storage.exists(f"{prefix}/products.jsonl")
