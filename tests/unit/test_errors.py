"""The CLI's one error boundary: library errors become one named line, -v adds the trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusion_model import cli
from fusion_model.errors import CatalogError, explain


def test_library_errors_are_explained_in_one_line():
    from botocore.exceptions import ClientError
    from mlflow.exceptions import MlflowException
    from pymilvus.exceptions import MilvusException

    assert explain(MilvusException(code=1100, message="field nosuch not exist")) == (
        "Milvus refused the request: field nosuch not exist (code 1100)")
    assert explain(MlflowException("Registered Model with name=x not found\nmore")) == (
        "MLflow: Registered Model with name=x not found")
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject")
    assert explain(denied).startswith("S3: An error occurred (AccessDenied)")
    assert explain(PermissionError(13, "Permission denied", "/data/x.csv")) == (
        "/data/x.csv: Permission denied")
    assert explain(CatalogError("p.csv", "bad", rows=[3])) == "p.csv, row 3: bad"
    assert explain(KeyError("boom")) == "unexpected KeyError: 'boom'"


def failing_step(exc: Exception):
    def run(args) -> int:
        raise exc
    return run


@pytest.mark.parametrize("exc", [FileNotFoundError(2, "No such file or directory", "/nope"),
                                 RuntimeError("library bug"), KeyboardInterrupt()])
def test_no_failure_ends_in_a_raw_traceback(exc, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_cmd_show", failing_step(exc))
    code = cli.main(["catalog", "show", "x"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if isinstance(exc, KeyboardInterrupt):
        assert code == 130 and "interrupted" in err
    else:
        assert code == 2 and err.startswith("error: ") and "-v" in err


def test_verbose_adds_the_traceback(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_cmd_show", failing_step(RuntimeError("library bug")))
    assert cli.main(["-v", "catalog", "show", "x"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: unexpected RuntimeError: library bug" in err


def test_documented_airflow_commands_bind_localhost():
    root = Path(__file__).parents[2]
    for doc in (root / "README.md", root / "docs" / "dags.md", root / "scripts" / "demo_uis.sh"):
        lines = [line for line in doc.read_text().splitlines()
                 if "airflow standalone" in line and not line.lstrip().startswith("#")
                 and "`airflow standalone`" not in line]
        assert lines and all("AIRFLOW__API__HOST=127.0.0.1" in line for line in lines), doc
