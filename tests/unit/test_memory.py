"""release_free_memory hands freed heap pages back to the OS."""

from __future__ import annotations

import sys

import pytest

from fusion_model.memory import _malloc_trim, release_free_memory


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux") or _malloc_trim() is None,
                    reason="glibc's malloc_trim only")
def test_freed_pages_below_a_live_block_go_back_to_the_os():
    blocks = [bytes(4096) for _ in range(40_000)]  # 160 MB on glibc's heap
    keeper = bytes(4096)  # a live block above them: free() alone cannot shrink the heap
    del blocks
    before = resident_mb()
    release_free_memory()
    assert before - resident_mb() > 80
    assert len(keeper) == 4096
