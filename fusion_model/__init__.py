"""Multimodal two-tower retrieval for e-commerce search.

Importing this package is cheap and side-effect free: heavy libraries (torch, mlflow,
pymilvus, great_expectations) are imported inside the functions that need them, and
airflow is never imported.
"""

__version__ = "0.1.0"
