"""The index life cycle of tests/integration/test_index.py on the real Milvus standalone
server (``milvus-server``): build and verify, filtered search, resume after a crash,
alias create and switch, guarded drop and prune, incremental refresh and its deletion
guard, and two processes sharing the server. Reads after writes use strong consistency
(a server is Bounded by default)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fusion_model.errors import VectorIndexError
from fusion_model.index import milvus
from fusion_model.index.build import build_collection, stored_fields, verify
from tests.index_conformance import IndexConformance
from tests.integration.test_index import (  # noqa: F401 - fixtures and tests run here too
    catalog,
    index_config,
    model,
    test_a_users_filter_matches_values_with_quotes_exactly,
    test_alias_swap_guarded_drop_and_prune,
    test_build_verify_and_search_with_a_filter,
    test_crash_mid_indexing_resumes_without_duplicates,
    test_incremental_refresh_writes_a_new_collection,
    test_new_products_are_inserted_and_only_changed_ones_overwritten,
    test_reading_an_index_logs_nothing_for_people_to_worry_about,
    test_refresh_refuses_a_snapshot_that_drops_too_many_products,
    test_two_processes_share_a_milvus_lite_server,
    test_unsupported_index_types_are_rejected,
)
from tests.production.conftest import MILVUS_BUCKET, s3_environment

pytestmark = pytest.mark.production


@pytest.fixture()
def index_uri(milvus_server) -> str:
    """The server, emptied: every test starts without aliases or collections."""
    with milvus.MilvusIndex.open(milvus_server) as index:
        for alias in index.client.list_aliases().get("aliases", []):
            index.drop_alias(alias)
        for name in index.list_collections():
            index.drop_collection(name)
    return milvus_server


def test_a_count_right_after_a_write_sees_every_row(index_uri):
    """Bounded staleness would under-count rows written a moment ago; verification
    (count == written) must never fail, nor pass on a stale view."""
    with milvus.MilvusIndex.open(index_uri) as index:
        index.create_collection("fresh_m1_abc", 8, ["colour"], index_type="FLAT")
        for round_ in range(3):
            ids = [f"p{round_}-{i}" for i in range(500)]
            vectors = np.random.default_rng(round_).normal(size=(500, 8)).astype(np.float32)
            index.write_rows("fresh_m1_abc", ids, vectors, ["h"] * 500,
                             {"colour": ["red"] * 500}, overwrite=False)
            assert index.count("fresh_m1_abc") == 500 * (round_ + 1)
            assert len(index.existing_hashes("fresh_m1_abc")) == 500 * (round_ + 1)
        index.delete_ids("fresh_m1_abc", [f"p0-{i}" for i in range(100)])
        assert index.count("fresh_m1_abc") == 1400


def test_ids_inserted_twice_are_refused_then_repaired_by_the_next_build(
        model, catalog, index_uri):  # noqa: F811 - the fixtures imported above
    """Two writers inserting the same products (a task thought dead still writing) leave
    ids twice on a server: verification refuses the collection, and the next build
    rewrites every product once."""
    config = index_config(index_uri)
    small = dataclasses.replace(catalog, products=catalog.products.head(60))
    build_collection(model, small, config, "twice_m1_abc", progress=False)
    ids = small.products["product_id"].tolist()
    with milvus.MilvusIndex.open(index_uri) as index:
        found, vectors = index.vectors_of("twice_m1_abc", ids[:5])
        index.write_rows("twice_m1_abc", found, vectors, ["stale"] * 5,
                         {f: ["x"] * 5 for f in stored_fields(small, config)},
                         overwrite=False)
        with pytest.raises(VectorIndexError, match="holds 65 products, the catalog "
                                                          "has 60; not safe to serve"):
            verify(index, "twice_m1_abc", ids, samples=5)
    result = build_collection(model, small, config, "twice_m1_abc", progress=False)
    assert result.verified and (result.written, result.count) == (60, 60)
    with milvus.MilvusIndex.open(index_uri) as index:
        assert "stale" not in set(index.existing_hashes("twice_m1_abc").values())


class TestMilvusServerConformance(IndexConformance):
    """The VectorIndex conformance suite (also run on the in-memory backend and Milvus
    Lite) on the real server."""

    @pytest.fixture()
    def index(self, milvus_server):
        with milvus.MilvusIndex.open(milvus_server) as opened:
            yield opened


def test_a_full_build_by_bulk_import_equals_one_by_batched_inserts(  # noqa: F811
        model, catalog, index_uri, s3_server, monkeypatch):  # noqa: F811 - fixtures above
    """Bulk import (three jobs of at most 70 rows, column files staged in the bucket where
    the server keeps its segments, read from there by the server) stores the same rows,
    hashes, vectors and attributes as batched inserts, passes verification and leaves no
    staged files behind."""
    import boto3

    for key, value in s3_environment(s3_server).items():
        monkeypatch.setenv(key, value)
    small = dataclasses.replace(catalog, products=catalog.products.head(150))
    ids = small.products["product_id"].tolist()
    inserted = index_config(index_uri)
    imported = index_config(index_uri, import_uri=f"s3://{MILVUS_BUCKET}/import",
                            import_rows=70)
    jobs = []
    real_import = milvus.MilvusIndex.import_rows
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(milvus.MilvusIndex, "import_rows", lambda self, name, ids_, *a, **k:
                      jobs.append(len(ids_)) or real_import(self, name, ids_, *a, **k))
        result = build_collection(model, small, imported, "imported_m1_abc", progress=False)
    build_collection(model, small, inserted, "inserted_m1_abc", progress=False)
    assert result.verified and result.written == 150 and sorted(jobs) == [10, 70, 70]
    fields = stored_fields(small, inserted)
    with milvus.MilvusIndex.open(index_uri) as index:
        assert index.existing_hashes("imported_m1_abc") == \
            index.existing_hashes("inserted_m1_abc")
        got = dict(zip(*index.vectors_of("imported_m1_abc", ids)))
        want = dict(zip(*index.vectors_of("inserted_m1_abc", ids)))
        assert all(np.allclose(got[pid], want[pid], atol=1e-6) for pid in ids)
        assert index.rows_of("imported_m1_abc", ids, fields) == \
            index.rows_of("inserted_m1_abc", ids, fields)
        assert index.count("imported_m1_abc") == 150
    staged = boto3.client("s3").list_objects_v2(Bucket=MILVUS_BUCKET, Prefix="import/")
    assert staged.get("KeyCount", 0) == 0
    segments = boto3.client("s3").list_objects_v2(Bucket=MILVUS_BUCKET, Prefix="files/")
    assert segments.get("KeyCount", 0) > 0  # the server keeps its segments in the bucket
