"""Embed a catalog into a Milvus collection: resumable, verified, incremental."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from fusion_model import storage
from fusion_model.config import IndexConfig
from fusion_model.data.catalog import Catalog
from fusion_model.index import milvus
from fusion_model.inference import embed_catalog
from fusion_model.models.towers import TwoTower

log = logging.getLogger(__name__)
CHUNK = 2048


@dataclass
class IndexResult:
    collection: str
    written: int
    skipped: int
    deleted: int
    count: int
    verified: bool = False


def product_hashes(catalog: Catalog, fields: list[str]) -> list[str]:
    """Content hash per product: its text, its photo's content tag and its attributes."""
    uris = catalog.products["image_uri"]
    tags = storage.content_tags(uris.dropna().tolist())
    products = catalog.products
    return [milvus.content_hash(t, d, tags.get(u, "") if isinstance(u, str) else "",
                                *(products[f].iloc[i] for f in fields))
            for i, (t, d, u) in enumerate(zip(products["title"], products["description"],
                                              uris))]


def attribute_fields(catalog: Catalog, config: IndexConfig) -> list[str]:
    return [f for f in config.attribute_fields if f in catalog.products.columns]


def write_catalog(model: TwoTower, catalog: Catalog, client, name: str, config: IndexConfig,
                  cache_dir: str | None = None, progress: bool = True,
                  delete_missing: bool = False) -> IndexResult:
    """Upsert every product whose content changed (all, for a new collection).

    Resumable: products already in the collection with the same content hash are skipped,
    so a job restarted after a crash continues where it stopped without duplicates.
    With ``delete_missing`` products no longer in the catalog are deleted (refresh).
    """
    fields = attribute_fields(catalog, config)
    milvus.create_collection(client, name, model.embedding_dim, fields, config.index_type,
                             config.metric)
    hashes = product_hashes(catalog, fields)
    existing = milvus.existing_hashes(client, name)
    ids = catalog.products["product_id"].tolist()
    todo = [i for i, pid in enumerate(ids) if existing.get(pid) != hashes[i]]
    removed = sorted(set(existing) - set(ids)) if delete_missing else []
    log.info("%s: %d products to embed, %d unchanged, %d to delete", name, len(todo),
             len(ids) - len(todo), len(removed))
    bar = tqdm(total=len(todo), desc=f"index {name}", unit="product", disable=not progress)
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        subset = dataclasses.replace(catalog, products=catalog.products.iloc[chunk])
        vectors = embed_catalog(model, subset, cache_dir, progress=False).numpy()
        for b in range(0, len(chunk), config.batch_size):
            rows = chunk[b:b + config.batch_size]
            milvus.upsert_rows(client, name, [ids[i] for i in rows],
                               vectors[b:b + len(rows)], [hashes[i] for i in rows],
                               {f: catalog.products[f].iloc[rows].tolist() for f in fields})
            bar.update(len(rows))
    bar.close()
    milvus.delete_ids(client, name, removed)
    return IndexResult(name, len(todo), len(ids) - len(todo), len(removed),
                       milvus.count(client, name))


def verify(client, name: str, expected_ids: list[str], samples: int, seed: int = 0) -> None:
    """Count equals the catalog and sampled products retrieve themselves at rank 1."""
    found = milvus.count(client, name)
    if found != len(expected_ids):
        raise milvus.MilvusIndexError(f"{name}: holds {found} products, the catalog has "
                                      f"{len(expected_ids)}; not safe to serve")
    rng = np.random.default_rng(seed)
    picked = [expected_ids[i] for i in rng.choice(len(expected_ids),
                                                  min(samples, len(expected_ids)),
                                                  replace=False)]
    rows = client.query(name, filter=f"product_id in {picked!r}".replace("'", '"'),
                        output_fields=["product_id", "vector"])
    vectors = np.array([r["vector"] for r in rows], dtype=np.float32)
    hits = milvus.search(client, name, vectors, k=1)
    for row, vector, best in zip(rows, vectors, hits):
        own = float(vector @ vector)
        if best[0]["product_id"] != row["product_id"] and best[0]["score"] < own - 1e-3:
            raise milvus.MilvusIndexError(
                f"{name}: product {row['product_id']} does not retrieve itself at rank 1 "
                f"(got {best[0]['product_id']}); not safe to serve")
    log.info("verified %s: %d products, %d/%d samples retrieve themselves", name, found,
             len(rows), len(picked))


def build_collection(model: TwoTower, catalog: Catalog, config: IndexConfig, name: str,
                     cache_dir: str | None = None, progress: bool = True) -> IndexResult:
    """Write ``catalog`` into collection ``name`` (new or partly written) and verify it."""
    with milvus.open_client(config.uri, config.token) as client:
        result = write_catalog(model, catalog, client, name, config, cache_dir, progress)
        verify(client, name, catalog.products["product_id"].tolist(), config.verify_samples)
    result.verified = True
    return result


def refresh_serving(model: TwoTower, catalog: Catalog, config: IndexConfig,
                    cache_dir: str | None = None, progress: bool = True) -> IndexResult:
    """Incremental refresh of the collection behind the serving alias: embed new and
    changed products, delete removed ones, verify."""
    with milvus.open_client(config.uri, config.token) as client:
        name = milvus.resolve_alias(client, config.alias)
        if name == config.alias:
            raise milvus.MilvusIndexError(f"alias {config.alias!r} does not exist yet; "
                                          "promote a model before refreshing")
        result = write_catalog(model, catalog, client, name, config, cache_dir, progress,
                               delete_missing=True)
        verify(client, name, catalog.products["product_id"].tolist(), config.verify_samples)
    result.verified = True
    return result
