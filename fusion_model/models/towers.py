"""The two-tower model: query tower (text) and product tower (text + image + fusion)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from fusion_model.config import RunConfig, from_dict
from fusion_model.errors import BadInputError
from fusion_model.losses import InfoNCELoss
from fusion_model.models.heads import HeadSettings, QueryHead, head_class, l2
from fusion_model.models.image import build_image_encoder
from fusion_model.models.text import TextEncoder, distinct_rows, mean_pool
from fusion_model.runtime import autocast
from fusion_model.tensor_files import load_tensors

log = logging.getLogger(__name__)

MODEL_FILE, CONFIG_FILE, MANIFEST_FILE = "model.pt", "config.yaml", "manifest.json"
# what stage 1 trains, as state-dict prefixes: every product head has ``text_proj``
STAGE1_STATE = ("text.", "query_text.", "query_head.proj.", "product_head.text_proj.", "loss.")


class StageCheckpointError(BadInputError):
    """A stage-1 model does not fit this config (a renamed or resized tensor)."""
IMAGE_CHUNK = 16


class LateBranch(nn.Module):
    """A late-fusion model trained from the same stage 1 as the network it joins: its own
    top image blocks, product head and two-space query head (the text encoder and the image
    encoder's frozen bottom are the network's, unchanged since stage 1)."""

    def __init__(self, image: nn.Module, product_head: nn.Module, query_head: QueryHead):
        super().__init__()
        self.image, self.product_head, self.query_head = image, product_head, query_head

    @classmethod
    def of(cls, late: TwoTower) -> LateBranch:
        """The branch of a trained ``model.fusion=late_fusion`` model."""
        if late.config.model.fusion != "late_fusion":
            raise ValueError(f"a late branch comes from a late_fusion model, not "
                             f"{late.config.model.fusion!r}")
        return cls(late.image, late.product_head, late.query_head)

    def products(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                 image_features: torch.Tensor, image_present: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.product_head.with_photo_weight(
            text_tokens, text_mask, self.image.top(image_features), image_present)


def mix_vectors(network: torch.Tensor, late: torch.Tensor, weight: float) -> torch.Tensor:
    """[sqrt(1 - w) network; sqrt(w) late]: against a query mixed the same way, one inner
    product is (1 - w) * s_network + w * s_late."""
    return torch.cat([network * (1 - weight) ** 0.5, late * weight ** 0.5], dim=-1)


class TwoTower(nn.Module):
    """Encoders, heads and the contrastive loss of one run config. A fusion model trained
    with ``model.late_mix`` may carry a late-fusion branch (``late_branch``): its vectors
    are then the score mix of both (``model.late_mix_weight``)."""

    def __init__(self, config: RunConfig):
        super().__init__()
        self.config = config
        kind = config.model.fusion
        self.text = TextEncoder(config.text.model, config.text.max_length,
                                config.text.trainable_layers if config.train.domain_finetune
                                else 0)
        self.query_text = self.text if config.model.share_text_encoder else copy.deepcopy(
            self.text)
        head = head_class(kind)
        self.image = None
        if head.uses_image:
            self.image = build_image_encoder(config.image.model, config.image.trainable_blocks,
                                             config.image.image_size,
                                             config.image.colour_tokens)
        settings = HeadSettings(config.model.embed_dim, config.model.fusion_heads,
                                config.model.dropout, config.model.gated_fusion,
                                config.model.guided_pooling)
        self.product_head = head(self.text.dim, self.image.dim if self.image else 0, settings)
        self.query_head = QueryHead(self.text.dim, config.model.embed_dim, head.query_spaces)
        self._share_text_projection_init()
        self.loss = InfoNCELoss()
        self.late_branch: LateBranch | None = None
        if config.model.late_mix_weight > 0:  # a saved mix: its weights load over these
            self.late_branch = self._new_late_branch(config)

    def _new_late_branch(self, config: RunConfig) -> LateBranch:
        """An untrained branch of the shape ``LateBranch.of`` gives (for loading)."""
        settings = HeadSettings(config.model.embed_dim, config.model.fusion_heads,
                                config.model.dropout)
        image = build_image_encoder(config.image.model, config.image.trainable_blocks,
                                    config.image.image_size, config.image.colour_tokens)
        head = head_class("late_fusion")
        return LateBranch(image, head(self.text.dim, image.dim, settings),
                          QueryHead(self.text.dim, config.model.embed_dim, head.query_spaces))

    def attach_late_branch(self, branch: LateBranch, weight: float) -> None:
        """Serve the mix (1 - weight) * this network + weight * ``branch`` (chosen on val);
        the config records the weight, so the saved model loads with its branch."""
        if not 0 < weight <= 1:
            raise ValueError(f"a late branch's weight is in (0, 1], got {weight}")
        self.late_branch = branch
        self.config = self.config.replace(f"model.late_mix_weight={weight}")

    def _share_text_projection_init(self) -> None:
        """Start both text projections from the same orthogonal matrix (zero bias): inner
        products of the pretrained sentence space are then approximately preserved, so
        training starts at zero-shot quality instead of a scrambled space."""
        query, product = self.query_head.proj, self.product_head.text_proj
        with torch.no_grad():
            nn.init.orthogonal_(query.weight)
            product.weight.copy_(query.weight)
            query.bias.zero_()
            product.bias.zero_()

    def stage_parameters(self, stage: int) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(encoder, head) parameters that ``stage`` trains. Stage 1: the trainable text
        layers; query and product text projections and the temperature. Stage 2: the
        trainable image blocks; the whole product head, query head and temperature."""
        if stage == 1:
            return ([p for p in self.text.parameters() if p.requires_grad],
                    [*self.query_head.proj.parameters(),
                     *self.product_head.text_proj.parameters(), self.loss.log_scale])
        if stage == 2:
            encoder = [p for p in self.image.parameters() if p.requires_grad] \
                if self.image is not None else []
            return encoder, [*self.product_head.parameters(), *self.query_head.parameters(),
                             self.loss.log_scale]
        raise ValueError(f"stage must be 1 or 2, got {stage}")

    def split_stage1_trained(self, params: list[nn.Parameter]
                             ) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``params`` split into (those stage 1 trains, the rest: new in stage 2)."""
        stage1 = {id(p) for name, p in self.named_parameters() if name.startswith(STAGE1_STATE)}
        return [p for p in params if id(p) in stage1], [p for p in params if id(p) not in stage1]

    def stage1_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith(STAGE1_STATE)}

    def load_stage1_state(self, saved: dict[str, torch.Tensor], source: str) -> None:
        """Load stage 1 from ``saved``; every stage-1 tensor must be there, same shape."""
        own = self.stage1_state()
        missing = sorted(k for k in own if k not in saved)
        resized = sorted(k for k in own if k in saved and saved[k].shape != own[k].shape)
        if missing or resized:
            raise StageCheckpointError(
                f"{source}: not a stage-1 model for this config ({len(missing)} tensor(s) "
                f"missing, e.g. {missing[:3]}; {len(resized)} with another shape, e.g. "
                f"{resized[:3]}); train stage 1 with the same text and model settings")
        self.load_state_dict({k: saved[k] for k in own}, strict=False)

    @property
    def embedding_dim(self) -> int:
        late = self.late_branch.product_head.out_dim if self.late_branch is not None else 0
        return self.product_head.out_dim + late

    @property
    def late_weight(self) -> float:
        return self.config.model.late_mix_weight if self.late_branch is not None else 0.0

    # feature-level paths (training and cached evaluation) -------------------------------
    def queries_from_hidden(self, hidden: torch.Tensor, mask: torch.Tensor,
                            text_half: bool = False) -> torch.Tensor:
        """Cached bottom states (B, T, D) -> query vectors (B, E); ``text_half`` gives the
        text-space part only (what stage 1 trains against product text)."""
        pooled = mean_pool(self.query_text.top(hidden, mask), mask)
        return self.query_head.text_half(pooled) if text_half else \
            self.queries_from_pooled(pooled)

    def queries_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Mean-pooled final query states (B, D) -> query vectors (B, E)."""
        queries = self.query_head(pooled)
        if self.late_branch is None:
            return queries
        return mix_vectors(queries, self.late_branch.query_head(pooled), self.late_weight)

    def product_text_vectors(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Stage 1 product vector from final text tokens: text projection only."""
        return l2(self.product_head.text_vector(tokens, mask))

    def products_from_features(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                               image_features: torch.Tensor | None,
                               image_present: torch.Tensor) -> torch.Tensor:
        """Final text tokens + cached image features -> product vectors (B, E)."""
        if self.late_branch is not None:
            return self.products_with_photo_weight(text_tokens, text_mask, image_features,
                                                   image_present)[0]
        image_tokens = None
        if self.image is not None:
            image_tokens = self.image.top(image_features)
        return self.product_head(text_tokens, text_mask, image_tokens, image_present)

    def products_with_photo_weight(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                                   image_features: torch.Tensor | None,
                                   image_present: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``products_from_features`` and each product's photo weight (None when the head
        does not weigh the modalities, see ``ProductHead.with_photo_weight``)."""
        image_tokens = None
        if self.image is not None:
            image_tokens = self.image.top(image_features)
        vectors, photo = self.product_head.with_photo_weight(text_tokens, text_mask,
                                                             image_tokens, image_present)
        if self.late_branch is None:
            return vectors, photo
        late, late_photo = self.late_branch.products(text_tokens, text_mask, image_features,
                                                     image_present)
        w = self.late_weight
        if photo is not None and late_photo is not None:  # the photo's share of the score
            photo = (1 - w) * photo + w * late_photo
        return mix_vectors(vectors, late, w), photo

    # raw-input paths (serving and indexing) ----------------------------------------------
    @torch.no_grad()
    def embed_queries(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        self.eval()
        out = []
        for start in range(0, len(texts), batch_size):
            with autocast(self.config.train.precision):
                hidden, mask = self.query_text.bottom(texts[start:start + batch_size],
                                                      self.config.text.query_max_length)
                out.append(self.queries_from_hidden(hidden, mask).float())
        return torch.cat(out) if out else torch.empty(0, self.embedding_dim)

    @torch.no_grad()
    def embed_products(self, texts: list[str], images: list[np.ndarray | None],
                       image_chunk: int = IMAGE_CHUNK) -> torch.Tensor:
        """texts and decoded RGB arrays (None = no photo) -> product vectors (B, E).

        Each distinct text is encoded once. The CNN runs in chunks of ``image_chunk``
        (channels_last + bf16 autocast were fastest at 16 on 2 CPU cores; see
        benchmarks/RESULTS.md).
        """
        self.eval()
        rows, text_index = distinct_rows(texts)
        with autocast(self.config.train.precision):
            hidden, mask = self.text.bottom([texts[row] for row in rows])
            tokens = self.text.top(hidden, mask)[text_index]
            mask = mask[text_index]
            present = torch.tensor([img is not None for img in images], dtype=torch.bool)
            features = None
            if self.image is not None:
                size = self.image.image_size
                filled = [img if img is not None else np.zeros((size, size, 3), np.uint8)
                          for img in images]
                features = torch.cat([
                    self.image.bottom(self.image.preprocess(filled[i:i + image_chunk]))
                    for i in range(0, len(filled), image_chunk)])
            return self.products_from_features(tokens, mask, features, present).float()

    # persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path, manifest: dict | None = None) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in self.state_dict().items()},  # loads anywhere
                   directory / MODEL_FILE)
        (directory / CONFIG_FILE).write_text(yaml.safe_dump(self.config.to_dict(),
                                                            sort_keys=False))
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest or {}, indent=2))
        return directory


def embedding_dim_of(config: RunConfig) -> int:
    """The width of the vectors of a model with ``config``, without building it."""
    width = head_class(config.model.fusion).output_dim(config.model.embed_dim)
    if config.model.late_mix_weight > 0:
        width += head_class("late_fusion").output_dim(config.model.embed_dim)
    return width


def load_model(directory: str | Path) -> TwoTower:
    """A model saved by ``TwoTower.save``: its config plus weights."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise BadInputError(_not_a_saved_model(directory))
    config = runs_here(from_dict(yaml.safe_load((directory / CONFIG_FILE).read_text())))
    model = TwoTower(config)
    model.load_state_dict(load_tensors(directory / MODEL_FILE, "model weights"))
    return model.eval()


def runs_here(config: RunConfig) -> RunConfig:
    """``config`` with ``runtime.device=auto`` when the device it was trained on is not on
    this host (a model trained on a GPU worker, embedding or serving on a CPU one)."""
    from fusion_model.runtime import resolve_device

    try:
        resolve_device(config.runtime.device)
    except BadInputError:
        log.info("trained on %s, which this host lacks: running on runtime.device=auto",
                 config.runtime.device)
        return config.replace("runtime.device=auto")
    return config


def _not_a_saved_model(directory: Path) -> str:
    """Why ``directory`` is not a saved model, pointing at the one inside a training run."""
    inside = directory / "model"
    if not directory.is_dir():
        found = "does not exist" if not directory.exists() else "is a file"
        return f"model directory {directory} {found}"
    hint = (f"; a training run keeps its model in {inside}" if (inside / CONFIG_FILE).is_file()
            else "; give the folder `fusion-model train --out DIR` wrote, DIR/model")
    return f"{directory} is not a saved model (no {CONFIG_FILE}){hint}"
