"""Honest timing for benchmarks: interleaved repeats, min and median, and a check that
nothing else used the CPU while they ran.

A throughput ratio taken while another job shares the cores is not a speed-up of the code
(the naive loop and the batched path suffer differently), so ``CpuShare`` measures the
share of the machine's CPU time that OTHER processes used during the run, from
``/proc/stat`` minus this process's own CPU time, and benchmarks mark their table invalid
above a limit.

``IsolatedRun`` keeps a benchmark path in a process of its own: run in one process, each
path's rounds would follow another path's work (a PyTorch batch before every OpenVINO
round cost the OpenVINO path 20-28%, its first round after other work faulting in its
memory again), which no single job that embeds a catalog sees.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

BUSY_LIMIT = 0.10   # other processes' share of all cores above which results are invalid


def machine_cpu_seconds() -> tuple[float, float] | None:
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
    _workers: float = field(default=0.0, repr=False)

    def count_own(self, seconds: float) -> None:
        """Count ``seconds`` of CPU used inside by a worker of this run as its own (a live
        child process's time is not in ``os.times`` until it is reaped)."""
        self._workers += seconds

    def __enter__(self) -> CpuShare:
        self.load_before = os.getloadavg()[0]
        self._start = (machine_cpu_seconds(), _own_cpu())
        return self

    def __exit__(self, *exc) -> None:
        self.load_after = os.getloadavg()[0]
        machine, own = machine_cpu_seconds(), _own_cpu()
        if machine is None or self._start[0] is None:
            return
        busy = machine[0] - self._start[0][0]
        total = machine[1] - self._start[0][1]
        mine = own - self._start[1] + self._workers
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


class IsolatedRun:
    """One benchmark path in its own (spawned) process. ``setup(*args)`` runs there once
    (build the model, convert, warm up) and returns a callable that runs one round and
    gives its rate; each call of this object runs one round there and returns the rate.
    Set ``share`` to the ``CpuShare`` of the timed rounds (started after the workers, so
    that their start-up is outside it) to count the worker's CPU as the run's own. A
    context manager."""

    share: CpuShare | None = None

    def __init__(self, setup: Callable[..., Callable[[], float]], *args):
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve_rounds, args=(child, setup, args),
                                        daemon=True)
        self._process.start()
        child.close()
        self._receive()  # ready, or setup's error

    def __call__(self) -> float:
        self._connection.send("run")
        rate, cpu = self._receive()
        if self.share is not None:
            self.share.count_own(cpu)
        return rate

    def _receive(self):
        try:
            status, value = self._connection.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(f"benchmark worker exited ({self._process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"benchmark worker failed:\n{value}")
        return value

    def close(self) -> None:
        if self._process.is_alive():
            # a worker that just reported an error may be exiting, its end already closed
            with contextlib.suppress(BrokenPipeError):
                self._connection.send("stop")
            self._process.join(timeout=60)
        self._connection.close()

    def __enter__(self) -> IsolatedRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve_rounds(connection, setup: Callable, args: tuple) -> None:
    """Worker side of ``IsolatedRun``: (status, value) for setup and each round."""
    try:
        run = setup(*args)
        connection.send(("ready", None))
        while connection.recv() == "run":
            start = time.process_time()
            rate = run()
            connection.send(("rate", (rate, time.process_time() - start)))
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        connection.send(("error", traceback.format_exc()))


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

