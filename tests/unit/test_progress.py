"""Progress bars show on a terminal only; logs and CI output get none."""

from __future__ import annotations

import io

import pytest

from fusion_model import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream, show, shown", [
    (Terminal(), True, True), (Terminal(), False, False),
    (io.StringIO(), True, False), (io.StringIO(), False, False)])
def test_a_bar_is_drawn_only_on_a_terminal_when_asked(stream, show, shown):
    for _ in progress.progress_bar(range(50), show=show, file=stream, mininterval=0):
        pass
    assert ("50/50" in stream.getvalue()) is shown
