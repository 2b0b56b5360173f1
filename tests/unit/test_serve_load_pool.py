"""benchmarks/serve_load.py --pool: paired blocks read back from the logs of several runs."""

from __future__ import annotations

import numpy as np
import pytest


def test_blocks_of_old_and_new_logs_pool_per_rate_and_pair_of_services(tmp_path):
    from benchmarks.serve_load import pooled_block_ratios

    old = tmp_path / "old.log"
    old.write_text("2026-12-07 06:16:25,949 serve_load: standalone 200/s block 1: p50 off "
                   "20.0 ms, on 22.0 ms\n| a table line | 200/s |\n")
    new = tmp_path / "new.log"
    new.write_text("x serve_load: standalone 200/s block 0: p50 events off 10.0 ms, events on "
                   "9.0 ms\nx serve_load: standalone 100/s block 0: p50 events off 8.0 ms, "
                   "events on 8.0 ms\nx serve_load: standalone 200/s block 0: p50 1 stream "
                   "30.0 ms, 2 streams 15.0 ms\n")
    pooled = pooled_block_ratios([old, new])
    assert set(pooled) == {("standalone", 200, "events off", "events on"),
                           ("standalone", 100, "events off", "events on"),
                           ("standalone", 200, "1 stream", "2 streams")}
    assert np.allclose(sorted(pooled["standalone", 200, "events off", "events on"]),
                       [-0.1, 0.1])
    assert np.allclose(pooled["standalone", 200, "1 stream", "2 streams"], [-0.5])


def test_pooling_logs_without_blocks_is_a_named_error(tmp_path):
    from benchmarks.serve_load import print_pooled

    empty = tmp_path / "closed-loop.log"
    empty.write_text("| standalone b32 | 100/s |\n")
    with pytest.raises(SystemExit, match="closed-loop.log"):
        print_pooled([empty])
