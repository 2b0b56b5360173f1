"""Batch embedding of a whole catalog and evaluation of a saved model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fusion_model.data.catalog import Catalog
from fusion_model.data.retrieval import data_for
from fusion_model.engines import FrozenTowers, resolve_runtime, towers_for
from fusion_model.evaluation.evaluator import EvaluationResult, Evaluator
from fusion_model.features import (
    image_batch,
    image_bottom_features,
    load_images,
    photos_named_by_product,
    product_text,
    text_bottom_features,
)
from fusion_model.models.towers import TwoTower
from fusion_model.progress import progress_bar
from fusion_model.runtime import Runtime

log = logging.getLogger(__name__)


def embed_catalog(model: TwoTower, catalog: Catalog, cache_dir: str | None = None,
                  batch_size: int = 256, progress: bool = True,
                  engine: str | None = None) -> torch.Tensor:
    """(N, E) product vectors in catalog order.

    With ``cache_dir`` the frozen encoder bottoms come from (and go to) the feature cache;
    without it every product is encoded from its files in batches by the product tower.
    Either way on the model's runtime, ``engine`` overriding ``runtime.engine``.
    """
    return embed_catalog_with_photo_weights(model, catalog, cache_dir, batch_size, progress,
                                            engine)[0]


def embed_catalog_with_photo_weights(
        model: TwoTower, catalog: Catalog, cache_dir: str | None = None,
        batch_size: int = 256, progress: bool = True, engine: str | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``embed_catalog`` and each product's photo weight (N,), from the feature cache's
    path; None without a cache or for a head that does not weigh the modalities."""
    model.eval()
    texts = [product_text(t, d) for t, d in zip(catalog.products["title"],
                                                catalog.products["description"])]
    uris = catalog.products["image_uri"].tolist()
    with photos_named_by_product(catalog.products):
        if cache_dir is None:
            return _embed_uncached(towers_for(model, engine), texts, uris, batch_size,
                                   progress), None
        return _embed_cached(model, texts, uris, cache_dir, batch_size, progress,
                             resolve_runtime(model.config, engine))


def _embed_cached(model: TwoTower, texts: list[str], uris: list[str | None], cache_dir: str,
                  batch_size: int, progress: bool, runtime: Runtime
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    text = text_bottom_features(model.text, texts, model.config.text.max_length, cache_dir,
                                runtime, progress=progress)
    images = None
    if model.image is not None:
        images = image_bottom_features(model.image, uris, cache_dir, runtime,
                                       progress=progress)
    out, weights = [], []
    device = runtime.device
    model.to(device)
    with torch.no_grad(), runtime.autocast():
        for start in range(0, len(texts), batch_size):
            idx = slice(start, start + batch_size)
            hidden = text["hidden"][idx].to(device, non_blocking=True).float()
            mask = text["mask"][idx].to(device, non_blocking=True)
            tokens = model.text.top(hidden, mask)
            if images is None:
                features, present = None, torch.zeros(tokens.shape[0], dtype=torch.bool,
                                                      device=device)
            else:
                features = image_batch(images["features"], idx).to(device, non_blocking=True)
                present = images["present"][idx].to(device, non_blocking=True)
            vectors, weight = model.products_with_photo_weight(tokens, mask, features,
                                                               present)
            out.append(vectors.float().cpu())
            weights.append(None if weight is None else weight.float().cpu())
    if not out:
        return torch.empty(0, model.embedding_dim), None
    return torch.cat(out), None if weights[0] is None else torch.cat(weights)


def _embed_uncached(towers: FrozenTowers, texts: list[str], uris: list[str | None],
                    batch_size: int, progress: bool) -> torch.Tensor:
    """Batched embedding from files: the next batches' photos decode and their inputs are
    prepared in a background thread while the tower runs (``embed_product_batches``).
    Products go in the order of their texts, so that products sharing a text fall in one
    batch, where the tower encodes that text once."""
    size = towers.image_size
    order = sorted(range(len(texts)), key=texts.__getitem__)
    starts = list(range(0, len(order), batch_size))
    # beside OpenVINO's streams one decoding thread is fastest: more take their cores
    workers = 1 if towers.engine == "openvino" else 8

    def batches():
        for start in starts:
            rows = order[start:start + batch_size]
            batch_uris = [uris[row] for row in rows]
            images = load_images(batch_uris, size, workers,
                                 towers.runtime.decode_processes) if size else \
                [None] * len(batch_uris)
            yield [texts[row] for row in rows], images

    out = list(progress_bar(towers.embed_product_batches(batches()), total=len(starts),
                            desc="embed products", unit="batch", show=progress))
    if not out:
        return torch.empty(0, towers.embedding_dim)
    vectors = torch.empty(len(texts), towers.embedding_dim)
    vectors[torch.tensor(order)] = torch.cat(out)
    return vectors


def split_queries(model: TwoTower, catalog: Catalog, split: str = "test"
                  ) -> tuple[torch.Tensor, Evaluator]:
    """One split's query vectors (in the evaluator's order) and its evaluator."""
    evaluator = Evaluator.for_split(catalog, model.config, data_for(catalog, model.config),
                                    split)
    return towers_for(model).embed_queries(evaluator.query_texts), evaluator


def evaluate_model(model: TwoTower, catalog: Catalog, split: str = "test",
                   cache_dir: str | None = None, progress: bool = True) -> EvaluationResult:
    """Metrics of a saved model on one split, by exact search over the whole catalog."""
    product_vectors = embed_catalog(model, catalog, cache_dir, progress=progress)
    queries, evaluator = split_queries(model, catalog, split)
    return evaluator.score_vectors(queries, product_vectors)


def write_vectors(path: str | Path, product_ids: list[str], vectors: torch.Tensor) -> None:
    """product_id + vector (list<float32>) as parquet."""
    frame = pd.DataFrame({"product_id": product_ids,
                          "vector": list(vectors.numpy().astype(np.float32))})
    frame.to_parquet(path, index=False)
