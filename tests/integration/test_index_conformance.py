"""The VectorIndex conformance suite on the in-memory backend and on Milvus Lite (the
Milvus server runs it in production mode: tests/production/test_milvus_standalone.py)."""

from __future__ import annotations

import uuid

import pytest

from fusion_model.index.memory import MemoryIndex, forget
from fusion_model.index.milvus import MilvusIndex
from tests.index_conformance import IndexConformance

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
