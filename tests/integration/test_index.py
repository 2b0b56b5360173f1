"""Milvus life cycle on real Milvus Lite: build, verify, resume, alias, prune, refresh."""

from __future__ import annotations

import dataclasses
import multiprocessing

import numpy as np
import pandas as pd
import pytest

from fusion_model.checks import load_checked_config
from fusion_model.config import IndexConfig, load_config
from fusion_model.data.catalog import load_catalog
from fusion_model.errors import VectorIndexError
from fusion_model.index import milvus
from fusion_model.index.build import RefreshRefusedError, build_collection, refresh_serving
from fusion_model.models.towers import TwoTower

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    cache = tmp_path_factory.mktemp("index-cache")
    torch_seeded = load_config("tiny", [f"train.cache_dir={cache}"])
    import torch

    torch.manual_seed(0)
    return TwoTower(torch_seeded).eval()


@pytest.fixture(scope="module")
def catalog(synthetic_catalog):
    return load_catalog(str(synthetic_catalog))


@pytest.fixture()
def index_uri(tmp_path) -> str:
    """A fresh Milvus Lite file per test (tests/production runs these on a real server)."""
    return str(tmp_path / "milvus.db")


def index_config(uri: str, **changes) -> IndexConfig:
    return dataclasses.replace(IndexConfig(uri=uri, batch_size=50), **changes)


def test_build_verify_and_search_with_a_filter(model, catalog, index_uri):
    config = index_config(index_uri)
    result = build_collection(model, catalog, config, "products_m1_abc", progress=False)
    assert result.verified and result.count == result.written == 300
    with milvus.MilvusIndex.open(config.uri) as index:
        described = index.client.describe_index("products_m1_abc", "vector")
        assert described["index_type"] == "HNSW" and described["metric_type"] == "IP"
        vectors = model.embed_queries(["red striped shirt"]).numpy()
        hits = index.search("products_m1_abc", vectors, k=10,
                            filter_expr='category == "shirt"', output_fields=["category"])
        assert len(hits[0]) == 10 and {h["category"] for h in hits[0]} == {"shirt"}


def test_a_users_filter_matches_values_with_quotes_exactly(index_uri):
    """Values holding quotes, backslashes or expression syntax are matched as text."""
    from fusion_model.index.filters import to_milvus

    values = ['say "hi"', "a\\", "x' or category != 'y", "plain"]
    with milvus.MilvusIndex.open(index_uri) as index:
        index.create_collection("quotes_m1_abc", 4, ["category"], index_type="FLAT")
        index.write_rows("quotes_m1_abc", [f"p{i}" for i in range(4)],
                         np.eye(4, dtype=np.float32), ["h"] * 4, {"category": values})
        assert index.count("quotes_m1_abc") == 4  # a server's searches are bounded-stale
        for value in values:
            typed = "category == '" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
            hits = index.search("quotes_m1_abc", np.ones((1, 4), np.float32), 4,
                                to_milvus(typed, ["category"]), ["category"])
            assert [h["category"] for h in hits[0]] == [value], typed


def test_reading_an_index_logs_nothing_for_people_to_worry_about(index_uri, caplog):
    """Milvus Lite's in-process server logged a NotImplementedError traceback and pymilvus
    a warning on every query iterator; both are harmless fallbacks and now silent."""
    import logging

    caplog.set_level(logging.WARNING)
    with milvus.MilvusIndex.open(index_uri) as index:
        index.create_collection("quiet_m1_abc", 4, ["category"], index_type="FLAT")
        index.write_rows("quiet_m1_abc", ["a"], np.ones((1, 4), np.float32), ["h"],
                         {"category": ["x"]})
        assert index.existing_hashes("quiet_m1_abc") == {"a": "h"}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    iterator_log = logging.getLogger("pymilvus.client.iterator.query_iterator")
    assert not iterator_log.isEnabledFor(logging.WARNING)


def test_unsupported_index_types_are_rejected(model, catalog, index_uri):
    with pytest.raises(milvus.MilvusIndexError, match="DISKANN.*silently fall back"):
        build_collection(model, catalog, index_config(index_uri, index_type="DISKANN"), "x_m1_a")
    with pytest.raises(Exception, match="index.index_type='SCANN'"):
        load_checked_config("default", ["index.index_type=SCANN"])


def test_crash_mid_indexing_resumes_without_duplicates(model, catalog, index_uri, monkeypatch):
    config = index_config(index_uri)
    original, calls = milvus.MilvusIndex.write_rows, {"n": 0}

    def crash_after_two_batches(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(milvus.MilvusIndex, "write_rows", crash_after_two_batches)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_collection(model, catalog, config, "products_m2_abc", progress=False)
    monkeypatch.setattr(milvus.MilvusIndex, "write_rows", original)
    result = build_collection(model, catalog, config, "products_m2_abc", progress=False)
    assert result.skipped == 100 and result.written == 200 and result.count == 300
    with milvus.MilvusIndex.open(config.uri) as index:
        ids = list(index.existing_hashes("products_m2_abc"))
    assert len(ids) == len(set(ids)) == 300


def test_new_products_are_inserted_and_only_changed_ones_overwritten(model, catalog,
                                                                      index_uri, monkeypatch):
    """Inserts leave a Milvus server no delete records to compact once the collection is
    served (after an all-upsert build of 100,000 rows it compacted and re-indexed at up
    to 2 cores for 70-110 s); a product the collection holds is overwritten, never doubled."""
    config = index_config(index_uri)
    original, writes = milvus.MilvusIndex.write_rows, []

    def recording(self, name, ids, *args, overwrite=True, **kwargs):
        writes.append((overwrite, len(ids)))
        return original(self, name, ids, *args, overwrite=overwrite, **kwargs)

    monkeypatch.setattr(milvus.MilvusIndex, "write_rows", recording)
    build_collection(model, catalog, config, "products_m3_abc", progress=False)
    assert {overwrite for overwrite, _ in writes} == {False}
    assert sum(count for _, count in writes) == 300
    writes.clear()
    products = catalog.products.copy()
    products.loc[[2, 5], "title"] = "Changed Title Shirt"
    added = products.iloc[[0]].assign(product_id="NEW1")
    changed = dataclasses.replace(catalog, products=pd.concat([products, added],
                                                              ignore_index=True))
    result = build_collection(model, changed, config, "products_m3_abc", progress=False)
    assert sorted(writes) == [(False, 1), (True, 2)]
    assert (result.written, result.count) == (3, 301)


def test_alias_swap_guarded_drop_and_prune(model, catalog, index_uri):
    config = index_config(index_uri)
    small = dataclasses.replace(catalog, products=catalog.products.head(40))
    for version in (1, 2, 3, 4):
        build_collection(model, small, config, f"products_m{version}_abc", progress=False)
    with milvus.MilvusIndex.open(config.uri) as index:
        assert index.point_alias("products_serving", "products_m1_abc") is None
        assert index.point_alias("products_serving", "products_m2_abc") == \
            "products_m1_abc"
        assert index.resolve_alias("products_serving") == "products_m2_abc"
        with pytest.raises(VectorIndexError, match="refusing to drop products_m2_abc"):
            index.drop_collection("products_m2_abc")
        dropped = index.prune("products", keep=1)
        assert dropped == ["products_m3_abc", "products_m1_abc"]
        assert sorted(index.list_collections()) == ["products_m2_abc", "products_m4_abc"]


def test_incremental_refresh_writes_a_new_collection(model, catalog, index_uri):
    config = index_config(index_uri)
    build_collection(model, catalog, config, "products_m5_abc", progress=False)
    with milvus.MilvusIndex.open(config.uri) as index:
        index.point_alias(config.alias, "products_m5_abc")
    products = catalog.products.copy()
    products.loc[3, "title"] = "Brand New Title Shirt"
    removed = products.loc[7, "product_id"]
    products = products.drop(index=7)
    added = products.iloc[[0]].assign(product_id="NEW1")
    snapshot = dataclasses.replace(catalog, products=pd.concat([products, added],
                                                               ignore_index=True))
    result = refresh_serving(model, snapshot, config, "6", progress=False)
    assert (result.written, result.deleted, result.count) == (2, 1, 300)
    assert result.collection.startswith("products_m6_") and result.verified
    with milvus.MilvusIndex.open(config.uri) as index:
        fresh = index.existing_hashes(result.collection)
        served = index.existing_hashes(config.alias)
        assert index.resolve_alias(config.alias) == "products_m5_abc"
    assert removed not in fresh and "NEW1" in fresh
    assert removed in served and "NEW1" not in served and len(served) == 300


def test_refresh_refuses_a_snapshot_that_drops_too_many_products(model, catalog, index_uri):
    config = index_config(index_uri, max_delete_share=0.05)
    small = dataclasses.replace(catalog, products=catalog.products.head(60))
    build_collection(model, small, config, "products_m7_abc", progress=False)
    with milvus.MilvusIndex.open(config.uri) as index:
        index.point_alias(config.alias, "products_m7_abc")
    truncated = dataclasses.replace(catalog, products=catalog.products.head(50))
    with pytest.raises(RefreshRefusedError, match=r"drops 10 of the 60 products.*allow-deletions"):
        refresh_serving(model, truncated, config, "8", progress=False)
    with milvus.MilvusIndex.open(config.uri) as index:
        assert index.list_collections() == ["products_m7_abc"]
        assert index.count(config.alias) == 60
    allowed = refresh_serving(model, truncated, config, "8", progress=False,
                              allow_deletions=True)
    assert (allowed.deleted, allowed.count) == (10, 50)


def search_in_other_process(uri: str, queue) -> None:
    with milvus.MilvusIndex.open(uri) as index:
        found = 0
        for _ in range(20):
            if index.has_collection("shared_m1_abc") and index.count("shared_m1_abc"):
                hits = index.search("shared_m1_abc",
                                     np.ones((1, 16), dtype=np.float32), k=5)
                found = max(found, len(hits[0]))
            import time

            time.sleep(0.5)
    queue.put(found)


def test_two_processes_share_a_milvus_lite_server(model, catalog, milvus_server, tmp_path):
    config = IndexConfig(uri=milvus_server, batch_size=25)
    queue = multiprocessing.get_context("spawn").Queue()
    reader = multiprocessing.get_context("spawn").Process(
        target=search_in_other_process, args=(milvus_server, queue))
    reader.start()
    result = build_collection(model, catalog, config, "shared_m1_abc", progress=False)
    reader.join(timeout=120)
    assert result.count == 300 and queue.get(timeout=5) == 5


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["server", "lite_file"])
def test_a_process_reconnects_after_idling_longer_than_the_servers_ping_policy(
        mode, request, tmp_path):
    """pymilvus's default keepalive pings an idle shared channel every 10 s; Milvus Lite's
    gRPC server (``milvus-lite server``, and the one a file URI starts) answers GOAWAY
    too_many_pings, and the next client in the process then failed to connect (seen
    after ~90 s idle). Clients now are dedicated and do not ping while idle."""
    import time

    uri = (request.getfixturevalue("milvus_server") if mode == "server"
           else str(tmp_path / "idle.db"))
    with milvus.MilvusIndex.open(uri) as held:
        with milvus.MilvusIndex.open(uri) as index:
            index.list_collections()
        time.sleep(90)
        with milvus.MilvusIndex.open(uri) as index:
            assert isinstance(index.list_collections(), list)
        assert isinstance(held.list_collections(), list)


def test_bulk_import_on_milvus_lite_is_a_named_error_that_leaves_nothing_staged(
        model, catalog, index_uri, tmp_path):
    """Milvus Lite has no bulk import: a build configured for it fails before writing a
    row, says what to change, and removes the column files it staged."""
    from fusion_model.index.bulk_import import BulkImportError

    config = index_config(index_uri, import_uri=str(tmp_path / "import"), import_rows=40)
    small = dataclasses.replace(catalog, products=catalog.products.head(50))
    with pytest.raises(BulkImportError, match="Milvus Lite has no bulk import: leave "
                                              "index.import_uri empty"):
        build_collection(model, small, config, "lite_m1_abc", progress=False)
    with milvus.MilvusIndex.open(index_uri) as index:
        assert index.count("lite_m1_abc") == 0
    assert not [p for p in (tmp_path / "import").rglob("*") if p.is_file()]
