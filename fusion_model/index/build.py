"""Embed a catalog into a Milvus collection: resumable, verified, incremental."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from fusion_model import storage
from fusion_model.config import IndexConfig
from fusion_model.data.catalog import Catalog
from fusion_model.errors import BadInputError, VectorIndexError
from fusion_model.faults import checkpoint
from fusion_model.index.base import (
    DISPLAY_FIELDS,
    PHOTO_WEIGHT,
    VectorIndex,
    collection_name,
    content_hash,
    open_index,
)
from fusion_model.inference import embed_catalog_with_photo_weights
from fusion_model.models.towers import TwoTower
from fusion_model.progress import progress_bar

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
    products = catalog.products
    tags = storage.content_tag_list([u if isinstance(u, str) else None
                                     for u in products["image_uri"]])
    return [content_hash(t, d, tag or "", *(products[f].iloc[i] for f in fields))
            for i, (t, d, tag) in enumerate(zip(products["title"], products["description"],
                                                tags))]


def attribute_fields(catalog: Catalog, config: IndexConfig) -> list[str]:
    """The filterable attributes the catalog has (part of the content hash)."""
    return [f for f in config.attribute_fields if f in catalog.products.columns]


def stored_fields(catalog: Catalog, config: IndexConfig) -> list[str]:
    """The product columns a collection stores beside the vector: the filterable
    attributes, then what a search result shows (title, photo URI). The display fields
    are not hashed: a snapshot in a new folder moves every photo URI, not the content."""
    wanted = [*attribute_fields(catalog, config), *DISPLAY_FIELDS]
    return [*(f for f in dict.fromkeys(wanted) if f in catalog.products.columns),
            PHOTO_WEIGHT]


def photo_weight_texts(weights: np.ndarray | None, count: int) -> list[str]:
    """The stored form of each product's photo weight ("" where there is none)."""
    if weights is None:
        return [""] * count
    return [f"{w:.3f}" if np.isfinite(w) else "" for w in weights.tolist()]


def display_values(catalog: Catalog, ids: set[str]) -> dict[str, dict[str, object]]:
    """product_id -> this snapshot's title and photo URI, for rows copied unchanged."""
    columns = [f for f in DISPLAY_FIELDS if f in catalog.products.columns]
    rows = catalog.products[catalog.products["product_id"].isin(ids)]
    return {pid: dict(zip(columns, values)) for pid, *values in
            zip(rows["product_id"], *(rows[c] for c in columns))}


def write_catalog(model: TwoTower, catalog: Catalog, index: VectorIndex, name: str,
                  config: IndexConfig,
                  cache_dir: str | None = None, progress: bool = True,
                  delete_missing: bool = False, hashes: list[str] | None = None
                  ) -> IndexResult:
    """Write every product whose content changed (all, for a new collection).

    Resumable: products already in the collection with the same content hash are skipped,
    so a job restarted after a crash continues where it stopped without duplicates.
    With ``delete_missing`` products no longer in the catalog are deleted. ``hashes``:
    the products' content hashes when the caller has them already.
    """
    fields = stored_fields(catalog, config)
    index.create_collection(name, model.embedding_dim, fields, config.index_type,
                            config.metric)
    hashes = hashes or product_hashes(catalog, attribute_fields(catalog, config))
    ids = catalog.products["product_id"].tolist()
    scope = None if delete_missing else ids  # a shard reads its own rows alone
    imports = ImportBuffer(index, name, config) if config.import_uri else None
    if imports:
        index.settle_imports(name)
    existing = index.existing_hashes(name, scope)
    rewrite = holds_duplicates(index, name, existing, scope)
    todo = [i for i, pid in enumerate(ids) if rewrite or existing.get(pid) != hashes[i]]
    stored = set(ids) if rewrite else set(existing)  # overwritten, not inserted
    removed = sorted(set(existing) - set(ids)) if delete_missing else []
    log.info("%s: %d products to embed, %d unchanged, %d to delete", name, len(todo),
             len(ids) - len(todo), len(removed))
    bar = progress_bar(total=len(todo), desc=f"index {name}", unit="product", show=progress)
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        subset = dataclasses.replace(catalog, products=catalog.products.iloc[chunk])
        vectors, weights = embed_catalog_with_photo_weights(model, subset, cache_dir,
                                                            progress=False)
        vectors = vectors.numpy()
        shares = photo_weight_texts(None if weights is None else weights.numpy(), len(chunk))
        for b in range(0, len(chunk), config.batch_size):
            rows = chunk[b:b + config.batch_size]
            write_products(index, name, catalog, rows, vectors[b:b + len(rows)], hashes,
                           fields, stored, imports,
                           computed={PHOTO_WEIGHT: shares[b:b + len(rows)]})
            bar.update(len(rows))
    if imports:
        imports.send()
    bar.close()
    index.delete_ids(name, removed)
    return IndexResult(name, len(todo), len(ids) - len(todo), len(removed), index.count(name))


def holds_duplicates(index: VectorIndex, name: str, existing: dict[str, str],
                     ids: list[str] | None = None) -> bool:
    """Whether ``name`` (its rows of ``ids``, when given) holds an id twice: two writers
    inserted the same product (a task thought dead still writing, say). Verification
    refuses such a collection; rewriting every product with overwrites keeps one row per
    id."""
    duplicated = index.count(name, ids) - len(existing)
    if duplicated > 0:
        log.warning("%s holds %d duplicated rows (two writers?); rewriting every product",
                    name, duplicated)
    return duplicated > 0


class ImportBuffer:
    """New rows held for one Milvus bulk import job (``index.import_rows`` of them), sent
    when full and at the end of the build."""

    def __init__(self, index: VectorIndex, name: str, config: IndexConfig):
        self.index, self.name, self.config = index, name, config
        self.parts: list[tuple[list[str], np.ndarray, list[str], dict[str, list]]] = []
        self.rows = 0

    def add(self, ids: list[str], vectors: np.ndarray, hashes: list[str],
            attributes: dict[str, list]) -> None:
        """Hold the rows; every ``import_rows`` of them go out as one job."""
        start = 0
        while start < len(ids):
            end = start + min(len(ids) - start, self.config.import_rows - self.rows)
            self.parts.append((ids[start:end], vectors[start:end], hashes[start:end],
                               {f: values[start:end] for f, values in attributes.items()}))
            self.rows += end - start
            start = end
            if self.rows >= self.config.import_rows:
                self.send()

    def send(self) -> None:
        if not self.parts:
            return
        fields = self.parts[0][3].keys()
        self.index.import_rows(
            self.name, [pid for part in self.parts for pid in part[0]],
            np.concatenate([part[1] for part in self.parts]),
            [h for part in self.parts for h in part[2]],
            {f: [v for part in self.parts for v in part[3][f]] for f in fields},
            self.config.import_uri)
        self.parts, self.rows = [], 0


def write_products(index: VectorIndex, name: str, catalog: Catalog, rows: list[int],
                   vectors: np.ndarray, hashes: list[str], fields: list[str],
                   stored: set[str], imports: ImportBuffer | None = None,
                   computed: dict[str, list] | None = None) -> None:
    """Write the catalog's ``rows`` (positions) with their ``vectors``: inserted (or held
    for a bulk import) when the product is not in ``stored``, overwritten when it is.
    ``computed``: values of fields the catalog does not hold, one per row ("" if absent)."""
    products = catalog.products
    computed = computed or {}
    product_ids = products["product_id"].iloc[rows].tolist()
    for overwrite in (False, True):
        picked = [j for j, pid in enumerate(product_ids) if (pid in stored) == overwrite]
        if not picked:
            continue
        chosen = [rows[j] for j in picked]
        batch = ([product_ids[j] for j in picked], vectors[picked],
                 [hashes[i] for i in chosen],
                 {f: [computed[f][j] for j in picked] if f in computed
                  else products[f].iloc[chosen].tolist() if f in products.columns
                  else [""] * len(picked) for f in fields})
        if imports is not None and not overwrite:
            imports.add(*batch)
        else:
            index.write_rows(name, *batch, overwrite=overwrite)


def verify(index: VectorIndex, name: str, expected_ids: list[str], samples: int,
           seed: int = 0) -> None:
    """Count equals the catalog and sampled products retrieve themselves at rank 1."""
    found = index.count(name)
    if found != len(expected_ids):
        raise VectorIndexError(f"{name}: holds {found} products, the catalog has "
                                      f"{len(expected_ids)}; not safe to serve")
    index.flush(name)               # once per build: seal the segments to index them
    index.wait_until_indexed(name)  # serve it indexed, not scanned
    rng = np.random.default_rng(seed)
    picked = [expected_ids[i] for i in rng.choice(len(expected_ids),
                                                  min(samples, len(expected_ids)),
                                                  replace=False)]
    found_ids, vectors = index.vectors_of(name, picked)
    hits = index.search(name, vectors, k=1)
    for product_id, vector, best in zip(found_ids, vectors, hits):
        own = float(vector @ vector)
        if best[0]["product_id"] != product_id and best[0]["score"] < own - 1e-3:
            raise VectorIndexError(
                f"{name}: product {product_id} does not retrieve itself at rank 1 "
                f"(got {best[0]['product_id']}); not safe to serve")
    log.info("verified %s: %d products, %d/%d samples retrieve themselves", name, found,
             len(found_ids), len(picked))


def build_collection(model: TwoTower, catalog: Catalog, config: IndexConfig, name: str,
                     cache_dir: str | None = None, progress: bool = True) -> IndexResult:
    """Write ``catalog`` into collection ``name`` (new or partly written) and verify it."""
    with open_index(config) as index:
        result = write_catalog(model, catalog, index, name, config, cache_dir, progress)
        verify(index, name, catalog.products["product_id"].tolist(), config.verify_samples)
    result.verified = True
    return result


class RefreshRefusedError(VectorIndexError, BadInputError):
    """A refresh would delete more of the serving products than allowed."""


def refresh_serving(model: TwoTower, catalog: Catalog, config: IndexConfig, version: str,
                    cache_dir: str | None = None, progress: bool = True,
                    allow_deletions: bool = False) -> IndexResult:
    """Refresh the serving products into a NEW collection for ``version``: unchanged rows are
    copied from the serving collection, new and changed products embedded, removed ones
    left out; verified before returning. The serving collection is never modified, and the
    caller moves the alias. Refuses to drop more than ``config.max_delete_share`` of the
    serving products unless ``allow_deletions``. One process: ``plan_refresh``, then
    ``refresh_rows`` over the whole catalog (the DAG maps it over shards)."""
    with open_index(config) as index:
        plan = plan_refresh(index, catalog, config, version, model.embedding_dim,
                            allow_deletions)
        if plan.target == plan.serving:
            return IndexResult(plan.serving, 0, len(catalog.products), 0, plan.kept,
                               verified=True)
        result = refresh_rows(model, catalog, index, plan, config, cache_dir, progress)
        verify(index, plan.target, catalog.products["product_id"].tolist(),
               config.verify_samples)
    return dataclasses.replace(result, deleted=plan.removed, verified=True)


@dataclasses.dataclass(frozen=True)
class RefreshPlan:
    """Where a refresh reads (``serving``) and writes (``target``), and what it drops."""

    serving: str
    target: str
    kept: int      # serving products still in the snapshot
    removed: int   # serving products the snapshot no longer has

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_refresh(index: VectorIndex, catalog: Catalog, config: IndexConfig, version: str,
                 dim: int, allow_deletions: bool = False) -> RefreshPlan:
    """Check the deletions against the cap and create the target collection (nothing to
    create when the serving collection already holds this snapshot: target == serving).
    Counts rows instead of reading the serving collection's hashes."""
    serving = index.resolve_alias(config.alias)
    if serving == config.alias:
        raise VectorIndexError(f"alias {config.alias!r} does not exist yet; "
                               "promote a model before refreshing")
    total = index.count(serving)
    kept = index.count(serving, catalog.products["product_id"].tolist())
    check_deletions(serving, total - kept, total, config.max_delete_share, allow_deletions)
    target = collection_name(config.collection_prefix, version, catalog.fingerprint)
    plan = RefreshPlan(serving, target, kept, total - kept)
    if target == serving:
        log.info("%s already holds this snapshot; nothing to refresh", serving)
        return plan
    checkpoint("refresh.create")
    index.create_collection(target, dim, stored_fields(catalog, config), config.index_type,
                            config.metric)
    return plan


def refresh_rows(model: TwoTower, catalog: Catalog, index: VectorIndex, plan: RefreshPlan,
                 config: IndexConfig, cache_dir: str | None = None, progress: bool = True
                 ) -> IndexResult:
    """Fill the target with ``catalog``'s products (the whole snapshot, or one shard's
    slice): unchanged rows copied from the serving collection, the others embedded.
    Reads only these products' rows of either collection; resumable."""
    ids = catalog.products["product_id"].tolist()
    fields = stored_fields(catalog, config)
    hashes = product_hashes(catalog, attribute_fields(catalog, config))
    existing = index.existing_hashes(plan.serving, ids)
    done = index.existing_hashes(plan.target, ids)  # a rerun continues a half-done target
    checkpoint("refresh.copy")
    unchanged = {pid for pid, h in zip(ids, hashes)
                 if existing.get(pid) == h and done.get(pid) != h}
    copied = index.copy_rows(plan.serving, plan.target, unchanged, fields,
                             display_values(catalog, unchanged), stored=set(done))
    log.info("refresh %s -> %s: %d unchanged rows copied", plan.serving, plan.target, copied)
    checkpoint("refresh.write")
    return write_catalog(model, catalog, index, plan.target, config, cache_dir, progress,
                         hashes=hashes)


def check_deletions(collection: str, removed: int, total: int, max_share: float,
                    allowed: bool) -> None:
    """Raise RefreshRefusedError when ``removed`` of ``total`` serving products exceeds the cap."""
    share = removed / total if total else 0.0
    if share > max_share and not allowed:
        raise RefreshRefusedError(
            f"the snapshot drops {removed:,} of the {total:,} products in {collection} "
            f"({share:.0%} > index.max_delete_share={max_share:.0%}); nothing was changed. "
            "Check the snapshot (a truncated or empty upload?), or pass --allow-deletions "
            "(DAG param allow_deletions) if the removals are intended")
