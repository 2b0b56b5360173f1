"""The product encoder, logged as MLflow models-from-code."""

from mlflow.models import set_model

from fusion_model.registry.pyfunc import ProductEncoder

set_model(ProductEncoder())
