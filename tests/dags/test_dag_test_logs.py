"""``scripts/dag_test_logs.py`` files the output of ``airflow dags test`` as task logs:
read back through Airflow's own task log reader (what the UI's log tab calls), each task
instance shows its own lines, a mapped task one log per index, a retried task one per
try."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.dags.conftest import REPO

pytestmark = pytest.mark.integration

DAG = textwrap.dedent('''
    from datetime import timedelta
    from pathlib import Path

    import pendulum
    from airflow.sdk import dag, task

    FLAG = Path(__file__).with_name("failed-once")

    @dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False)
    def logs_probe():
        @task
        def parts():
            print("PARTS-LINE")
            return [1, 2]

        @task
        def part(n):
            print(f"PART-LINE-{n}")

        @task(retries=1, retry_delay=timedelta(seconds=0))
        def flaky():
            if not FLAG.exists():
                FLAG.touch()
                raise RuntimeError("FIRST-TRY-FAILS")
            print("SECOND-TRY-LINE")

        part.expand(n=parts()) >> flaky()

    logs_probe()
''')


def read_back(dag_id: str, task_id: str, map_index: int, attempt: int) -> str:
    """What the UI shows for a task instance's try (Airflow's ``TaskLogReader``)."""
    from airflow.models import TaskInstance
    from airflow.utils.log.log_reader import TaskLogReader
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dag_id, task_id=task_id,
                                                   map_index=map_index).one()
        reader = TaskLogReader()
        lines, _ = reader.read_log_chunks(ti, attempt, {"download_logs": True})
        return "\n".join(str(getattr(line, "event", line)) for line in lines)


def test_dags_test_output_is_filed_where_the_ui_reads_task_logs(airflow_home, tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "logs_probe.py").write_text(DAG)
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    bin_dir = Path(sys.executable).parent
    output = tmp_path / "dag-run.log"
    with output.open("w") as out:
        subprocess.run([str(bin_dir / "airflow"), "dags", "test", "logs_probe"], env=env,
                       stdout=out, stderr=subprocess.STDOUT, timeout=300, check=True)
    filed = subprocess.run([sys.executable, str(REPO / "scripts" / "dag_test_logs.py"),
                            str(output)], env=env, capture_output=True, text=True,
                           timeout=120)
    assert filed.returncode == 0, filed.stderr
    assert "5 of 5 task instances" in filed.stderr + filed.stdout

    assert "PARTS-LINE" in read_back("logs_probe", "parts", -1, 1)
    first, second = (read_back("logs_probe", "part", i, 1) for i in (0, 1))
    assert "PART-LINE-1" in first and "PART-LINE-2" not in first
    assert "PART-LINE-2" in second and "PART-LINE-1" not in second
    assert "FIRST-TRY-FAILS" in read_back("logs_probe", "flaky", -1, 1)
    retried = read_back("logs_probe", "flaky", -1, 2)
    assert "SECOND-TRY-LINE" in retried and "FIRST-TRY-FAILS" not in retried


def test_output_without_a_dag_test_run_is_named(airflow_home, tmp_path):
    output = tmp_path / "other.log"
    output.write_text("nothing from airflow here\n")
    filed = subprocess.run([sys.executable, str(REPO / "scripts" / "dag_test_logs.py"),
                            str(output)], capture_output=True, text=True, timeout=120)
    assert filed.returncode == 1
    assert f"{output} holds no `airflow dags test` task output" in filed.stderr
