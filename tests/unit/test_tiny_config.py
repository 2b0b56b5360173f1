"""The packaged ``tiny`` config: tiny random-init encoders built once, deterministically."""

from pathlib import Path

from fusion_model.config import load_config
from fusion_model.models.text import TextEncoder
from fusion_model.models.tiny import TINY_IMAGE, TINY_TEXT, tiny_model_path


def test_tiny_models_are_built_once_into_the_configured_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSION_TINY_MODELS", str(tmp_path))
    text = Path(tiny_model_path(TINY_TEXT))
    image = Path(tiny_model_path(TINY_IMAGE))
    assert text.parent == image.parent == tmp_path
    assert (text / "tokenizer.json").is_file() and (image / "preprocessor_config.json").is_file()
    stamp = (text / "config.json").stat().st_mtime_ns
    assert tiny_model_path(TINY_TEXT) == str(text)
    assert (text / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_tiny_config_loads_its_encoders_with_the_same_weights_everywhere(tmp_path,
                                                                         monkeypatch):
    config = load_config("tiny")
    assert (config.text.model, config.image.model) == (TINY_TEXT, TINY_IMAGE)
    here = TextEncoder(config.text.model, 16, 1)
    monkeypatch.setenv("FUSION_TINY_MODELS", str(tmp_path))
    elsewhere = TextEncoder(config.text.model, 16, 1)
    assert here.fingerprint() == elsewhere.fingerprint()
    assert "shirt" in here.tokenizer.get_vocab()
