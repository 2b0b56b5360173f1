"""Config loading, overrides and validation messages."""

from __future__ import annotations

import pytest
import torch

from fusion_model.checks import load_checked_config
from fusion_model.config import ConfigError, load_config


def test_default_and_fast_configs_load():
    default = load_config("default")
    fast = load_config("fast")
    assert default.name == "default" and fast.name == "fast"
    assert fast.train.stage1.epochs == 2 and fast.model.fusion == "fusion"
    assert default.hash != fast.hash


def test_dotted_overrides_are_typed():
    config = load_config("default", ["model.fusion=concat", "train.stage1.epochs=5",
                                     "train.stage2.lr=0.01", "eval.ks=[1, 10]",
                                     "eval.primary_metric=recall@10"])
    assert config.model.fusion == "concat" and config.train.stage1.epochs == 5
    assert config.train.stage2.lr == 0.01 and config.eval.ks == (1, 10)
    assert config.replace("model.embed_dim=128").model.embed_dim == 128


def test_numbers_in_exponent_notation_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads ``3e-4`` as a string; a float setting takes it as the number."""
    config = load_config("default", ["train.stage2.lr=3e-4", "train.stage2.new_layer_lr=1E-3"])
    assert config.train.stage2.lr == pytest.approx(3e-4)
    assert config.train.stage2.new_layer_lr == pytest.approx(1e-3)
    path = tmp_path / "mine.yaml"
    path.write_text("base: default\ntrain:\n  stage1: {lr: 5e-4}\n")
    assert load_config(str(path)).train.stage1.lr == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match="train.stage2.lr must be a number, got 'fast'"):
        load_config("default", ["train.stage2.lr=fast"])


def test_yaml_file_with_base(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: fast\nmodel:\n  embed_dim: 64\n  fusion_heads: 2\n")
    config = load_config(str(path))
    assert config.name == "mine" and config.model.embed_dim == 64
    assert config.train.stage1.epochs == 2


@pytest.mark.parametrize(("override", "message"), [
    ("model.fuson=concat", "unknown config key model.fuson; valid keys in model:"),
    ("model.fusion=transformer", "choose one of text_only, image_only"),
    ("train.stage1.epochs=two", "train.stage1.epochs must be an integer"),
    ("train.stage1.batch_size=1", "in-batch negatives need company"),
    ("model.embed_dim=250", "must be divisible by model.fusion_heads=4"),
    ("eval.primary_metric=recall@7", "K in eval.ks"),
    ("train.precision=fp16", "choose one of auto, fp32, bf16"),
    ("index.metric=L2", "choose IP or COSINE"),
    ("share_text_encoder=true", "unknown config key share_text_encoder"),
    ("model.share_text_encoder=1", "must be true or false"),
    ("nonsense", "must look like section.key=value"),
    ("index.alias=serving-v2", "index.alias='serving-v2': names in the index are a letter"),
    ("index.collection_prefix=2026_products", "index.collection_prefix='2026_products'"),
    ("index.attribute_fields=[colour, base colour]", "index.attribute_fields[1]='base colour'"),
    ('index.attribute_fields=[colour, "gender"', "the value is not valid YAML"),
    ("text.max_length=0", "text.max_length and text.query_max_length must be 1..512"),
    ("text.query_max_length=100000", "must be 1..512 tokens"),
    ("model.fusion_heads=0", "model.embed_dim and model.fusion_heads must be at least 1"),
    ("model.embed_dim=0", "must be at least 1"),
    ("image.image_size=0", "image.image_size must be 32..1024"),
    ("index.attribute_fields=[product_id]", "is a field the index stores itself"),
    ("index.attribute_fields=[colour, colour]", "names ['colour'] more than once"),
    ("index.batch_size=0", "index.batch_size must be >= 1"),
    ("eval.bootstrap_samples=0", "bootstrap_samples must be at least 1"),
])
def test_bad_values_fail_with_what_to_change(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_checked_config("default", [override])  # the config's checks and the names


def test_unknown_config_name_lists_packaged_ones():
    with pytest.raises(ConfigError, match="packaged configs: default, fast"):
        load_config("turbo")


def test_precision_auto_uses_bf16_only_where_the_cpu_has_it(monkeypatch):
    from fusion_model import runtime as precision

    assert load_config("default").train.precision == "auto"
    for native in (True, False):
        monkeypatch.setattr(precision, "native_bf16", lambda native=native: native)
        assert precision.uses_bf16("auto") is native
        assert precision.uses_bf16("bf16") and not precision.uses_bf16("fp32")
        with precision.autocast("auto"):
            assert torch.is_autocast_enabled("cpu") is native


@pytest.mark.parametrize(("override", "message"), [
    ("model.fusion=transformer", "choose one of text_only"),
    ("index.backend=faiss", "choose one of .*milvus"),
    ("index.index_type=DISKANN", "builds FLAT"),
    ("eval.segments=['x=nope:colour']", "eval.segments"),
])
def test_names_are_checked_by_their_registries_not_by_the_config(override, message):
    load_config("default", [override])  # shapes and types are fine: the config says nothing
    with pytest.raises(ConfigError, match=message):
        load_checked_config("default", [override])


def test_training_hash_follows_what_is_trained_not_where_it_is_served():
    from fusion_model.config import load_config

    base = load_config("tiny")
    served_elsewhere = base.replace("index.uri=http://milvus:19530", "gate.min_improvement=0.1",
                                    "registry.model_name=other")
    assert served_elsewhere.hash != base.hash
    assert served_elsewhere.training_hash == base.training_hash
    for trained_otherwise in ("train.seed=9", "model.dropout=0.3", "text.max_length=24",
                              "eval.min_relevant_grade=1"):
        assert base.replace(trained_otherwise).training_hash != base.training_hash, \
            trained_otherwise
