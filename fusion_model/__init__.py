"""Multimodal two-tower retrieval for e-commerce search.

Importing this package is cheap: heavy libraries (torch, mlflow, pymilvus,
great_expectations) are imported inside the functions that need them, and airflow is
never imported. Its one side effect turns off MLflow's and OpenVINO's usage telemetry
(``fusion_model.telemetry``).
"""

from fusion_model.telemetry import disable_usage_telemetry

disable_usage_telemetry()

__version__ = "0.1.0"
