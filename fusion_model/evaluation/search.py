"""Exact (brute-force) top-k search over the whole catalog, chunked to bound memory."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

SCORES_PER_BLOCK = 1 << 22   # query x product scores held at once (16 MB of float32)


def exact_top_k(queries: torch.Tensor, products: torch.Tensor | Iterable[torch.Tensor],
                k: int, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k products by inner product for every query.

    queries:  (Q, D) float
    products: (N, D) float, or an iterable of (n_i, D) chunks in product order (streamed:
              the products need never be in memory at once)
    returns:  scores (Q, k') and product indices (Q, k'), best first, k' = min(k, N)
    Memory is O(Q * (chunk_size + k)) whatever N is; by default a block holds
    ``SCORES_PER_BLOCK`` scores (at least 1,024 products).
    """
    chunk_size = chunk_size or max(1024, SCORES_PER_BLOCK // max(1, queries.shape[0]))
    best_scores = torch.full((queries.shape[0], 0), float("-inf"), device=queries.device)
    best_index = torch.empty((queries.shape[0], 0), dtype=torch.long, device=queries.device)
    queries = queries.float()
    start = 0
    for block in _blocks(products, chunk_size):
        scores = queries @ block.float().T                            # (Q, C)
        top = torch.topk(scores, min(k, block.shape[0]), dim=1)
        merged_scores = torch.cat([best_scores, top.values], dim=1)  # (Q, <=2k)
        merged_index = torch.cat([best_index, top.indices + start], dim=1)
        keep = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
        best_scores = keep.values
        best_index = torch.gather(merged_index, 1, keep.indices)
        start += block.shape[0]
    return best_scores, best_index


def _blocks(products: torch.Tensor | Iterable[torch.Tensor], size: int
            ) -> Iterator[torch.Tensor]:
    """Blocks of about ``size`` rows (small streamed chunks gathered up to it)."""
    if isinstance(products, torch.Tensor):
        for start in range(0, products.shape[0], size):
            yield products[start:start + size]
        return
    pending, rows = [], 0
    for chunk in products:
        pending.append(chunk)
        rows += chunk.shape[0]
        if rows >= size:
            yield torch.cat(pending)
            pending, rows = [], 0
    if pending:
        yield torch.cat(pending)
