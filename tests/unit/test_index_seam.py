"""The vector index seam: the Milvus backend implements the whole VectorIndex protocol and
owns the index types and metrics that config validation accepts."""

import inspect

import pytest

from fusion_model.config import ConfigError, load_config
from fusion_model.index.base import BACKENDS, VectorIndex, backend_class
from fusion_model.index.milvus import MilvusIndex

PROTOCOL_METHODS = [name for name, value in vars(VectorIndex).items()
                    if inspect.isfunction(value) and not name.startswith("_")]


def test_protocol_lists_what_the_platform_calls():
    assert {"create_collection", "search", "point_alias", "vectors_of", "prune",
            "existing_hashes"} <= set(PROTOCOL_METHODS)


@pytest.mark.parametrize("method", PROTOCOL_METHODS)
def test_milvus_backend_implements_every_protocol_method(method):
    wanted = inspect.signature(getattr(VectorIndex, method)).parameters
    have = inspect.signature(getattr(MilvusIndex, method)).parameters
    assert list(have)[:len(wanted)] == list(wanted), method
    extra = list(have)[len(wanted):]
    assert all(have[name].default is not inspect.Parameter.empty for name in extra), method


def test_config_takes_index_types_and_metrics_from_the_backend(monkeypatch):
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
    with pytest.raises(ConfigError, match="index.backend='faiss': choose one of milvus"):
        load_config("default", ["index.backend=faiss"])
    with pytest.raises(KeyError, match="choose one of milvus"):
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
