"""The VectorIndex conformance suite on the in-memory backend and on Milvus Lite (the
Milvus server runs it in production mode: tests/production/test_milvus_standalone.py)."""

from __future__ import annotations

import uuid

import pytest

from fusion_model.index.memory import MemoryIndex, forget
from fusion_model.index.milvus import MilvusIndex
from tests.index_conformance import DIM, FIELDS, IndexConformance, unit_vectors

pytestmark = pytest.mark.integration


class TestMemoryBackend(IndexConformance):
    @pytest.fixture()
    def index(self):
        uri = f"memory://{uuid.uuid4().hex}"
        with MemoryIndex.open(uri) as opened:
            yield opened
        forget(uri)


class TestMilvusLite(IndexConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def lite_uri(cls, tmp_path_factory) -> str:
        return str(tmp_path_factory.mktemp("conformance") / "milvus.db")

    @pytest.fixture()
    def index(self, lite_uri):
        with MilvusIndex.open(lite_uri) as opened:
            yield opened


class TestMilvusLoadAndFlush:
    """What Milvus adds to the protocol at scale: a collection nothing serves is released,
    counting never flushes, shards come from the config."""

    @pytest.fixture()
    def index(self, tmp_path):
        with MilvusIndex.open(str(tmp_path / "milvus.db")) as opened:
            yield opened

    def test_idle_collections_are_released_and_loaded_again_on_rollback(self, index):
        names = ["products_m1_a", "products_m2_b", "products_m3_c"]
        for name in names:
            index.create_collection(name, DIM, FIELDS, "FLAT", "IP")
            index.write_rows(name, ["p0", "p1"], unit_vectors(2), ["h0", "h1"],
                             {"category": ["a", "b"], "colour": ["c", "d"]})
        index.point_alias("serving", "products_m3_c")
        assert index.release_idle("products", keep={"products_m2_b"}) == ["products_m1_a"]

        def loaded(name: str) -> bool:
            return "NotLoad" not in str(index.client.get_load_state(name)["state"])

        assert [loaded(n) for n in names] == [False, True, True]
        assert index.point_alias("serving", "products_m1_a") == "products_m3_c"  # rollback
        assert loaded("products_m1_a")
        hits = index.search("serving", unit_vectors(2)[[1]], k=1)
        assert hits[0][0]["product_id"] == "p1"

    def test_count_sees_unflushed_rows_without_a_flush(self, index, monkeypatch):
        index.create_collection("products_m1_c", DIM, FIELDS, "FLAT", "IP")
        monkeypatch.setattr(index.client, "flush", lambda *a, **k: pytest.fail("flushed"))
        index.write_rows("products_m1_c", ["p0", "p1", "p2"], unit_vectors(3),
                         ["h0", "h1", "h2"], {"category": ["a"] * 3, "colour": ["c"] * 3})
        assert index.count("products_m1_c") == 3

    def test_shards_and_replicas_come_from_the_config(self, tmp_path):
        from fusion_model.config import load_config
        from fusion_model.index.base import open_index

        config = load_config("tiny", [f"index.uri={tmp_path / 'sharded.db'}",
                                      "index.shards=2", "index.replicas=1"]).index
        with open_index(config) as index:
            assert (index.shards, index.replicas) == (2, 1)
            asked = []  # Milvus Lite takes num_shards but keeps one; a server keeps them
            create = index.client.create_collection
            index.client.create_collection = lambda *a, **k: asked.append(k) or create(*a, **k)
            index.create_collection("products_m1_s", DIM, FIELDS, "FLAT", "IP")
            assert asked[0]["num_shards"] == 2 and index.count("products_m1_s") == 0
