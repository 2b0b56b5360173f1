"""Index shards divide the work: the plan writes a partition manifest once per snapshot,
and each shard task reads only its own rows and its own existing vectors."""

from __future__ import annotations

import pandas as pd
import pytest

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

    asked: list[list[str]] = []
    hashes = MilvusIndex.existing_hashes
    monkeypatch.setattr(MilvusIndex, "existing_hashes", lambda self, name, ids=None:
                        asked.append(ids) or hashes(self, name, ids))
    monkeypatch.setattr(catalog_module, "load_catalog",
                        lambda *a: pytest.fail("a shard loaded the whole catalog"))
    results = [steps.index_shard(**job, config_name="tiny", overrides=overrides)
               for job in jobs]
    assert [r["written"] for r in results] == [len(s) for s in slices]
    assert [set(ids) for ids in asked] == slices      # its own vectors, never all
    monkeypatch.undo()

    verified = steps.verify_index(version, catalog, jobs[0]["collection"], "tiny", overrides)
    assert verified["count"] == 150 and verified["verified"]
    again = steps.plan_index(version, catalog, 3, "tiny", overrides)
    assert [j["partition"] for j in again] == list(written)
    assert all((tmp_path / uri).stat().st_mtime_ns == mtime for uri, mtime in written.items())
