"""What training adds to a catalog's retrieval data: per-epoch batches of positives.

``build_data`` and its types live in ``fusion_model.data.retrieval`` (evaluation reads
them too); they are re-exported here for training code."""

from __future__ import annotations

import numpy as np

from fusion_model.data.retrieval import QuerySet, RetrievalData, build_data


def epoch_pairs(positives: list[np.ndarray], per_query: int, batch_size: int,
                rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled (query index, positive product index) batches for one epoch.

    Each query contributes up to ``per_query`` distinct positives; a batch never holds the
    same product twice (a repeat moves to a later batch), so in-batch negatives are real.
    """
    pairs = []
    for q, pos in enumerate(positives):
        if len(pos):
            chosen = rng.choice(pos, size=min(per_query, len(pos)), replace=False)
            pairs += [(q, int(p)) for p in chosen]
    order = rng.permutation(len(pairs))
    batches: list[list[tuple[int, int]]] = []
    open_batches: list[tuple[list, set]] = []
    for i in order:
        q, p = pairs[i]
        for batch, seen in open_batches:
            if p not in seen and len(batch) < batch_size:
                batch.append((q, p))
                seen.add(p)
                break
        else:
            open_batches.append(([(q, p)], {p}))
        while open_batches and len(open_batches[0][0]) == batch_size:
            batches.append(open_batches.pop(0)[0])
        if len(open_batches) > 4:  # bound the search; flush the fullest
            batches.append(open_batches.pop(0)[0])
    batches += [b for b, _ in open_batches if len(b) >= 2]
    return [(np.array([q for q, _ in b]), np.array([p for _, p in b])) for b in batches]


def judged_zero_products(queries: QuerySet, product_ids: list[str]) -> list[np.ndarray]:
    """Per query of ``queries``, the indices of its products judged grade 0 (judged and
    not relevant: in a feedback snapshot, shown and passed over)."""
    position = {p: i for i, p in enumerate(product_ids)}
    return [np.array([position[p] for p, g in queries.qrels.get(q, {}).items()
                      if g == 0 and p in position], dtype=np.int64) for q in queries.ids]


def known_positive_mask(query_index: np.ndarray, product_index: np.ndarray,
                        positive_sets: list[set[int]]) -> np.ndarray:
    """(B, P) True where product j is a judged positive of query i."""
    return np.array([[p in positive_sets[q] for p in product_index] for q in query_index],
                    dtype=bool)


__all__ = ["QuerySet", "RetrievalData", "build_data", "epoch_pairs", "judged_zero_products",
           "known_positive_mask"]
