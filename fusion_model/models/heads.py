"""Product heads (the modality fusion network and its baselines) and query heads.

Every product head maps encoder outputs to one L2-normalised vector per product:

    text_tokens  (B, Lt, Dt)  final text token states     text_mask     (B, Lt) bool
    image_tokens (B, Li, Di)  image region tokens         image_present (B,)    bool
    -> (B, out_dim)

so they are trained and evaluated identically. ``late_fusion`` scores at the score level;
its vector is [a * text, (1 - a) * image] against a query vector [q_text, q_image],
so one inner product = a * s_text + (1 - a) * s_image and one ANN search still serves it.

Heads register themselves by name (``class MyHead(ProductHead, name="mine")``); every list of
kinds (config validation, the benchmark's models, the tower's layout) reads ``HEADS``. A new
head is one class: it declares whether it uses the image (and the text), how many query
spaces its vector has (``query_spaces``; the output size follows) and takes the one
constructor signature ``(text_dim, image_dim, settings)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from fusion_model.models.text import mean_pool
from fusion_model.named import Named


def l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def image_pool(tokens: torch.Tensor) -> torch.Tensor:
    """(B, Li, D) -> (B, D) mean over regions."""
    return tokens.mean(dim=1)


@dataclass(frozen=True)
class HeadSettings:
    """What every head is built from (``model.*`` of the run config)."""

    embed_dim: int
    heads: int = 4
    dropout: float = 0.1
    gated: bool = False      # fusion: cross-attention updates behind zero-initialised tanh gates
    guided_pooling: bool = True  # fusion: the product's text picks the photo's regions


HEADS: dict[str, type[ProductHead]] = {}


class ProductHead(nn.Module, Named):
    """Base: text/image projections shared by every kind (stage 1 trains ``text_proj``)."""

    registry = HEADS
    kind = "product head"
    uses_text: ClassVar[bool] = True
    uses_image: ClassVar[bool] = True
    query_spaces: ClassVar[int] = 1  # 2: the query vector is [text space; image space]

    @classmethod
    def output_dim(cls, embed_dim: int) -> int:
        return cls.query_spaces * embed_dim

    def __init__(self, text_dim: int, image_dim: int, settings: HeadSettings):
        super().__init__()
        self.settings = settings
        self.embed_dim = settings.embed_dim
        self.out_dim = self.output_dim(settings.embed_dim)
        self.text_proj = nn.Linear(text_dim, settings.embed_dim)
        self.image_proj = nn.Linear(image_dim, settings.embed_dim) if self.uses_image else None

    def text_vector(self, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.text_proj(mean_pool(text_tokens, text_mask))

    def image_vector(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.image_proj(image_pool(image_tokens))

    def mix_parameters(self) -> list[nn.Parameter] | None:
        """The parameters of the simpler mix this head starts as, trained alone first
        (``train.stage2.mix_epochs``); None: the head has no such phase."""
        return None

    def with_photo_weight(self, text_tokens, text_mask, image_tokens, image_present
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The product vectors and, for heads that weigh the two modalities, each
        product's photo weight (B,) in [0, 1] (text weight: 1 minus it); None for the
        others. What the review page shows to say why the photo moved a product."""
        return self(text_tokens, text_mask, image_tokens, image_present), None


class TextOnlyHead(ProductHead, name="text_only"):
    uses_image = False

    def forward(self, text_tokens, text_mask, image_tokens=None, image_present=None):
        return l2(self.text_vector(text_tokens, text_mask))


class ImageOnlyHead(ProductHead, name="image_only"):
    uses_text = False

    def forward(self, text_tokens, text_mask, image_tokens, image_present):
        return l2(self.image_vector(image_tokens) * image_present.unsqueeze(-1))


class ConcatHead(ProductHead, name="concat"):
    """Naive fusion: MLP over [text; image] pooled features."""

    def __init__(self, text_dim: int, image_dim: int, settings: HeadSettings):
        super().__init__(text_dim, image_dim, settings)
        embed_dim, dropout = settings.embed_dim, settings.dropout
        self.mlp = nn.Sequential(nn.Linear(2 * embed_dim, 2 * embed_dim), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(2 * embed_dim, embed_dim))

    def forward(self, text_tokens, text_mask, image_tokens, image_present):
        text = self.text_vector(text_tokens, text_mask)
        image = self.image_vector(image_tokens) * image_present.unsqueeze(-1)
        return l2(self.mlp(torch.cat([text, image], dim=-1)))


class WeightedSumHead(ProductHead, name="weighted_sum"):
    """a * text + (1 - a) * image with one learned a; a missing photo leaves text alone."""

    def __init__(self, text_dim: int, image_dim: int, settings: HeadSettings):
        super().__init__(text_dim, image_dim, settings)
        self.mix = nn.Parameter(torch.zeros(()))

    def forward(self, text_tokens, text_mask, image_tokens, image_present):
        a = torch.sigmoid(self.mix)
        text = l2(self.text_vector(text_tokens, text_mask))
        image = l2(self.image_vector(image_tokens))
        present = image_present.unsqueeze(-1).float()
        return l2(text * (a * present + (1 - present)) + (1 - a) * image * present)

    def with_photo_weight(self, text_tokens, text_mask, image_tokens, image_present):
        vectors = self(text_tokens, text_mask, image_tokens, image_present)
        return vectors, (1 - torch.sigmoid(self.mix)) * image_present.float()


class LateFusionHead(ProductHead, name="late_fusion"):
    """Score-level fusion: separate text and image scores mixed by a learned weight."""

    query_spaces = 2

    def __init__(self, text_dim: int, image_dim: int, settings: HeadSettings):
        super().__init__(text_dim, image_dim, settings)
        self.mix = nn.Parameter(torch.zeros(()))

    def forward(self, text_tokens, text_mask, image_tokens, image_present):
        a = torch.sigmoid(self.mix)
        present = image_present.unsqueeze(-1).float()
        text = l2(self.text_vector(text_tokens, text_mask))
        image = l2(self.image_vector(image_tokens))
        text_weight = a * present + (1 - present)
        return torch.cat([text * text_weight, image * (1 - a) * present], dim=-1)

    def with_photo_weight(self, text_tokens, text_mask, image_tokens, image_present):
        vectors = self(text_tokens, text_mask, image_tokens, image_present)
        return vectors, (1 - torch.sigmoid(self.mix)) * image_present.float()


class CrossModalBlock(nn.Module):
    """Pre-norm cross-attention + FFN producing an *update* to the query stream."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ffn = (nn.LayerNorm(dim) for _ in range(3))
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * dim, dim))

    def forward(self, query: torch.Tensor, context: torch.Tensor,
                context_pad: torch.Tensor | None = None) -> torch.Tensor:
        """query (B, Lq, d), context (B, Lc, d), context_pad (B, Lc) True = ignore."""
        kv = self.norm_kv(context)
        attended, _ = self.attention(self.norm_q(query), kv, kv, key_padding_mask=context_pad,
                                     need_weights=False)
        return attended + self.ffn(self.norm_ffn(query + attended))


class FusionHead(ProductHead, name="fusion"):
    """The modality fusion network.

    1. Project text tokens and image regions into the shared d-dim space.
    2. Bidirectional cross-attention: text tokens attend to image regions and regions to
       text tokens; each stream receives an *update* that is switched off when the other
       modality is missing (residual path: no photo -> exactly the text-only embedding).
       With ``settings.gated`` each update passes a tanh gate that starts at 0 (as
       Flamingo adds cross-attention to pretrained towers), so training starts from the
       gated weighted sum of steps 3-4 and can only add to it.
    2b. With ``settings.guided_pooling`` the image regions are pooled by attention from the
       product's pooled text (the title says which garment of the photo is for sale); its
       key projection starts at zero, i.e. at mean pooling.
    3. Both pooled streams are L2-normalised, then a learned per-product gate over
       (text, image) from [t, i, t*i, |t-i|] decides how much each modality contributes;
       a missing modality gets weight 0.
    4. A complementary term from both pooled streams adds cross-modal information that
       neither modality carries alone (zero-initialised, so training starts at the gate).
    """

    def __init__(self, text_dim: int, image_dim: int, settings: HeadSettings):
        super().__init__(text_dim, image_dim, settings)
        d, heads, dropout = settings.embed_dim, settings.heads, settings.dropout
        self.text_from_image = CrossModalBlock(d, heads, dropout)
        self.image_from_text = CrossModalBlock(d, heads, dropout)
        self.update_gates = nn.Parameter(torch.zeros(2)) if settings.gated else None
        self.region_query = self.region_key = None
        if settings.guided_pooling:
            self.region_query, self.region_key = nn.Linear(d, d), nn.Linear(d, d)
            nn.init.zeros_(self.region_key.weight)
            nn.init.zeros_(self.region_key.bias)
        self.gate = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Linear(d, 2))
        self.complement = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, d))
        nn.init.zeros_(self.complement[-1].weight)
        nn.init.zeros_(self.complement[-1].bias)
        nn.init.zeros_(self.gate[-1].weight)
        with torch.no_grad():
            self.gate[-1].bias.copy_(torch.tensor([1.0, 0.0]))  # start text-leaning

    def forward(self, text_tokens, text_mask, image_tokens, image_present):
        return self.with_photo_weight(text_tokens, text_mask, image_tokens, image_present)[0]

    def with_photo_weight(self, text_tokens, text_mask, image_tokens, image_present):
        text = self.text_proj(text_tokens)                         # (B, Lt, d)
        image = self.image_proj(image_tokens)                      # (B, Li, d)
        has_text = text_mask.any(dim=1)                            # (B,)
        safe_pad = ~text_mask.clone()
        safe_pad[:, 0] = False                                     # never mask every key
        present = image_present.float().view(-1, 1, 1)
        texty = has_text.float().view(-1, 1, 1)
        if self.update_gates is not None:
            gates = torch.tanh(self.update_gates)
            present, texty = present * gates[0], texty * gates[1]
        text = text + present * self.text_from_image(text, image)
        image = image + texty * self.image_from_text(image, text, safe_pad)
        pooled_text = mean_pool(text, text_mask)
        t = l2(pooled_text)                                        # (B, d) unit length
        i = l2(self._pool_regions(image, pooled_text))             # (B, d) unit length
        logits = self.gate(torch.cat([t, i, t * i, (t - i).abs()], dim=-1)).float()
        logits = logits.masked_fill(torch.stack([~has_text & image_present,
                                                 ~image_present], dim=-1), float("-inf"))
        weights = torch.softmax(logits, dim=-1)                    # (B, 2)
        both = (has_text & image_present).float().unsqueeze(-1)
        fused = weights[:, :1] * t + weights[:, 1:] * i
        fused = fused + both * self.complement(torch.cat([t, i], dim=-1))
        return l2(fused), weights[:, 1]


    def mix_parameters(self) -> list[nn.Parameter]:
        """What a weighted sum of the two modalities has: both projections and the mix
        (the gate's bias). Trained alone, with every other part at its zero start (gated
        cross-attention, mean pooling, constant gate, no complement), this head *is* a
        weighted sum of its L2-normalised text and image vectors."""
        return [*self.text_proj.parameters(), *self.image_proj.parameters(),
                self.gate[-1].bias]

    def _pool_regions(self, image: torch.Tensor, pooled_text: torch.Tensor) -> torch.Tensor:
        """(B, Li, d) regions -> (B, d): mean, or attention from the product's text."""
        if self.region_key is None:
            return image_pool(image)
        query = self.region_query(pooled_text).unsqueeze(1)               # (B, 1, d)
        logits = (self.region_key(image) * query).sum(-1) / image.shape[-1] ** 0.5
        return (torch.softmax(logits.float(), dim=-1).unsqueeze(-1) * image).sum(1)


class QueryHead(nn.Module):
    """Pooled query text -> query vector ([text; image] halves when ``query_spaces`` = 2)."""

    def __init__(self, text_dim: int, embed_dim: int, query_spaces: int = 1):
        super().__init__()
        if query_spaces not in (1, 2):
            raise ValueError(f"query_spaces must be 1 or 2, got {query_spaces}")
        self.proj = nn.Linear(text_dim, embed_dim)
        self.image_proj = nn.Linear(text_dim, embed_dim) if query_spaces == 2 else None

    def text_half(self, pooled: torch.Tensor) -> torch.Tensor:
        """The query's text-space vector (stage 1 aligns it with product text)."""
        return l2(self.proj(pooled))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        text = self.text_half(pooled)
        if self.image_proj is None:
            return text
        return torch.cat([text, l2(self.image_proj(pooled))], dim=-1)


def head_class(kind: str) -> type[ProductHead]:
    if kind not in HEADS:
        raise ValueError(f"unknown product head {kind!r}; choose one of {', '.join(HEADS)}")
    return HEADS[kind]
