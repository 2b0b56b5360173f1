"""The vector index seam: what the platform needs from a store of product vectors.

Indexing, verification, the gate, promotion, refresh and search talk to a ``VectorIndex``
opened by ``open_index(config)``; the backend (``index.backend``: ``milvus``, or ``memory``,
a NumPy store for tests and small catalogs) owns its index types, its metrics and any
per-connection state. Backends register themselves by subclassing ``IndexBackend`` with a
name, as product heads do. Scores are similarities of unit vectors (higher is better):
verification, the gate and exact evaluation rank by them, so a backend offers only metrics
with that meaning. Filters reach ``search`` as the boolean expression that
``index.filters.to_milvus`` writes (quoted values, ``==``, ``!=``, ``in``, ``not in``,
``and``, ``or``, parentheses); every backend evaluates that language.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fusion_model.errors import VectorIndexError
from fusion_model.named import Named

if TYPE_CHECKING:
    from fusion_model.config import IndexConfig


DISPLAY_FIELDS = ("title", "image_uri")  # stored for search results, not filterable
# computed by the model at indexing, shown with results: the photo's share of the product
# vector ("0.630"; "" for a head that does not weigh text and photo, or an older row)
PHOTO_WEIGHT = "photo_weight"


class VectorIndex(Protocol):
    """Named collections of (product_id, vector, content_hash, attributes) behind aliases."""

    INDEX_TYPES: tuple[str, ...]   # index types the backend really builds
    METRICS: tuple[str, ...]       # similarity metrics (higher score = closer)

    @classmethod
    def open(cls, uri: str, token: str = "") -> contextlib.AbstractContextManager: ...

    def create_collection(self, name: str, dim: int, attribute_fields: list[str],
                          index_type: str, metric: str) -> None: ...
    def has_collection(self, name: str) -> bool: ...
    def list_collections(self) -> list[str]: ...
    def fields(self, name: str) -> list[str]: ...
    def existing_hashes(self, name: str, ids: list[str] | None = None) -> dict[str, str]: ...
    def copy_rows(self, source: str, target: str, keep_ids: set[str],
                  fields: list[str], replace: dict[str, dict] | None = None,
                  stored: set[str] | None = None) -> int: ...
    def write_rows(self, name: str, ids: list[str], vectors: np.ndarray, hashes: list[str],
                   attributes: dict[str, list[str]], overwrite: bool = True) -> None: ...
    def import_rows(self, name: str, ids: list[str], vectors: np.ndarray, hashes: list[str],
                    attributes: dict[str, list[str]], import_uri: str,
                    timeout: float = 3600) -> None: ...
    def settle_imports(self, name: str, timeout: float = 3600) -> None: ...
    def delete_ids(self, name: str, ids: list[str]) -> None: ...
    def count(self, name: str, ids: list[str] | None = None) -> int: ...
    def wait_until_indexed(self, name: str, timeout: float = 600, every: float = 2
                           ) -> bool: ...
    def vectors_of(self, name: str, ids: list[str]) -> tuple[list[str], np.ndarray]: ...
    def rows_of(self, name: str, ids: list[str], fields: list[str]) -> dict[str, dict]: ...
    def search(self, name: str, vectors: np.ndarray, k: int, filter_expr: str = "",
               output_fields: list[str] | None = None) -> list[list[dict]]: ...
    def resolve_alias(self, name: str) -> str: ...
    def aliases_of(self, name: str) -> list[str]: ...
    def point_alias(self, alias: str, name: str) -> str | None: ...
    def drop_alias(self, alias: str) -> None: ...
    def drop_collection(self, name: str) -> None: ...
    def prune(self, prefix: str, keep: int) -> list[str]: ...


BACKENDS: dict[str, type] = {}


class IndexBackend(Named):
    """Base of the backends: registers a subclass under its ``name`` and implements what
    follows from the protocol alone (pruning old collections)."""

    registry = BACKENDS
    kind = "index backend"
    shards = 1      # of a new collection (``index.shards``), where the backend has them
    replicas = 1    # in-memory replicas of a loaded collection (``index.replicas``)

    def flush(self, name: str) -> None:
        """Seal what was written to ``name`` (once, at the end of a build); a no-op for
        backends without segments."""

    def release(self, name: str) -> None:
        """Free the memory of a collection nothing serves (reads load it again); a no-op
        for backends that do not load collections."""

    def prune(self, prefix: str, keep: int) -> list[str]:
        """Drop the oldest ``prefix`` collections beyond the newest ``keep``, never an
        aliased one. Age is the model version in the name (``<prefix>_m<version>_...``)."""
        ours = [n for n in self.list_collections() if n.startswith(f"{prefix}_m")]
        ours.sort(key=version_of, reverse=True)
        dropped = []
        for name in ours[keep:]:
            if not self.aliases_of(name):
                self.drop_collection(name)
                dropped.append(name)
        return dropped

    def release_idle(self, prefix: str, keep: set[str]) -> list[str]:
        """Release the ``prefix`` collections that no alias points at, except ``keep``
        (those a running service or a check may still read); they stay for rollback,
        which loads a collection before the alias moves back."""
        idle = [n for n in self.list_collections() if n.startswith(f"{prefix}_m")
                and n not in keep and not self.aliases_of(n)]
        for name in idle:
            self.release(name)
        return idle

    def refuse_drop_if_aliased(self, name: str) -> None:
        aliases = self.aliases_of(name)
        if aliases:
            raise VectorIndexError(f"refusing to drop {name}: alias(es) {', '.join(aliases)} "
                                   "point at it; point them elsewhere first")


def collection_name(prefix: str, model_version: str | int, catalog_fingerprint: str) -> str:
    """``products_m3_1a2b3c4d5e6f``: letters, digits and underscores, as index names allow."""
    name = f"{prefix}_m{model_version}_{catalog_fingerprint[:12]}"
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def content_hash(*parts: object) -> str:
    """Stable hash of a product's indexed content (text, photo tag, attributes)."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode(), usedforsecurity=False
                        ).hexdigest()


def version_of(name: str) -> tuple[int, str]:
    match = re.search(r"_m(\d+)_", name)
    return (int(match.group(1)) if match else -1, name)


def check_index_config(config: IndexConfig) -> None:
    """ConfigError unless ``index.backend`` is registered and builds the configured index
    type and metric."""
    from fusion_model.config import ConfigError

    backend = BACKENDS.get(config.backend)
    if backend is None:
        raise ConfigError(f"index.backend={config.backend!r}: choose one of "
                          f"{', '.join(BACKENDS)}")
    if config.index_type.upper() not in backend.INDEX_TYPES:
        raise ConfigError(f"index.index_type={config.index_type!r}: the {config.backend} "
                          f"backend builds {', '.join(backend.INDEX_TYPES)} (others silently "
                          "fall back)")
    if config.metric not in backend.METRICS:
        raise ConfigError(f"index.metric={config.metric!r}: choose "
                          f"{' or '.join(backend.METRICS)} (scores must be similarities: "
                          "verification and the gate rank by them)")


def backend_class(name: str) -> type:
    """The VectorIndex implementation registered as ``name`` (KeyError names the choices)."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise KeyError(f"index.backend={name!r}: choose one of {', '.join(BACKENDS)}") from None


@contextlib.contextmanager
def open_index(config: IndexConfig) -> Iterator[VectorIndex]:
    """The configured backend connected to ``config.uri``, closed on exit."""
    with backend_class(config.backend).open(config.uri, config.resolved_token()) as index:
        index.shards, index.replicas = config.shards, config.replicas
        yield index
