"""The vector index seam: every backend (Milvus, in-memory) implements the whole
VectorIndex protocol, registers itself by name and owns the index types and metrics that
the name checks accept; the config itself knows no backend."""

import inspect

import pytest

from fusion_model.checks import load_checked_config
from fusion_model.config import ConfigError
from fusion_model.index.base import BACKENDS, IndexBackend, VectorIndex, backend_class
from fusion_model.index.memory import MemoryIndex
from fusion_model.index.milvus import MilvusIndex

PROTOCOL_METHODS = [name for name, value in vars(VectorIndex).items()
                    if inspect.isfunction(value) and not name.startswith("_")]


def test_protocol_lists_what_the_platform_calls():
    assert {"create_collection", "search", "point_alias", "vectors_of", "prune",
            "existing_hashes"} <= set(PROTOCOL_METHODS)


@pytest.mark.parametrize("backend", [MilvusIndex, MemoryIndex])
@pytest.mark.parametrize("method", PROTOCOL_METHODS)
def test_every_backend_implements_every_protocol_method(backend, method):
    wanted = inspect.signature(getattr(VectorIndex, method)).parameters
    have = inspect.signature(getattr(backend, method)).parameters
    assert list(have)[:len(wanted)] == list(wanted), method
    extra = list(have)[len(wanted):]
    assert all(have[name].default is not inspect.Parameter.empty for name in extra), method


def test_backends_register_themselves_by_name():
    assert BACKENDS["milvus"] is MilvusIndex and BACKENDS["memory"] is MemoryIndex
    with pytest.raises(ValueError, match="registered twice"):
        type("Again", (IndexBackend,), {}, name="memory")


def test_config_takes_index_types_and_metrics_from_the_backend(monkeypatch):
    load_config = load_checked_config
    assert load_config("default", ["index.index_type=ivf_flat"]).index.index_type == "ivf_flat"
    with pytest.raises(ConfigError, match="index.metric='L2'.*IP or COSINE"):
        load_config("default", ["index.metric=L2"])

    class FlatOnly(MilvusIndex):
        INDEX_TYPES = ("FLAT",)

    monkeypatch.setitem(BACKENDS, "flat_only", FlatOnly)
    assert backend_class("flat_only") is FlatOnly
    with pytest.raises(ConfigError, match="the flat_only backend builds FLAT"):
        load_config("default", ["index.backend=flat_only"])
    assert load_config("default", ["index.backend=flat_only", "index.index_type=FLAT"])


def test_an_unknown_backend_is_named():
    with pytest.raises(ConfigError, match="index.backend='faiss': choose one of"):
        load_checked_config("default", ["index.backend=faiss"])
    with pytest.raises(KeyError, match="choose one of"):
        backend_class("faiss")



def test_a_second_standalone_server_is_refused_with_the_reason(tmp_path, monkeypatch):
    """milvus-server cannot move its embedded etcd's peer port: when it is taken, the
    helper says so instead of waiting minutes for a server that cannot start."""
    from fusion_model.index import standalone

    monkeypatch.setattr(standalone, "_listening", lambda port: port == 2380)
    server = standalone.standalone_server(tmp_path)
    with pytest.raises(standalone.StandaloneServerError, match=r"2380 is in use.*stop it"):
        server.__enter__()
    assert not (tmp_path / "milvus-server.log").exists()


class _IndexingClient:
    """describe_index answers from a script: pending rows until the last state."""

    def __init__(self, states: list[dict]):
        self.states = states
        self.calls = 0

    def list_aliases(self, *args, **kwargs):
        return {"aliases": []}

    def describe_index(self, name, field):
        state = self.states[min(self.calls, len(self.states) - 1)]
        self.calls += 1
        return state


def test_verification_waits_for_the_vector_index_to_cover_every_row(caplog):
    from fusion_model.index.milvus import MilvusIndex

    building = {"total_rows": 100, "indexed_rows": 40, "pending_index_rows": 60}
    done = {"total_rows": 100, "indexed_rows": 100, "pending_index_rows": 0}
    client = _IndexingClient([building, building, done])
    assert MilvusIndex(client).wait_until_indexed("c", timeout=5, every=0.01) is True
    assert client.calls == 3
    stuck = _IndexingClient([building])
    assert MilvusIndex(stuck).wait_until_indexed("c", timeout=0.05, every=0.01) is False
    assert "40 of 100 rows indexed" in caplog.text
