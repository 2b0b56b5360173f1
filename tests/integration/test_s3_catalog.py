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


def test_content_tags_list_each_key_range_once(s3_bucket, monkeypatch):
    """Tags of many photos cost one pass over the prefix: each chunk lists only the key
    range it spans (in key order, whatever the input order), not the whole prefix."""
    from fusion_model.storage import core

    prefix = f"s3://{s3_bucket}/shop/images"
    uris = [f"{prefix}/P{i:05d}.jpg" for i in range(120)]
    for i, uri in enumerate(uris):
        storage.write_bytes(uri, f"photo {i}".encode())
    listed: list[int] = []
    original = core.S3Storage._list_with_etags

    def counting(self, prefix, first="", last=None):
        found = original(self, prefix, first, last)
        listed.append(len(found))
        return found

    monkeypatch.setattr(core.S3Storage, "_list_with_etags", counting)
    monkeypatch.setattr(core, "TAG_CHUNK", 25)
    shuffled = uris[::-1][:100] + [None]  # 100 photos in reverse order and one without
    tags = storage.content_tag_list(shuffled)
    assert tags[-1] is None
    assert tags[:-1] == [core.md5_hex(storage.read_bytes(u)) for u in shuffled[:-1]]
    assert len(listed) == 4 and sum(listed) <= 100 + 4  # not 4 x 120

    monkeypatch.setattr(core, "TAG_CHUNK", 20_000)
    listed.clear()
    known = {uris[0]: "from-the-manifest"}
    with storage.known_content_tags(known):
        assert storage.content_tag_list([uris[0]]) == ["from-the-manifest"]
    assert listed == []  # nothing asked of the storage


def test_search_events_are_written_read_and_pruned_on_s3(s3_bucket):
    import datetime as dt

    from fusion_model.feedback.events import SEARCHES, EventLog, EventSettings, read_events

    root = f"s3://{s3_bucket}/events"
    events = EventLog(EventSettings(root, retention_days=7), salt="s")
    search_id = events.search("red shirt", "champion", "1", "c", ["P1", "P2"], "shopper")
    events.interaction({"search_id": search_id, "product_id": "P1", "kind": "cart",
                        "position": 1})
    assert events.flush() == 2
    assert [r["search_id"] for r in read_events(root, SEARCHES)] == [search_id]
    old = f"{root}/{SEARCHES}/date=2020-01-01/part-old-000001.jsonl"
    storage.write_bytes(old, b'{"search_id": "old"}\n')
    assert events.prune(dt.datetime.now(dt.UTC).date()) == [old]
    assert not storage.exists(old)
    assert [r["search_id"] for r in read_events(root, SEARCHES)] == [search_id]
