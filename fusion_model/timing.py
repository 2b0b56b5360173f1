"""Honest timing for benchmarks: interleaved repeats, min and median, and a check that
nothing else used the CPU while they ran.

A throughput ratio taken while another job shares the cores is not a speed-up of the code
(the naive loop and the batched path suffer differently), so ``CpuShare`` measures the
share of the machine's CPU time that OTHER processes used during the run, from
``/proc/stat`` minus this process's own CPU time, and benchmarks mark their table invalid
above a limit.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

BUSY_LIMIT = 0.10   # other processes' share of all cores above which results are invalid


def _proc_stat() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, None off Linux."""
    try:
        with open("/proc/stat") as handle:
            fields = [float(v) for v in handle.readline().split()[1:]]
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)   # idle + iowait
    total = sum(fields[:8])                                       # without guest time
    return (total - idle) / tick, total / tick


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class CpuShare:
    """Context manager: ``others`` = share of all cores used by other processes inside."""

    others: float | None = None
    load_before: float = 0.0
    load_after: float = 0.0
    _start: tuple | None = field(default=None, repr=False)

    def __enter__(self) -> CpuShare:
        self.load_before = os.getloadavg()[0]
        self._start = (_proc_stat(), _own_cpu())
        return self

    def __exit__(self, *exc) -> None:
        self.load_after = os.getloadavg()[0]
        machine, own = _proc_stat(), _own_cpu()
        if machine is None or self._start[0] is None:
            return
        busy = machine[0] - self._start[0][0]
        total = machine[1] - self._start[0][1]
        mine = own - self._start[1]
        self.others = max(0.0, busy - mine) / total if total > 0 else 0.0

    def verdict(self, limit: float = BUSY_LIMIT) -> str:
        """'valid', or why the timings inside do not describe the code."""
        if self.others is None:
            return "unchecked (no /proc/stat)"
        if self.others > limit:
            return (f"INVALID: other processes used {self.others:.0%} of the CPU during the "
                    f"run (limit {limit:.0%}); rerun on an idle machine")
        return f"valid (other processes used {self.others:.1%} of the CPU)"


def wait_until_quiet(limit: float = BUSY_LIMIT, window: float = 5.0,
                     timeout: float = 600.0) -> float | None:
    """Wait until other processes use at most ``limit`` of the CPU over ``window`` seconds
    (a database server compacting after a bulk write, say); the seconds waited, or None
    when it is still busy after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with CpuShare() as share:
            time.sleep(window)
        if share.others is None or share.others <= limit:
            return time.monotonic() - started
    return None


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call every run once per round, ``repeats`` rounds, so drift hits all alike."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].append(run())
    return results


def summary(values: list[float]) -> tuple[float, float]:
    """(min, median)."""
    return min(values), statistics.median(values)


def latencies(call: Callable[[], object], count: int, warmup: int = 5) -> list[float]:
    """Seconds per call, after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples

