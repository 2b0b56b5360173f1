"""Two-stage training on tiny random-init encoders: learning, caching, resume, round trip."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from fusion_model.config import load_config
from fusion_model.data.catalog import load_catalog
from fusion_model.inference import evaluate_model
from fusion_model.models.heads import HEADS
from fusion_model.models.towers import load_model
from fusion_model.training.trainer import Trainer, train


@pytest.fixture(scope="module")
def catalog(synthetic_catalog):
    return load_catalog(str(synthetic_catalog))


def test_two_stages_learn_and_the_saved_model_reproduces_the_metrics(catalog,
                                                                     tmp_path):
    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}",
                                  "train.stage1.epochs=3"])
    result = train(catalog, config, tmp_path / "run", progress=False)
    stage1 = [h["loss"] for h in result.history if h["stage"] == "stage1"]
    stage2 = [h["loss"] for h in result.history if h["stage"] == "stage2"]
    assert len(stage1) == 3 and len(stage2) == 2  # learning itself: tests/integration
    assert all(loss > 0 for loss in stage1 + stage2)
    assert set(result.seconds) >= {"stage1", "stage2", "text_features", "image_features"}
    assert 0 < result.test.metrics["ndcg@10"] <= 1
    assert {"visual_query", "text_only_attribute"} <= set(result.test.segments)
    reloaded = load_model(result.model_dir)
    again = evaluate_model(reloaded, catalog, "test", progress=False)
    for metric in ("recall@10", "ndcg@10", "mrr"):
        assert again.metrics[metric] == pytest.approx(result.test.metrics[metric], abs=0.02)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_every_fusion_kind_trains_through_both_stages(catalog, tmp_path, kind):
    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}", f"model.fusion={kind}",
                                  "train.stage1.epochs=1",
                                  "train.stage2.epochs=1"])
    result = train(catalog, config, tmp_path / kind, progress=False)
    stages = {h["stage"] for h in result.history}
    assert stages == ({"stage1"} if kind == "text_only" else {"stage1", "stage2"})
    assert torch.isfinite(torch.tensor(list(result.test.metrics.values()))).all()


def test_second_run_reuses_cached_frozen_features(catalog, tmp_path, caplog):
    overrides = [f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
                 "train.stage2.epochs=1"]
    train(catalog, load_config("tiny", overrides), tmp_path / "a", progress=False)
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*"))
    with caplog.at_level(logging.INFO, logger="fusion_model.features"):
        train(catalog, load_config("tiny", overrides + ["model.fusion=concat"]),
              tmp_path / "b", progress=False)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*")) == files
    assert "image features: 295 cached, 0 computed" in caplog.text
    assert "product text features: 300 cached, 0 computed" in caplog.text


def test_crash_mid_stage2_resumes_to_the_same_model(catalog, tmp_path,
                                                    monkeypatch):
    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}"])
    reference = train(catalog, config, tmp_path / "clean", progress=False)

    original = Trainer._train_epoch

    def crash_in_stage2_epoch2(self, name, epoch, *args):
        if name == "stage2" and epoch == 1:
            raise RuntimeError("simulated crash")
        return original(self, name, epoch, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_stage2_epoch2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(catalog, config, tmp_path / "crashy", progress=False)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    resumed = train(catalog, config, tmp_path / "crashy", progress=False)
    assert [(h["stage"], h["epoch"]) for h in resumed.history] == [
        ("stage1", 1), ("stage1", 2), ("stage2", 1), ("stage2", 2)]
    assert resumed.test.metrics == pytest.approx(reference.test.metrics, abs=1e-6)


def test_a_finished_stage_keeps_its_model_alone_and_a_rerun_skips_it(catalog, tmp_path,
                                                                      caplog):
    """A finished stage's checkpoint drops the optimizer and the best-state copy (3/4 of
    its size); a rerun with the same config still skips both stages to the same model."""
    from fusion_model.tensor_files import load_tensors

    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}",
                                  "train.stage1.epochs=1", "train.stage2.epochs=1"])
    first = train(catalog, config, tmp_path / "run", progress=False)
    for stage in ("stage1", "stage2"):
        saved = load_tensors(tmp_path / "run" / "checkpoints" / f"{stage}.pt", "checkpoint")
        assert saved["done"] and "optimizer" not in saved
        assert saved["state"]["best_state"] is None and saved["state"]["epoch"] == 1
    with caplog.at_level(logging.INFO, logger="fusion_model.training.trainer"):
        again = train(catalog, config, tmp_path / "run", progress=False)
    assert "stage1: already complete" in caplog.text
    assert "stage2: already complete" in caplog.text
    assert again.test.metrics == first.test.metrics

def test_training_is_deterministic(catalog, tmp_path):
    overrides = [f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
                 "train.stage2.epochs=1"]
    runs = [train(catalog, load_config("tiny", overrides), tmp_path / name, progress=False)
            for name in ("a", "b")]
    assert runs[0].test.metrics == runs[1].test.metrics


def test_frozen_text_encoder_without_domain_finetuning(catalog, tmp_path):
    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}",
                                  "train.domain_finetune=false",
                                  "model.fusion=text_only",
                                  "train.stage1.epochs=1"])
    trainer = Trainer(catalog, config, tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in trainer_model_text_state(trainer).items()}
    trainer.run()
    after = trainer.model.text.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def trainer_model_text_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    from fusion_model.models.towers import TwoTower

    return TwoTower(trainer.config).text.state_dict()


def test_a_stage_that_cannot_beat_its_starting_point_changes_nothing(catalog,
                                                                     tmp_path, monkeypatch):
    from fusion_model.evaluation.evaluator import EvaluationResult

    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}",
                                  "model.fusion=text_only",
                                  "train.stage1.epochs=5",
                                  "train.stage1.patience=2"])
    scores = iter([0.9, 0.5, 0.4])  # before training, then two worse epochs

    def scripted(self, split, products=None):
        if split == "val" and self.history is not None and len(self.history) < 2:
            return EvaluationResult({**dict.fromkeys(("ndcg@10", "recall@10", "recall@100",
                                                      "ndcg@100", "mrr"), next(scores))}, {})
        return original(self, split, products)

    original = Trainer.evaluate_split
    monkeypatch.setattr(Trainer, "evaluate_split", scripted)
    trainer = Trainer(catalog, config, tmp_path / "run", progress=False)
    started = {}
    original_stage = Trainer._run_stage

    def remember_start(self, *args, **kwargs):
        started.update({k: v.clone() for k, v in self.model.state_dict().items()})
        return original_stage(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_run_stage", remember_start)
    result = trainer.run()
    assert [h["epoch"] for h in result.history] == [1, 2]      # early stop, patience 2
    final = trainer.model.state_dict()
    assert all(torch.equal(started[k], final[k]) for k in started)


def test_mined_hard_negatives_are_unjudged_and_join_the_batch(catalog, tmp_path,
                                                              monkeypatch):
    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}",
                                  "train.stage1.hard_negatives=3",
                                  "train.stage2.hard_negatives=2",
                                  "train.stage1.epochs=1",
                                  "train.stage2.epochs=1"])
    sizes = []
    original = Trainer._batch_negatives

    def spy(self, q_idx, p_idx):
        negatives = original(self, q_idx, p_idx)
        sizes.append(len(negatives))
        assert not set(negatives.tolist()) & set(p_idx.tolist())
        return negatives

    monkeypatch.setattr(Trainer, "_batch_negatives", spy)
    trainer = Trainer(catalog, config, tmp_path / "run", progress=False)
    result = trainer.run()
    assert {h["stage"] for h in result.history} == {"stage1", "stage2"}
    assert sizes and min(sizes) > 0
    mined = trainer._mine_negatives(3)
    train = trainer.data.splits["train"]
    position = {pid: i for i, pid in enumerate(trainer.data.product_ids)}
    for qid, negatives in zip(train.ids, mined):
        assert len(negatives) == 3
        assert not {position[p] for p in train.qrels.get(qid, {})} & set(negatives.tolist())


def test_judged_negatives_are_the_batch_queries_grade_0_products(catalog, tmp_path,
                                                                  monkeypatch):
    """Products a snapshot judged grade 0 for a train query (shown and passed over) join
    the batches of that query as negatives; a catalog without grade 0 adds none."""
    import pandas as pd

    train_ids = catalog.queries.loc[catalog.queries["split"] == "train", "query_id"]
    products = catalog.products["product_id"].tolist()
    zeros = pd.DataFrame({"query_id": train_ids.repeat(2).to_numpy(),
                          "product_id": [products[(7 * i) % len(products)]
                                         for i in range(2 * len(train_ids))], "grade": 0})
    judged = catalog.judgments.set_index(["query_id", "product_id"])
    zeros = zeros[~zeros.set_index(["query_id", "product_id"]).index.isin(judged.index)]
    with_zeros = dataclasses.replace(catalog, judgments=pd.concat(
        [catalog.judgments, zeros.astype(catalog.judgments.dtypes.to_dict())],
        ignore_index=True))
    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}",
                                  "train.stage1.judged_negatives=1", "train.stage1.epochs=1",
                                  "train.stage2.epochs=1"])
    seen = []
    original = Trainer._batch_negatives

    def spy(self, q_idx, p_idx):
        negatives = original(self, q_idx, p_idx)
        if self.stage == 1:
            own = {j for q in q_idx for j in self.judged_zero[q].tolist()}
            assert set(negatives.tolist()) <= own
            seen.append(len(negatives))
        return negatives

    monkeypatch.setattr(Trainer, "_batch_negatives", spy)
    trainer = Trainer(with_zeros, config, tmp_path / "zeros", progress=False)
    trainer.run()
    assert seen and sum(seen) > 0
    position = {pid: i for i, pid in enumerate(trainer.data.product_ids)}
    expected = zeros.groupby("query_id")["product_id"].apply(lambda s: {position[p] for p in s})
    for qid, found in zip(trainer.data.splits["train"].ids, trainer.judged_zero):
        assert set(found.tolist()) == expected.get(qid, set())
    plain = Trainer(catalog, config, tmp_path / "plain", progress=False)
    plain.prepare()
    assert not any(len(z) for z in plain.judged_zero)
    rng = np.random.default_rng(0)
    assert plain._stage_negatives(config.train.stage1, rng) is None
    assert rng.random() == np.random.default_rng(0).random()  # the batches' draws unchanged


def test_missing_val_split_is_carved_from_train(catalog):
    from fusion_model.training.data import build_data

    queries = catalog.queries.assign(split=catalog.queries["split"].replace("val", "train"))
    data = build_data(dataclasses.replace(catalog, queries=queries), 3)
    assert len(data.splits["val"].ids) > 0
    assert not set(data.splits["val"].ids) & set(data.splits["train"].ids)
    assert len(data.splits["val"].ids) + len(data.splits["train"].ids) == \
        int((queries["split"] == "train").sum())


def test_product_tokens_of_distinct_texts_equal_the_padded_batch(catalog,
                                                                 tmp_path):
    """Running the text top once per distinct title, trimmed to the batch's longest text,
    gives the same pooled vectors as running it on every padded row."""
    from fusion_model.models.text import mean_pool
    from fusion_model.models.towers import TwoTower
    from fusion_model.training.data import build_data

    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}"])
    trainer = Trainer(catalog, config, tmp_path / "run", progress=False)
    trainer.data = build_data(catalog, trainer.config.train.min_positive_grade)
    trainer.model = TwoTower(trainer.config).eval()
    trainer._prepare_text_features()
    idx = torch.tensor([0, 5, 5, 17, 0, 42, 99, 5])
    tokens, mask = trainer._product_tokens(idx)
    assert len(set(trainer.text_row[idx.numpy()].tolist())) < len(idx)
    hidden, full_mask = trainer.product_text["hidden"][idx].float(), trainer.product_text[
        "mask"][idx]
    expected = mean_pool(trainer.model.text.top(hidden, full_mask), full_mask)
    assert tokens.shape[1] <= hidden.shape[1]
    assert torch.allclose(mean_pool(tokens, mask), expected, atol=1e-5)


def test_learning_rate_schedule_warms_up_then_decays_to_zero():
    from fusion_model.config import StageConfig
    from fusion_model.training.trainer import LearningRateSchedule

    stage = StageConfig(epochs=2, schedule="cosine", warmup=0.25)
    factors = [LearningRateSchedule(stage, epoch, 10).factor(step)
               for epoch in range(2) for step in range(10)]
    assert factors[:5] == sorted(factors[:5]) and factors[0] < 0.5  # warmup: 5 of 20 steps
    assert max(factors) == pytest.approx(1.0)
    assert factors[5:] == sorted(factors[5:], reverse=True) and factors[-1] < 0.02
    constant = StageConfig(epochs=2)
    assert {LearningRateSchedule(constant, 1, 10).factor(s) for s in range(10)} == {1.0}


def test_stages_as_two_tasks_give_the_one_process_model(catalog, tmp_path):
    """The DAG trains stage 1 and stage 2 in two tasks; `lifecycle` in one process. Both
    build the config's own model, so they end at the same metrics."""
    from fusion_model.training.trainer import train_stage1

    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
                                  "train.stage2.epochs=1"])
    whole = train(catalog, config, tmp_path / "whole", progress=False)
    stage1 = train_stage1(catalog, config, tmp_path / "stage1", progress=False)
    assert {h["stage"] for h in stage1.history} == {"stage1"}
    split = train(catalog, config, tmp_path / "stage2", progress=False,
                  stage1_from=stage1.model_dir)
    assert split.test.metrics == pytest.approx(whole.test.metrics, abs=1e-4)


def test_stage2_refuses_a_stage1_model_of_another_shape(catalog, tmp_path):
    from fusion_model.models.towers import StageCheckpointError
    from fusion_model.training.trainer import train_stage1

    overrides = [f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
                 "train.stage2.epochs=1"]
    stage1 = train_stage1(catalog, load_config("tiny", overrides), tmp_path / "s1",
                          progress=False)
    wider = load_config("tiny", [*overrides, "model.embed_dim=32"])
    with pytest.raises(StageCheckpointError, match="with another shape, e.g. .*proj.weight"):
        train(catalog, wider, tmp_path / "s2", progress=False, stage1_from=stage1.model_dir)


def test_stage2_gives_the_layers_stage1_did_not_train_their_own_learning_rate(
        catalog, tmp_path, monkeypatch):
    optimizers = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, groups, **kwargs):
            super().__init__(groups, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
                                  "train.stage2.epochs=1", "train.stage2.lr=0.002",
                                  "train.stage2.new_layer_lr=0.03"])
    trainer = Trainer(catalog, config, tmp_path / "run", progress=False)
    trainer.prepare()
    trainer.run_stage1()
    trainer.run_stage2()
    stage1, stage2 = optimizers
    assert {g["base_lr"] for g in stage1.param_groups} == {config.train.stage1.lr,
                                                           config.train.stage1.encoder_lr}
    lr_of = {id(p): g["base_lr"] for g in stage2.param_groups for p in g["params"]}
    head = trainer.model.product_head
    assert lr_of[id(head.text_proj.weight)] == lr_of[id(trainer.model.query_head.proj.weight)] \
        == 0.002
    assert lr_of[id(head.image_proj.weight)] == lr_of[id(head.gate[0].weight)] == 0.03


def test_the_mix_phase_trains_a_weighted_sum_and_the_network_starts_from_its_best(
        catalog, tmp_path, monkeypatch):
    config = load_config("tiny", [f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
                                  "train.stage2.epochs=2", "train.stage2.mix_epochs=2",
                                  "model.gated_fusion=true", "model.late_mix=false"])
    trainer = Trainer(catalog, config, tmp_path / "run", progress=False)
    starts = {}
    original_stage = Trainer._run_stage

    def remember_start(self, name, *args, **kwargs):
        starts[name] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return original_stage(self, name, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_run_stage", remember_start)
    result = trainer.run()
    assert [h["stage"] for h in result.history] == ["stage1", "stage2_mix", "stage2_mix",
                                                    "stage2", "stage2"]
    before, after = starts["stage2_mix"], starts["stage2"]
    mixed = {name for name, value in after.items() if not torch.equal(before[name], value)}
    head = "product_head."
    assert {f"{head}gate.2.bias", f"{head}image_proj.weight"} <= mixed
    network = [n for n in before if n.startswith(head) and not n.startswith(
        (f"{head}text_proj", f"{head}image_proj", f"{head}gate.2.bias"))]
    assert network and not mixed & set(network)  # the network's own parts kept their start
    best_mix = max(h["val_ndcg@10"] for h in result.history if h["stage"] == "stage2_mix")
    assert result.val.metrics["ndcg@10"] >= best_mix - 1e-9  # the start competes


def test_mix_epochs_need_the_gated_fusion_network_and_other_heads_ignore_them():
    from fusion_model.config import ConfigError

    with pytest.raises(ConfigError, match="gated_fusion=true"):
        load_config("tiny", ["train.stage2.mix_epochs=2", "model.gated_fusion=false"])
    load_config("default", ["train.stage2.mix_epochs=2"])  # the default network is gated
    load_config("tiny", ["train.stage2.mix_epochs=2", "model.fusion=weighted_sum"])
    with pytest.raises(ConfigError, match="belongs to stage 2"):
        load_config("tiny", ["train.stage1.mix_epochs=1", "model.gated_fusion=true"])


def test_loading_a_folder_that_is_not_a_saved_model_says_where_the_model_is(tmp_path):
    from fusion_model.errors import BadInputError

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.yaml").write_text("{}\n")
    with pytest.raises(BadInputError, match=r"run is not a saved model .*keeps its model in "
                                            r".*run/model"):
        load_model(run)
    with pytest.raises(BadInputError, match=r"elsewhere does not exist"):
        load_model(tmp_path / "elsewhere")


def test_both_stage_steps_share_one_rule_for_reusing_finished_work(synthetic_catalog,
                                                                   tmp_path, monkeypatch):
    """``steps.train`` is ``train_stage1`` then ``train_stage2``: the model and the history
    of both stages land in the work dir, and a rerun of either stage reuses the finished
    run instead of training again."""
    from fusion_model.pipelines import steps
    from fusion_model.training import trainer
    from fusion_model.training.trainer import TrainResult

    overrides = [f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
                 "train.stage2.epochs=1"]
    work = str(tmp_path / "work")
    first = steps.train(str(synthetic_catalog), work, "tiny", overrides)
    result = TrainResult.load(first["result"])
    assert first["work_dir"] == work and {h["stage"] for h in result.history} == {
        "stage1", "stage2"}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(trainer, "train", no_training)
    monkeypatch.setattr(trainer, "train_stage1", no_training)
    again = steps.train(str(synthetic_catalog), work, "tiny", overrides)
    assert again["model_dir"] == first["model_dir"] and again["test"] == first["test"]
    stage2 = steps.train_stage2(str(synthetic_catalog), work, str(tmp_path / "work" / "stage1"
                                                                  / "model"), "tiny",
                                overrides, out=work)
    assert stage2["model_dir"] == first["model_dir"]
    # where the model is indexed, registered or gated does not make it another training
    elsewhere = [*overrides, f"index.uri={tmp_path / 'other.db'}", "gate.min_improvement=0.5",
                 "registry.model_name=elsewhere"]
    assert steps.train(str(synthetic_catalog), work, "tiny", elsewhere)["model_dir"] == \
        first["model_dir"]
    with pytest.raises(AssertionError, match="trained again"):  # what it learns does
        steps.train(str(synthetic_catalog), work, "tiny", [*overrides, "train.seed=7"])


def test_an_anchored_stage_stays_near_its_start_and_the_pull_divides_by_the_queries(
        catalog, tmp_path, monkeypatch, caplog):
    from fusion_model.evaluation.evaluator import EvaluationResult
    from fusion_model.training.trainer import train_stage1

    overrides = [f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
                 "train.stage2.epochs=2", "train.stage2.lr=0.01"]
    stage1 = train_stage1(catalog, load_config("tiny", overrides), tmp_path / "s1",
                          progress=False)
    rising = iter(range(1000))  # every epoch "beats" the last: the final weights are kept
    monkeypatch.setattr(Trainer, "evaluate_split", lambda self, split, products=None:
                        EvaluationResult(dict.fromkeys(("ndcg@10", "recall@10", "mrr"),
                                                       next(rising) / 1000), {}))
    moved = {}
    original_stage = Trainer._run_stage

    def measure(self, name, *args, **kwargs):
        start = {k: v.clone() for k, v in self.model.state_dict().items()}
        original_stage(self, name, *args, **kwargs)
        end = self.model.state_dict()
        moved[self.config.train.stage2.anchor] = sum(
            float(((end[k].float() - start[k].float()) ** 2).sum()) for k in start)

    monkeypatch.setattr(Trainer, "_run_stage", measure)
    for anchor in (0.0, 1.0e5):
        config = load_config("tiny", [*overrides, f"train.stage2.anchor={anchor}"])
        with caplog.at_level(logging.INFO, logger="fusion_model.training.trainer"):
            train(catalog, config, tmp_path / f"a{anchor}", progress=False,
                  stage1_from=stage1.model_dir)
    queries = len(catalog.queries_in("train"))
    assert f"strength {1.0e5 / queries:.2e} (100000 / {queries} train queries)" in caplog.text
    assert 0 < moved[1.0e5] < moved[0.0] / 4


def test_anchor_must_not_be_negative():
    from fusion_model.config import ConfigError

    with pytest.raises(ConfigError, match="anchor >= 0"):
        load_config("tiny", ["train.stage2.anchor=-1"])


def test_photo_mirror_shows_a_share_of_the_photos_mirrored_and_off_reads_none(
        catalog, tmp_path):
    from fusion_model.features import image_batch

    base = [f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1",
            "train.stage2.epochs=1"]
    off = Trainer(catalog, load_config("tiny", base), tmp_path / "off", progress=False)
    off.run()
    assert off.mirrored_features is None
    config = load_config("tiny", [*base, "train.stage2.photo_mirror=0.5"])
    trainer = Trainer(catalog, config, tmp_path / "half", progress=False)
    result = trainer.run()
    assert np.isfinite(result.val.metrics["ndcg@10"])
    with_photo = np.flatnonzero(trainer.image_present.numpy())
    idx = np.repeat(with_photo[:8], 50)
    shown = trainer._image_features(idx, 0.5)
    plain = image_batch(trainer.image_features, idx)
    mirrored = image_batch(trainer.mirrored_features, idx)
    is_plain = (shown == plain).flatten(1).all(dim=1)
    is_mirrored = (shown == mirrored).flatten(1).all(dim=1)
    assert bool((is_plain | is_mirrored).all()) and not bool((is_plain & is_mirrored).any())
    assert 0.35 < float(is_mirrored.float().mean()) < 0.65  # a share of 0.5, drawn per row
    assert torch.equal(trainer._image_features(idx, 0.0), plain)
    with pytest.raises(Exception, match="photo_mirror"):
        load_config("tiny", ["train.stage2.photo_mirror=1.5"])
    with pytest.raises(Exception, match="stage 2 only"):
        load_config("tiny", ["train.stage1.photo_mirror=0.5"])
