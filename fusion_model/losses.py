"""Contrastive losses as standalone modules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class InfoNCELoss(nn.Module):
    """InfoNCE with in-batch negatives and a learnable temperature.

    queries  (B, E): query vectors
    products (P, E): products[:B] are the positives of queries[:B] in order; rows B..P-1
                     are extra (mined hard) negatives
    known_positive (B, P) bool, optional: pairs judged relevant that must not act as
                     negatives (a product relevant to two queries of the same batch)
    The loss is symmetric: query -> product over all P products, and product -> query
    over the B positives.
    """

    def __init__(self, temperature: float = 0.05, learnable: bool = True,
                 max_scale: float = 100.0):
        super().__init__()
        scale = torch.tensor(math.log(1.0 / temperature))
        self.log_scale = nn.Parameter(scale) if learnable else nn.Buffer(scale)
        self.max_log_scale = math.log(max_scale)

    @property
    def temperature(self) -> float:
        return float(1.0 / self.log_scale.detach().clamp(max=self.max_log_scale).exp())

    def forward(self, queries: torch.Tensor, products: torch.Tensor,
                known_positive: torch.Tensor | None = None) -> torch.Tensor:
        batch = queries.shape[0]
        scale = self.log_scale.clamp(max=self.max_log_scale).exp()
        logits = scale * queries.float() @ products.float().T                # (B, P)
        if known_positive is not None:
            own = torch.zeros_like(known_positive)
            own[:, :batch] = torch.eye(batch, dtype=torch.bool, device=logits.device)
            logits = logits.masked_fill(known_positive & ~own, float("-inf"))
        target = torch.arange(batch, device=logits.device)
        query_to_product = F.cross_entropy(logits, target)
        product_to_query = F.cross_entropy(logits[:, :batch].T, target)
        return (query_to_product + product_to_query) / 2
