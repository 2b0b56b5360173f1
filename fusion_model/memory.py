"""Hand memory that a finished step freed back to the operating system.

Loading a catalog table decodes it through Arrow (whose pool keeps freed blocks) and builds
short-lived Python objects (whose freed pages glibc keeps); a long task would carry both
for its whole life. Releasing them after such a step keeps a task's resident memory near
what it still uses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


def release_free_memory() -> None:
    """Return freed Arrow pool blocks and glibc heap pages to the OS (no-op elsewhere)."""
    try:
        import pyarrow

        pyarrow.default_memory_pool().release_unused()
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pass
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None on a C library without it (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        log.debug("no malloc_trim in %s: freed heap pages stay with the process", name)
        return None
