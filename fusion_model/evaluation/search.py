"""Exact (brute-force) top-k search over the whole catalog, chunked to bound memory."""

from __future__ import annotations

import torch


def exact_top_k(queries: torch.Tensor, products: torch.Tensor, k: int,
                chunk_size: int = 32768) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k products by inner product for every query.

    queries:  (Q, D) float
    products: (N, D) float
    returns:  scores (Q, k') and product indices (Q, k'), best first, k' = min(k, N)
    Memory is O(Q * (chunk_size + k)) whatever N is.
    """
    k = min(k, products.shape[0])
    best_scores = torch.full((queries.shape[0], 0), float("-inf"))
    best_index = torch.empty((queries.shape[0], 0), dtype=torch.long)
    queries = queries.float()
    for start in range(0, products.shape[0], chunk_size):
        block = products[start:start + chunk_size].float()
        scores = queries @ block.T                                   # (Q, C)
        top = torch.topk(scores, min(k, block.shape[0]), dim=1)
        merged_scores = torch.cat([best_scores, top.values], dim=1)  # (Q, <=2k)
        merged_index = torch.cat([best_index, top.indices + start], dim=1)
        keep = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
        best_scores = keep.values
        best_index = torch.gather(merged_index, 1, keep.indices)
    return best_scores, best_index
