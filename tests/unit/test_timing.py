"""Benchmark timing: interleaved rounds, and CPU used by other processes is detected."""

import functools
import itertools
import os
import subprocess
import sys
import time

import pytest

from fusion_model.timing import (
    CpuShare,
    IsolatedRun,
    interleaved,
    latencies,
    summary,
    wait_until_quiet,
)

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs /proc/stat")


def test_rounds_interleave_the_runs():
    calls = []
    results = interleaved({"a": lambda: calls.append("a") or 1.0,
                           "b": lambda: calls.append("b") or 2.0}, repeats=3)
    assert calls == ["a", "b"] * 3 and results == {"a": [1.0] * 3, "b": [2.0] * 3}
    assert summary([3.0, 1.0, 2.0]) == (1.0, 2.0)
    assert len(latencies(lambda: None, 7, warmup=2)) == 7


def test_another_process_spinning_marks_the_timings_invalid():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        with CpuShare() as share:
            time.sleep(1.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert share.others >= 0.6 / os.cpu_count()
    assert share.verdict(limit=0.5 / os.cpu_count()).startswith("INVALID")


def test_waiting_for_quiet_gives_up_while_another_process_spins():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = wait_until_quiet(limit=0.5 / os.cpu_count(), window=0.5, timeout=1.2)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is None
    assert wait_until_quiet(limit=1.0, window=0.2, timeout=5) < 1.0


def test_an_isolated_run_keeps_its_state_in_its_own_process():
    """Each round runs in the worker that setup built once."""
    with IsolatedRun(functools.partial, next, itertools.count(1)) as rounds:
        assert [rounds(), rounds(), rounds()] == [1, 2, 3]
    with IsolatedRun(functools.partial, os.getpid) as worker:
        assert worker() != os.getpid()


def busy_share(counted: bool) -> float | None:
    """Other processes' share of the CPU over two CPU-bound rounds of a worker."""
    with IsolatedRun(functools.partial, sum, range(20_000_000)) as busy, CpuShare() as share:
        if counted:
            busy.share = share
        busy(), busy()
    return share.others


def test_an_isolated_runs_cpu_counts_as_the_runs_own_once_shared():
    """Without it a benchmark's own worker would make its run look busy (INVALID)."""
    counted, not_counted = busy_share(True), busy_share(False)
    if counted is None:
        pytest.skip("no /proc/stat")
    assert counted + 0.2 < not_counted


def test_an_isolated_run_reports_the_worker_error():
    with IsolatedRun(functools.partial, int, "not a rate") as broken, \
            pytest.raises(RuntimeError, match="invalid literal"):
        broken()
    with pytest.raises(RuntimeError, match="(?s)benchmark worker failed.*at least one argument"):
        IsolatedRun(functools.partial)  # setup itself fails


def test_closing_after_a_worker_error_survives_the_exiting_worker():
    """The worker exits right after reporting an error; if it still looked alive at
    close(), the "stop" would meet a closed pipe."""
    broken = IsolatedRun(functools.partial, int, "not a rate")
    with pytest.raises(RuntimeError, match="invalid literal"):
        broken()
    broken._process.join(timeout=60)
    assert broken._process.exitcode is not None
    broken._process.is_alive = lambda: True  # the moment before it is reaped
    broken.close()
    assert broken._connection.closed
