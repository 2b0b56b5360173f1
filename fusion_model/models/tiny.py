"""Tiny random-init encoders for the packaged ``tiny`` config: a full two-stage run, the
registry and the index in seconds, with no pretrained weights.

``text.model: tiny-bert`` (a 3-layer, 32-wide BERT whose vocabulary is the synthetic
catalog's words) and ``image.model: tiny-vit`` (a 2-layer ViT on 32 px images) are built
once, deterministically, under ``$FUSION_TINY_MODELS`` (default
``~/.cache/fusion-model/tiny-models``) and loaded from there like any local model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

TINY_TEXT = "tiny-bert"
TINY_IMAGE = "tiny-vit"
TINY_MODELS_ENV = "FUSION_TINY_MODELS"
TINY_VERSION = "2"  # bump when what the savers write changes


def synthetic_vocabulary() -> list[str]:
    """Every word the synthetic catalog writes into titles, descriptions and queries."""
    from fusion_model.data import synthetic

    groups = (synthetic.COLOURS, synthetic.PATTERNS, synthetic.BRANDS,
              *synthetic.MATERIALS.values(), *synthetic.CATEGORY_WORDS.values(),
              ("men", "women", "unisex", "for", "made", "from"))
    return sorted({w.lower() for group in groups for phrase in group
                   for w in phrase.replace("-", " ").split()})


def save_tiny_bert(path: str | Path, vocab: list[str] | None = None,
                   dropout: float = 0.1) -> str:
    """A tiny random-init BERT + tokenizer on disk (seeded: the same weights every time)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(vocab or synthetic_vocabulary())]
    # transformers 5 takes the vocabulary itself (``vocab_file=`` is silently ignored)
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})
    if len(tokenizer.get_vocab()) != len(tokens):
        raise RuntimeError(f"tiny BERT tokenizer kept {len(tokenizer.get_vocab())} of "
                           f"{len(tokens)} tokens")
    tokenizer.save_pretrained(path)
    config = BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=3,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return str(path)


def save_tiny_vit(path: str | Path, image_size: int = 32) -> str:
    """A tiny random-init ViT + processor config on disk (seeded)."""
    import json

    import torch
    from transformers import ViTConfig, ViTModel

    path = Path(path)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, image_size=image_size, patch_size=8)
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": image_size}))
    return str(path)


SAVERS: dict[str, Callable[[Path], str]] = {TINY_TEXT: save_tiny_bert,
                                            TINY_IMAGE: save_tiny_vit}


def tiny_models_dir() -> Path:
    return Path(os.environ.get(TINY_MODELS_ENV, "~/.cache/fusion-model/tiny-models")
                ).expanduser()


def tiny_model_path(name: str) -> str:
    """The directory of tiny model ``name``, built on first use (atomically, so parallel
    processes never see a half-written model)."""
    tag = hashlib.sha1(f"{TINY_VERSION}|{synthetic_vocabulary()}".encode(),
                       usedforsecurity=False).hexdigest()[:10]
    target = tiny_models_dir() / f"{name}-{tag}"
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        SAVERS[name](staging / "model")
        os.replace(staging / "model", target)
    except OSError:
        if not target.is_dir():  # another process did not win the race either
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
