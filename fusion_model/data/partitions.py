"""A partition manifest: a snapshot's products split once into one table per shard, so
that each shard task reads only its own rows (and through them only its photos and its
existing vectors) instead of the whole catalog. Each row carries its photo's content tag
(``image_tag``), found once for the snapshot: a shard neither hashes nor lists photos to
key its features and content hashes."""

from __future__ import annotations

import io
import logging
import zlib

import numpy as np
import pandas as pd

from fusion_model import storage
from fusion_model.data.catalog import Catalog, empty_judgments, empty_queries

log = logging.getLogger(__name__)

TAG_COLUMN = "image_tag"  # the photo's content tag, in the manifest's tables only


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
    tags = np.array(storage.content_tag_list([u if isinstance(u, str) else None
                                              for u in catalog.products["image_uri"]]),
                    dtype=object)
    for shard, uri in enumerate(uris):
        mine = owner == shard  # one shard's rows copied at a time, never the whole table
        part = catalog.products[mine].reset_index(drop=True)
        part[TAG_COLUMN] = tags[mine]
        buffer = io.BytesIO()
        part.to_parquet(buffer, index=False)
        storage.write_bytes(uri, buffer.getvalue())
    log.info("partition manifest: %d products in %d shards -> %s", len(owner), shards,
             directory)
    return uris


def read_partition(uri: str, catalog_uri: str) -> tuple[Catalog, dict[str, str]]:
    """One shard's products as a catalog (no queries or judgments: indexing needs none)
    and its photos' content tags by URI, for ``storage.known_content_tags`` (empty for
    a manifest written before the tags were)."""
    products = pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))
    for column in ("image", "image_uri"):  # as the loader types them: str or None
        products[column] = pd.Series([v if isinstance(v, str) else None
                                      for v in products[column]], dtype=object)
    tags = {}
    if TAG_COLUMN in products.columns:
        tags = {u: t for u, t in zip(products["image_uri"], products.pop(TAG_COLUMN))
                if isinstance(u, str) and isinstance(t, str)}
    return Catalog(catalog_uri, products, empty_queries(), empty_judgments()), tags
