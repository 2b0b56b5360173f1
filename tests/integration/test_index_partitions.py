"""Index shards divide the work: the plan writes a partition manifest once per snapshot,
and each shard task reads only its own rows and its own existing vectors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fusion_model import storage
from fusion_model.data import catalog as catalog_module
from fusion_model.index.milvus import MilvusIndex
from fusion_model.pipelines import steps
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration


def test_each_shard_reads_its_partition_alone_and_together_they_cover_the_catalog(
        tmp_path, monkeypatch):
    from fusion_model.data.synthetic import generate_synthetic_catalog

    catalog = generate_synthetic_catalog(str(tmp_path / "catalog"), n_products=150,
                                         n_queries=60, seed=4, progress=False)
    overrides = tiny_overrides(tmp_path)
    steps.train(catalog, str(tmp_path / "run"), "tiny", overrides)
    version = steps.register(str(tmp_path / "run"), catalog, "tiny", overrides)["version"]
    jobs = steps.plan_index(version, catalog, 3, "tiny", overrides)
    slices = [set(pd.read_parquet(job["partition"])["product_id"]) for job in jobs]
    everyone = set(catalog_module.load_catalog(catalog).products["product_id"])
    assert set().union(*slices) == everyone and sum(map(len, slices)) == len(everyone)
    written = {job["partition"]: (tmp_path / job["partition"]).stat().st_mtime_ns
               for job in jobs}

    manifest = pd.concat([pd.read_parquet(job["partition"]) for job in jobs])
    photos = manifest.dropna(subset=["image_uri"])
    assert len(photos) > 100 and all(  # each photo's content tag, found once by the plan
        tag == storage.core.md5_hex(Path(uri).read_bytes())
        for uri, tag in zip(photos["image_uri"], photos["image_tag"]))

    asked: list[list[str]] = []
    tagged: list[str] = []
    hashes, tags = MilvusIndex.existing_hashes, storage.core.content_tags
    monkeypatch.setattr(MilvusIndex, "existing_hashes", lambda self, name, ids=None:
                        asked.append(ids) or hashes(self, name, ids))

    def recording_tags(uris):
        uris = list(uris)
        tagged.extend(uris)
        return tags(uris)

    monkeypatch.setattr(storage.core, "content_tags", recording_tags)
    monkeypatch.setattr(catalog_module, "load_catalog",
                        lambda *a: pytest.fail("a shard loaded the whole catalog"))
    results = [steps.index_shard(**job, config_name="tiny", overrides=overrides)
               for job in jobs]
    assert [r["written"] for r in results] == [len(s) for s in slices]
    assert [set(ids) for ids in asked] == slices      # its own vectors, never all
    assert tagged == []  # no photo hashed or listed: the manifest's tags
    monkeypatch.undo()

    verified = steps.verify_index(version, catalog, jobs[0]["collection"], "tiny", overrides)
    assert verified["count"] == 150 and verified["verified"]
    again = steps.plan_index(version, catalog, 3, "tiny", overrides)
    assert [j["partition"] for j in again] == list(written)
    assert all((tmp_path / uri).stat().st_mtime_ns == mtime for uri, mtime in written.items())


def test_a_refresh_mapped_over_shards_reads_slices_and_serves_the_snapshot(tmp_path,
                                                                            monkeypatch):
    """plan_refresh -> refresh_shard x 3 -> finish_refresh: each shard reads its own
    partition, its own rows of the serving and target collections and copies only its
    unchanged products; the snapshot is then served (one change embedded, one product
    dropped, the rest copied)."""
    import shutil

    from fusion_model.data.catalog import load_catalog, write_catalog
    from tests.conftest import promote_tiny

    catalog_uri, overrides = promote_tiny(tmp_path / "platform", products=90, queries=30,
                                          seed=6)
    catalog = load_catalog(catalog_uri)
    products = catalog.products.copy()
    products.loc[0, "title"] = "Renamed Shirt"
    dropped = products.loc[1, "product_id"]
    products = products.drop(index=1)
    snapshot = tmp_path / "snapshot"
    shutil.copytree(tmp_path / "platform" / "catalog" / "images", snapshot / "images")
    write_catalog(str(snapshot), products, catalog.queries,
                  catalog.judgments[catalog.judgments["product_id"] != dropped])
    serving_before = steps.status("tiny", overrides)["serving"]

    jobs = steps.plan_refresh(str(snapshot), 3, "tiny", overrides)
    slices = [set(pd.read_parquet(job["partition"])["product_id"]) for job in jobs]
    asked: list[set[str]] = []
    copied: list[set[str]] = []
    hashes, copy = MilvusIndex.existing_hashes, MilvusIndex.copy_rows
    monkeypatch.setattr(MilvusIndex, "existing_hashes", lambda self, name, ids=None:
                        asked.append(set(ids)) or hashes(self, name, ids))
    monkeypatch.setattr(MilvusIndex, "copy_rows", lambda self, source, target, keep, *a,
                        **k: copied.append(set(keep)) or copy(self, source, target, keep,
                                                               *a, **k))
    monkeypatch.setattr(catalog_module, "load_catalog",
                        lambda *a: pytest.fail("a shard loaded the whole catalog"))
    shards = [steps.refresh_shard(job, "tiny", overrides) for job in jobs]
    monkeypatch.undo()
    assert all(any(ids <= part for part in slices) for ids in asked)  # never all rows
    assert all(any(keep <= part for part in slices) for keep in copied)
    assert sum(s["written"] for s in shards) == 1                   # the renamed product
    assert sum(len(keep) for keep in copied) == len(products) - 1   # the rest copied

    stale = [{**job, "version": "99"} for job in jobs]  # planned for another champion
    with pytest.raises(steps.SnapshotChangedError, match="champion is v1 now, not v99"):
        steps.finish_refresh(stale, shards, "tiny", overrides)
    assert steps.status("tiny", overrides)["serving"] == serving_before  # nothing switched

    refreshed = steps.finish_refresh(jobs, shards, "tiny", overrides)
    status = steps.status("tiny", overrides)
    assert refreshed["collection"] == status["serving"] != serving_before
    assert (refreshed["count"], refreshed["deleted"], refreshed["written"]) == (89, 1, 1)
    assert not status["problems"], status["problems"]
    assert refreshed["catalog_fingerprint"] == load_catalog(str(snapshot)).fingerprint
