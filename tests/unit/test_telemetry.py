"""Processes that import fusion_model send no usage telemetry unless someone opts in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fusion_model.telemetry import OPENVINO_OPT_IN

# Variables under which the libraries turn telemetry off by themselves (pytest's own among
# them): removed, so that the child process is the run of a person, not of a test.
CI_MARKERS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "JENKINS_URL", "TF_BUILD",
              "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", OPENVINO_OPT_IN)

FAKE_OPENVINO_TELEMETRY = '''
import os, types

class Telemetry:
    """Stands in for openvino_telemetry: records what OpenVINO would have sent."""
    def __init__(self, app_name=None, **kwargs):
        self.backend = types.SimpleNamespace(app_name=app_name)

    def init(self, app_name=None, **kwargs):
        self.backend.app_name = app_name

    def __getattr__(self, name):
        def record(*args, **kwargs):
            with open(os.environ["SENT_LOG"], "a") as sent:
                sent.write(f"{name} {args}\\n")
        return record
'''


def run_as_a_person(code: str, **extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in CI_MARKERS} | extra
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("opted_in", [False, True])
def test_openvino_is_imported_without_its_usage_telemetry(tmp_path, opted_in):
    """`import openvino` reports usage to Google Analytics through openvino_telemetry.
    A stand-in package on the path records what would have been sent."""
    pytest.importorskip("openvino")
    package = tmp_path / "site" / "openvino_telemetry"
    (package / "backend").mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_OPENVINO_TELEMETRY)
    (package / "backend" / "__init__.py").write_text("")
    (package / "backend" / "backend_ga4.py").write_text("")
    sent = tmp_path / "sent.log"
    used = run_as_a_person("import fusion_model, openvino; "
                           "from openvino.tools.ovc import telemetry_utils; "
                           "print(telemetry_utils.tm.__name__)",
                           PYTHONPATH=str(tmp_path / "site"), SENT_LOG=str(sent),
                           **({OPENVINO_OPT_IN: "1"} if opted_in else {}))
    if opted_in:  # the stand-in is found and used: the guard is what keeps it out
        assert used == "openvino_telemetry"
        assert "send_event ('ov', 'import'" in sent.read_text()
    else:
        assert used == "openvino.tools.ovc.telemetry_stub"
        assert not sent.exists()


def test_mlflow_telemetry_is_off_unless_asked_for():
    code = ("import fusion_model, mlflow; "
            "from mlflow.telemetry.utils import is_telemetry_disabled; "
            "print(is_telemetry_disabled())")
    assert run_as_a_person("import mlflow; " + code.split("; ", 1)[1]) == "False"  # default
    assert run_as_a_person(code) == "True"
    assert run_as_a_person(code, MLFLOW_DISABLE_TELEMETRY="false") == "False"
