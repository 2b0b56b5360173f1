"""File the task logs of an ``airflow dags test`` run where the Airflow UI reads them.

``airflow dags test`` prints the logs of every task to its output and files none, so
the UI's log tab of such a run stays empty. This splits that output at the
``[DAG TEST] starting`` / ``end task`` markers and writes each task instance's part to
the file Airflow's task log handler reads for it (the configured
``log_filename_template``, rendered by Airflow itself, under ``base_log_folder``).

Usage (``AIRFLOW_HOME`` set as for the run): ``python scripts/dag_test_logs.py dag-run.log``
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("dag_test_logs")

STARTING = re.compile(r"\[DAG TEST\] starting task_id=(?P<task>\S+) map_index=(?P<map>-?\d+)")
ENDING = re.compile(r"\[DAG TEST\] end task task_id=(?P<task>\S+) map_index=(?P<map>-?\d+)")
RUNNING = re.compile(r"\[DAG TEST\] running task <TaskInstance: (?P<dag>[^.\s]+)\.\S+ "
                     r"(?P<run>\S+) ")
LINE = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT\S+Z) \[(?P<level>\w+)\s*\] (?P<event>.*)$")


@dataclass
class TaskPart:
    """One task instance's lines of the run's output."""

    task_id: str
    map_index: int
    lines: list[str] = field(default_factory=list)


@dataclass
class DagTestRun:
    dag_id: str | None = None
    run_id: str | None = None
    parts: list[TaskPart] = field(default_factory=list)


def split_run(lines: Iterable[str]) -> DagTestRun:
    """The run's DAG, run id and each task instance's lines, markers included."""
    run, current = DagTestRun(), None
    for line in lines:
        line = line.rstrip("\n")
        if started := STARTING.search(line):
            current = TaskPart(started["task"], int(started["map"]))
            run.parts.append(current)
        if (running := RUNNING.search(line)) and run.run_id is None:
            run.dag_id, run.run_id = running["dag"], running["run"]
        if current is not None:
            current.lines.append(line)
        if ENDING.search(line):
            current = None
    return run


def with_later_tries(parts: list[TaskPart]) -> list[tuple[TaskPart, int]]:
    """Each part with the number of later parts of the same task instance (its retries)."""
    seen: dict[tuple[str, int], int] = {}
    counted = []
    for part in reversed(parts):
        key = (part.task_id, part.map_index)
        counted.append((part, seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    return counted[::-1]


def structured(line: str) -> str:
    """A line as the JSON record Airflow's log reader shows with its time and level."""
    parsed = LINE.match(line)
    if not parsed:
        return json.dumps({"event": line})
    return json.dumps({"timestamp": parsed["ts"], "level": parsed["level"].lower(),
                       "event": parsed["event"].rstrip()})


def file_logs(run: DagTestRun) -> list[Path]:
    """Write each part to its task instance's log file; returns the files written."""
    from airflow.configuration import conf
    from airflow.models import TaskInstance
    from airflow.utils.log.file_task_handler import FileTaskHandler
    from airflow.utils.session import create_session

    folder = Path(conf.get("logging", "base_log_folder"))
    handler = FileTaskHandler(str(folder))
    written = []
    with create_session() as session:
        instances = {(ti.task_id, ti.map_index): ti for ti in session.query(TaskInstance)
                     .filter(TaskInstance.dag_id == run.dag_id,
                             TaskInstance.run_id == run.run_id)}
        for part, later_tries in with_later_tries(run.parts):
            ti = instances.get((part.task_id, part.map_index))
            if ti is None:
                log.warning("no task instance %s[%d] in run %s", part.task_id,
                            part.map_index, run.run_id)
                continue
            attempt = max(ti.try_number - later_tries, 1)  # a retried task: one per try
            path = folder / handler._render_filename(ti, attempt, session=session)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(structured(line) + "\n" for line in part.lines))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="what `airflow dags test` printed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = split_run(args.output.read_text(errors="replace").splitlines())
    if run.run_id is None or not run.parts:
        log.error("%s holds no `airflow dags test` task output", args.output)
        return 1
    written = file_logs(run)
    log.info("task logs of run %s filed for the Airflow UI: %d of %d task instances",
             run.run_id, len(written), len(run.parts))
    return 0 if len(written) == len(run.parts) else 1


if __name__ == "__main__":
    sys.exit(main())
