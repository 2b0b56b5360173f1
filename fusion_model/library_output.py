"""What libraries print during a pipeline step, kept at its real level.

Airflow logs a task's stderr as ERROR. MLflow writes its normal progress there ("Created
version '2' of model ..."), and faiss (inside Milvus Lite) logs a line for every CPU
flavour it looks for: a successful task would show red lines a person has to read to
know they mean nothing. ``quiet_step_output`` re-logs known progress lines at INFO,
other stderr lines at WARNING, and drops libraries' INFO chatter from the log handlers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator

log = logging.getLogger("fusion_model.library_output")

# stderr lines that report normal progress (MLflow's registry and artifact messages)
PROGRESS_LINES = re.compile(
    r"^(Successfully registered model|Created version|Registered model .* already exists"
    r"|Creating a new version|\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO )")
# loggers whose INFO and DEBUG records are start-up chatter in a task log
CHATTY_LOGGERS = ("faiss", "milvus_lite", "great_expectations", "mlflow", "alembic",
                  "pymilvus", "urllib3", "botocore", "openvino")


class DropLibraryChatter(logging.Filter):
    """Drops INFO and DEBUG records of ``CHATTY_LOGGERS``; passes everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or \
            not record.name.startswith(CHATTY_LOGGERS)


DROP_LIBRARY_CHATTER = DropLibraryChatter()


class _StderrToLog(io.TextIOBase):
    """A text stream that logs each complete line: progress at INFO, the rest at WARNING."""

    def __init__(self) -> None:
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._log(line)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._log(self._pending)
            self._pending = ""

    @staticmethod
    def _log(line: str) -> None:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip()
        if line:
            log.log(logging.INFO if PROGRESS_LINES.match(line) else logging.WARNING,
                    "%s", line)


@contextlib.contextmanager
def quiet_step_output() -> Iterator[None]:
    """For the length of a step: stderr becomes log records at their real level, and the
    log handlers drop libraries' INFO chatter."""
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(DROP_LIBRARY_CHATTER)
    stream = _StderrToLog()
    try:
        with contextlib.redirect_stderr(stream):
            yield
    finally:
        stream.flush()
        for handler in handlers:
            handler.removeFilter(DROP_LIBRARY_CHATTER)

