"""``model.late_mix``: the fusion network served as a score mix with a late-fusion branch
of the same stage 1, the branch's weight chosen on val at training time."""

from __future__ import annotations

import json

import pytest
import torch

from fusion_model.config import ConfigError, load_config
from fusion_model.data.catalog import load_catalog
from fusion_model.inference import evaluate_model
from fusion_model.models.towers import (
    MANIFEST_FILE,
    LateBranch,
    TwoTower,
    embedding_dim_of,
    load_model,
)
from fusion_model.training.trainer import Trainer, train


@pytest.fixture(scope="module")
def catalog(synthetic_catalog):
    return load_catalog(str(synthetic_catalog))


def tiny(cache, *overrides: str):
    return load_config("tiny", [f"train.cache_dir={cache}", "train.stage1.epochs=1",
                                "train.stage2.epochs=1", *overrides])


def product_inputs(model: TwoTower, batch: int = 6):
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randn(batch, 5, model.text.dim, generator=generator)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[1, 2:] = False
    pixels = torch.rand(batch, 3, model.image.image_size, model.image.image_size,
                        generator=generator)
    with torch.no_grad():
        features = model.image.bottom(pixels)
    present = torch.tensor([True, True, False, True, True, True])
    return tokens, mask, features, present


def test_a_late_branch_serves_the_score_mix_and_loads_back(tmp_path):
    torch.manual_seed(0)
    network = TwoTower(tiny(tmp_path)).eval()
    late = TwoTower(tiny(tmp_path, "model.fusion=late_fusion")).eval()
    inputs = product_inputs(network)
    pooled = torch.randn(4, network.text.dim)
    with torch.no_grad():
        alone = (network.queries_from_pooled(pooled), network.products_from_features(*inputs))
        late_scores = late.queries_from_pooled(pooled) @ late.products_from_features(*inputs).T
        network.attach_late_branch(LateBranch.of(late), 0.3)
        queries, products = network.queries_from_pooled(pooled), \
            network.products_from_features(*inputs)
    assert network.embedding_dim == products.shape[1] == 16 + 32
    mixed = 0.7 * alone[0] @ alone[1].T + 0.3 * late_scores
    assert torch.allclose(queries @ products.T, mixed, atol=1e-5)
    assert network.config.model.late_mix_weight == 0.3
    loaded = load_model(network.save(tmp_path / "saved"))
    assert loaded.late_branch is not None and loaded.late_weight == 0.3
    assert embedding_dim_of(loaded.config) == loaded.embedding_dim == 48  # the registry's
    with torch.no_grad():
        assert torch.allclose(loaded.products_from_features(*inputs), products, atol=1e-6)
        assert torch.allclose(loaded.queries_from_pooled(pooled), queries, atol=1e-6)
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        network.attach_late_branch(LateBranch.of(late), 0.0)
    with pytest.raises(ValueError, match="late_fusion model"):
        LateBranch.of(network)
    network.attach_late_branch(LateBranch.of(late), 1.0)  # late fusion alone is a mix too
    with torch.no_grad():
        scores = network.queries_from_pooled(pooled) @ network.products_from_features(*inputs).T
    assert torch.allclose(scores, late_scores, atol=1e-5)
    load_config("tiny", ["model.late_mix=true", "model.late_mix_weight=1.0"])


def test_training_chooses_the_weight_on_val_and_the_saved_model_keeps_it(catalog, tmp_path):
    config = tiny(tmp_path / "cache", "model.late_mix=true")
    result = train(catalog, config, tmp_path / "mix", progress=False)
    chosen = json.loads((tmp_path / "mix" / "model" / MANIFEST_FILE).read_text())["late_mix"]
    curve = {float(w): v for w, v in chosen["val"].items()}
    assert sorted(curve) == [i / 20 for i in range(21)]
    weight = chosen["weight"]
    assert curve[weight] == max(curve.values())
    assert weight == min(w for w, v in curve.items() if v == curve[weight])  # ties: network
    # the mix the model serves is the one the curve scored, and it is saved with it
    assert result.val.metrics["ndcg@10"] == pytest.approx(curve[weight], abs=1e-9)
    model = load_model(result.model_dir)
    assert model.late_weight == weight and (model.late_branch is not None) == (weight > 0)
    again = evaluate_model(model, catalog, "val", cache_dir=str(tmp_path / "cache"),
                           progress=False)
    assert again.metrics["ndcg@10"] == pytest.approx(curve[weight], abs=0.02)
    # w = 0 of the curve is the network alone: the same run without the branch
    alone = train(catalog, tiny(tmp_path / "cache", "model.late_mix=false"),
                  tmp_path / "alone", progress=False)
    assert curve[0.0] == pytest.approx(alone.val.metrics["ndcg@10"], abs=1e-9)
    assert load_model(alone.model_dir).embedding_dim == 16


def test_a_network_no_mix_beats_on_val_is_saved_alone(catalog, tmp_path, monkeypatch):
    flat = {i / 20: 0.5 for i in range(21)}  # every weight ties: keep the network
    monkeypatch.setattr(Trainer, "_late_weight_curve", lambda self, branch: flat)
    result = train(catalog, tiny(tmp_path / "cache", "model.late_mix=true"), tmp_path / "run",
                   progress=False)
    model = load_model(result.model_dir)
    assert model.late_branch is None and model.embedding_dim == 16
    assert model.config.model.late_mix_weight == 0 and embedding_dim_of(model.config) == 16


def test_the_benchmark_takes_its_late_fusion_head_as_the_branch(catalog, tmp_path, caplog):
    from fusion_model.benchmark import run_benchmark

    overrides = (f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
                 "train.stage2.epochs=1", "model.late_mix=true")
    with caplog.at_level("INFO", logger="fusion_model.training.trainer"):
        shared = run_benchmark(str(catalog.uri), models=("fusion", "late_fusion"),
                               config_name="tiny", overrides=overrides,
                               work_dir=str(tmp_path / "shared"), progress=False,
                               print_table=False)
    assert "late branch taken from" in caplog.text
    assert not (tmp_path / "shared" / "fusion" / "late_branch").exists()
    assert list(shared["models"]) == ["fusion", "late_fusion"]  # the order asked for
    alone = run_benchmark(str(catalog.uri), models=("fusion",), config_name="tiny",
                          overrides=overrides, work_dir=str(tmp_path / "alone"),
                          progress=False, print_table=False)
    assert (tmp_path / "alone" / "fusion" / "late_branch" / "model").is_dir()
    # the branch trained afresh is the late_fusion head: same seed, same stage 1
    for metric in ("ndcg@10", "recall@10", "mrr"):
        assert shared["models"]["fusion"][metric] == pytest.approx(
            alone["models"]["fusion"][metric], abs=1e-6)


def test_the_chosen_weight_is_for_fusion_with_late_mix_and_retraining_chooses_it_again(
        catalog, tmp_path, caplog):
    with pytest.raises(ConfigError, match="late_mix_weight"):
        load_config("tiny", ["model.late_mix=false", "model.late_mix_weight=0.4"])
    with pytest.raises(ConfigError, match="late_mix_weight"):
        load_config("tiny", ["model.late_mix=true", "model.late_mix_weight=1.5"])
    with pytest.raises(ConfigError, match="late_mix_weight"):
        load_config("tiny", ["model.late_mix=true", "model.late_mix_weight=0.4",
                             "model.fusion=concat"])
    load_config("default", ["model.fusion=weighted_sum"])  # other heads ignore late_mix
    saved = tiny(tmp_path, "model.late_mix=true", "model.late_mix_weight=0.4")
    with caplog.at_level("INFO", logger="fusion_model.training.trainer"):
        trainer = Trainer(catalog, saved, tmp_path / "run", progress=False)
    assert trainer.config.model.late_mix_weight == 0 and "afresh" in caplog.text
