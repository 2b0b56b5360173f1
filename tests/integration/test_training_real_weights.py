"""Two-stage training with the real packaged weights (MiniLM + EfficientNet-Lite0)."""

from __future__ import annotations

import pytest

from fusion_model.config import load_config
from fusion_model.data.catalog import load_catalog
from fusion_model.data.synthetic import generate_synthetic_catalog
from fusion_model.training.trainer import train

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    generate_synthetic_catalog(str(root / "catalog"), n_products=800, n_queries=400, seed=11,
                               progress=False)
    catalog = load_catalog(str(root / "catalog"))
    overrides = [f"train.cache_dir={root / 'cache'}", "train.stage1.epochs=3",
                 "train.stage2.epochs=3", "train.stage1.positives_per_query=4",
                 "train.stage2.positives_per_query=4", "train.stage1.patience=3",
                 "train.stage2.patience=3"]
    return {kind: train(catalog, load_config("fast", [*overrides, f"model.fusion={kind}"]),
                        root / kind, progress=False)
            for kind in ("text_only", "fusion")}


def test_loss_goes_down_in_both_stages(results):
    history = results["fusion"].history
    for stage in ("stage1", "stage2"):
        losses = [h["loss"] for h in history if h["stage"] == stage]
        assert losses[-1] < losses[0] * 0.8, (stage, losses)


def test_fusion_beats_text_only_on_visual_queries(results):
    text, fusion = results["text_only"].test, results["fusion"].test
    visual = "visual_query"
    assert fusion.segments[visual]["queries"] >= 30
    assert fusion.segments[visual]["ndcg@10"] > text.segments[visual]["ndcg@10"]
    assert fusion.metrics["ndcg@10"] > text.metrics["ndcg@10"]
