"""Named crash points, for fault-injection tests of the platform's multi-step writes.

``checkpoint("switch.alias")`` marks the moment before a write. It does nothing unless a
test armed that point: in-process with ``crash_at`` (raises ``Crash``, a BaseException
that no ``except Exception`` catches, as a kill would not run them), or in a child process
with ``FUSION_CRASH_AT=<point>`` in the environment (the process exits at once, code 137,
without cleanup, as after ``kill -9``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

CRASH_ENV = "FUSION_CRASH_AT"
_armed: set[str] = set()
_seen: list[str] = []
_recorders = [0]  # open ``recording`` blocks; nothing is kept outside them


class Crash(BaseException):  # noqa: N818 - it stands for a kill, not an error
    """The process 'died' at a checkpoint (tests only)."""


def checkpoint(name: str) -> None:
    """A point where a test may crash the process, just before the write it names."""
    if _recorders[0]:
        _seen.append(name)
    if name in _armed:
        raise Crash(name)
    if os.environ.get(CRASH_ENV) == name:
        os._exit(137)


@contextlib.contextmanager
def crash_at(name: str) -> Iterator[None]:
    """Arm ``name`` in this process for the duration of the block."""
    _armed.add(name)
    try:
        yield
    finally:
        _armed.discard(name)


@contextlib.contextmanager
def recording() -> Iterator[list[str]]:
    """The checkpoints passed during the block, in order (to enumerate the kill points)."""
    start = len(_seen)
    found: list[str] = []
    _recorders[0] += 1
    try:
        yield found
    finally:
        _recorders[0] -= 1
        found.extend(_seen[start:])
        del _seen[start:]
