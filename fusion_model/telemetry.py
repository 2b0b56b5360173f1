"""No usage telemetry from the platform's processes unless someone opts in.

MLflow 3 posts usage events to its ingestion endpoint from a background thread, and
OpenVINO forks a process that reports to Google Analytics at every ``import openvino``;
both do so by default. A shop's training workers, registry and search service should send
nothing. Applied at ``import fusion_model``, before either library is imported:

- MLflow: ``MLFLOW_DISABLE_TELEMETRY`` defaults to ``true`` here (``false`` opts in) in
  every process that imports fusion_model (CLI, Airflow tasks, the search service) and in
  the processes those start (the tests' ``mlflow server``); the images set it as well.
- OpenVINO: its telemetry package is kept from importing, so OpenVINO's converter uses its
  own no-op stub; ``FUSION_OPENVINO_TELEMETRY=1`` leaves OpenVINO's consent setting in
  charge. The locks leave that package out as well (``make lock``).
"""

from __future__ import annotations

import os
import sys

OPENVINO_OPT_IN = "FUSION_OPENVINO_TELEMETRY"


def disable_usage_telemetry() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if os.environ.get(OPENVINO_OPT_IN) != "1" and "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import fails
