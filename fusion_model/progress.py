"""Progress bars for people at a terminal only.

A log file, CI output or an Airflow task log gets no bar (tqdm's ``disable=None`` turns a
bar off when its stream is not a TTY): a non-terminal log of an 11,800-product benchmark
held thousands of bar lines.
"""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, show: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` shown only when ``show`` and stderr is a terminal."""
    return tqdm(iterable, disable=None if show else True, **kwargs)
