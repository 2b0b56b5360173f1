"""The on-disk feature store: rows read back exactly, an index that is appended to, and a
shard whose writer died before indexing it found again (no recompute)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion_model.feature_store import (
    SHARD_ROWS,
    CorruptShardError,
    FeatureCache,
    ShardSet,
    write_table,
)


def values_of(keys: list[str]):
    def compute(indices: list[int]) -> dict[str, torch.Tensor]:
        base = torch.tensor([float(keys[i][1:]) for i in indices])
        return {"hidden": (base[:, None, None] + torch.arange(6.0).reshape(1, 2, 3)
                           ).to(torch.bfloat16),
                "mask": (base.long() % 2 == 0)[:, None].repeat(1, 2)}
    return compute


def test_rows_come_back_exactly_in_any_order_and_missing_keys_read_as_zeros(tmp_path):
    keys = [f"k{i}" for i in range(SHARD_ROWS + 300)]
    table = FeatureCache(tmp_path, "t", "v1").get(keys, values_of(keys), 64, "t", False)
    asked = [None, *keys[::-1]]
    again = FeatureCache(tmp_path, "t", "v1").get(asked, values_of(keys), 64, "t", False)
    rows = np.array([5, 0, 2100, 7, 8, 9, 2347, 1])
    expected = values_of(keys)([len(keys) - r for r in rows[rows > 0]])
    got = again["hidden"][rows]
    assert got.dtype == torch.bfloat16 and got.shape == (len(rows), 2, 3)
    assert torch.equal(got[rows > 0], expected["hidden"])
    assert torch.equal(again["mask"][rows][rows > 0], expected["mask"])
    assert not got[rows == 0].any()                      # the None key: zeros
    assert torch.equal(table["hidden"][2000:2100], values_of(keys)(range(2000, 2100))["hidden"])
    assert table["hidden"][[3], 1:].shape == (1, 1, 3)


def test_the_index_is_appended_to_not_rebuilt(tmp_path, monkeypatch):
    keys = [f"k{i}" for i in range(3 * SHARD_ROWS)]
    FeatureCache(tmp_path, "t", "v1").get(keys, values_of(keys), 256, "t", False)
    reads = []
    meta = ShardSet.meta
    monkeypatch.setattr(ShardSet, "meta", lambda self, shard: reads.append(shard) or
                        meta(self, shard))
    cache = FeatureCache(tmp_path, "t", "v1")
    more = [*keys, "k999999"]
    cache.get(more, values_of(more), 256, "t", False)
    assert cache.stats == {"hits": len(keys), "computed": 1}
    assert len(set(reads)) <= 2  # the new shard's dtypes; no shard's key list re-read
    assert len(ShardSet(cache.dir).shards()) == 4


def test_a_shard_written_but_not_indexed_is_found_on_the_next_open(tmp_path):
    keys = [f"k{i}" for i in range(10)]
    cache = FeatureCache(tmp_path, "t", "v1")
    cache.store.write(values_of(keys)(list(range(10))), keys)   # writer died here
    fresh = FeatureCache(tmp_path, "t", "v1")
    table = fresh.get(keys, lambda _: pytest.fail("recomputed"), 4, "t", False)
    assert fresh.stats == {"hits": 10, "computed": 0}
    assert torch.equal(table["mask"][:], values_of(keys)(list(range(10)))["mask"])


def test_a_truncated_shard_is_named(tmp_path):
    keys = [f"k{i}" for i in range(10)]
    table = FeatureCache(tmp_path, "t", "v1").get(keys, values_of(keys), 4, "t", False)
    shard = next((tmp_path / "t" / "v1").glob("shard-*.hidden.npy"))
    shard.write_bytes(shard.read_bytes()[:-40])
    with pytest.raises(CorruptShardError, match="truncated"):
        table["hidden"][[9]]


def test_write_table_stores_scratch_rows_in_order(tmp_path):
    table = write_table(tmp_path / "scratch", SHARD_ROWS + 5,
                        lambda rows: {"x": torch.from_numpy(rows).float()[:, None]})
    assert table["x"].shape == (SHARD_ROWS + 5, 1)
    assert table["x"][[SHARD_ROWS + 4, 0, SHARD_ROWS]].flatten().tolist() == [
        SHARD_ROWS + 4, 0, SHARD_ROWS]


def test_shards_of_the_earlier_format_are_passed_over_and_computed_again(tmp_path):
    """A cache written before the feature store (torch files and bare key lists) must not
    break a run: its keys are computed again, and the old shard is not read again."""
    import json

    old = tmp_path / "t" / "v1"
    old.mkdir(parents=True)
    torch.save({"hidden": torch.zeros(2, 2, 3)}, old / "shard-0123456789ab.pt")
    (old / "shard-0123456789ab.json").write_text(json.dumps(["k0", "k1"]))
    keys = ["k0", "k1"]
    cache = FeatureCache(tmp_path, "t", "v1")
    table = cache.get(keys, values_of(keys), 4, "t", False)
    assert cache.stats == {"hits": 0, "computed": 2}
    assert torch.equal(table["hidden"][:], values_of(keys)([0, 1])["hidden"])
    again = FeatureCache(tmp_path, "t", "v1")
    again.get(keys, lambda _: pytest.fail("recomputed"), 4, "t", False)
