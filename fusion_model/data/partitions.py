"""A partition manifest: a snapshot's products split once into one table per shard, so
that each shard task reads only its own rows (and through them only its photos and its
existing vectors) instead of the whole catalog."""

from __future__ import annotations

import io
import logging
import zlib

import numpy as np
import pandas as pd

from fusion_model import storage
from fusion_model.data.catalog import Catalog, empty_judgments, empty_queries

log = logging.getLogger(__name__)


def shard_of(product_ids: pd.Series, shards: int) -> np.ndarray:
    """Each product's shard: a stable hash of its id (the same on every worker)."""
    return np.fromiter((zlib.crc32(str(pid).encode()) % shards for pid in product_ids),
                       dtype=np.int64, count=len(product_ids))


def write_partitions(catalog: Catalog, shards: int, root: str) -> list[str]:
    """Write (once per snapshot and shard count) ``shards`` product tables under
    ``root/partitions/<fingerprint>/<shards>/`` and return their URIs in shard order."""
    directory = storage.join(root, "partitions", catalog.fingerprint[:32], str(shards))
    uris = [storage.join(directory, f"shard-{k:05d}.parquet") for k in range(shards)]
    if all(storage.exists(uri) for uri in uris):
        log.info("partition manifest of %d shards already written: %s", shards, directory)
        return uris
    owner = shard_of(catalog.products["product_id"], shards)
    for shard, uri in enumerate(uris):
        buffer = io.BytesIO()
        catalog.products[owner == shard].reset_index(drop=True).to_parquet(buffer,
                                                                           index=False)
        storage.write_bytes(uri, buffer.getvalue())
    log.info("partition manifest: %d products in %d shards -> %s", len(owner), shards,
             directory)
    return uris


def read_partition(uri: str, catalog_uri: str) -> Catalog:
    """One shard's products as a catalog (no queries or judgments: indexing needs none)."""
    products = pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))
    for column in ("image", "image_uri"):  # as the loader types them: str or None
        products[column] = pd.Series([v if isinstance(v, str) else None
                                      for v in products[column]], dtype=object)
    return Catalog(catalog_uri, products, empty_queries(), empty_judgments())
