"""The query encoder, logged as MLflow models-from-code."""

from mlflow.models import set_model

from fusion_model.registry.pyfunc import QueryEncoder

set_model(QueryEncoder())
