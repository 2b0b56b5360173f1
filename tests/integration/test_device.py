"""One code path for every device: training (both stages, the feature cache fill and the
per-epoch evaluation), catalog embedding and query search run on ``runtime.device``, and
every module call sees its parameters and its input batches there (no tensor made on a
hard-coded device). On the CPU this runs the device-generic paths; the CUDA case runs
where a GPU is present and skips cleanly elsewhere."""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
import torch
from torch.utils import _pytree as pytree

from fusion_model.config import load_config
from fusion_model.data.catalog import load_catalog
from fusion_model.engines import towers_for
from fusion_model.evaluation.search import exact_top_k
from fusion_model.inference import embed_catalog
from fusion_model.models.towers import load_model
from fusion_model.training.trainer import train

pytestmark = pytest.mark.integration
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@contextlib.contextmanager
def device_audit():
    """Count the device of every parameter, buffer and tensor input of every module call."""
    seen: Counter = Counter()

    def record(module, args, kwargs):
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        tensors += [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        seen.update(str(t.device) for t in tensors)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: record(module, args, {}))
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_train_embed_and_search_run_on_the_runtime_device(device, tmp_path,
                                                          synthetic_catalog):
    catalog = load_catalog(str(synthetic_catalog))
    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}",
                                  "train.stage1.epochs=1", "train.stage2.epochs=1",
                                  f"runtime.device={device}", "runtime.engine=torch"])
    expected = str(torch.device(device, 0) if device == "cuda" else torch.device(device))
    with device_audit() as trained_on:
        result = train(catalog, config, tmp_path / "run", progress=False)
    assert trained_on and set(trained_on) == {expected}, trained_on

    model = load_model(result.model_dir)
    assert {p.device.type for p in model.parameters()} == {"cpu"}  # loads anywhere
    with device_audit() as embedded_on:
        products = embed_catalog(model, catalog, str(tmp_path / "cache"), progress=False)
        queries = towers_for(model).embed_queries(catalog.queries["text"].head(5).tolist())
    assert set(embedded_on) == {expected}, embedded_on
    assert products.device.type == queries.device.type == "cpu"  # results come back
    scores, top = exact_top_k(queries, products, 3)
    assert top.shape == (5, 3) and bool((scores[:, 0] >= scores[:, 1]).all())
