"""The ablation benchmark's JSON contract, on tiny encoders."""

from __future__ import annotations

import json

import pytest

from fusion_model.benchmark import run_benchmark
from fusion_model.errors import BadInputError


def test_benchmark_writes_the_documented_json(synthetic_catalog, tmp_path, capsys):
    output = tmp_path / "results.json"
    models = ("zero_shot_text", "text_only", "concat", "fusion", "fusion_no_ft")
    run_benchmark(str(synthetic_catalog), str(output), models=models,
                  config_name="tiny", overrides=(f"train.cache_dir={tmp_path / 'cache'}",
                                                 "train.stage1.epochs=1",
                                                 "train.stage2.epochs=1"),
                  work_dir=str(tmp_path / "work"), progress=False)
    report = json.loads(output.read_text())
    assert report["catalog"]["products"] == 300 and len(report["catalog"]["fingerprint"]) == 64
    assert list(report["models"]) == list(models)
    for name, entry in report["models"].items():
        for metric in ("recall@10", "recall@100", "ndcg@10", "mrr"):
            ci = entry["ci95"][metric]
            assert 0 <= ci["low"] <= entry[metric] <= ci["high"] <= 1
            if name != "text_only":
                assert "mean" in entry["vs_text_only"][metric]
        assert entry["train_seconds"] >= 0
    assert report["models"]["fusion"]["train_seconds"] > 0
    table = capsys.readouterr().out
    assert "zero_shot_text" in table and "paired bootstrap" in table
    # stage 1 is shared: fusion started from the text_only run instead of training its own
    assert not (tmp_path / "work" / "fusion" / "checkpoints" / "stage1.pt").exists()
    assert (tmp_path / "work" / "text_only" / "checkpoints" / "stage1.pt").exists()


def test_benchmark_over_seeds_reports_means_and_spread(synthetic_catalog, tmp_path,
                                                        capsys):
    models = ("text_only", "weighted_sum")
    report = run_benchmark(str(synthetic_catalog), None, models=models, seeds=2,
                           config_name="tiny",
                           overrides=(f"train.cache_dir={tmp_path / 'cache'}",
                                      "train.stage1.epochs=1", "train.stage2.epochs=1"),
                           work_dir=str(tmp_path / "work"), progress=False)
    for name in models:
        spread = report["models"][name]["seeds"]["ndcg@10"]
        assert len(spread["values"]) == 2 and spread["min"] <= spread["mean"] <= spread["max"]
        assert report["models"][name]["ndcg@10"] == pytest.approx(spread["mean"])
    assert {p.name for p in (tmp_path / "work").iterdir()} == {"seed0", "seed1"}
    assert "seed sd" in capsys.readouterr().out
    # the seeds' work directories give the same report when merged afterwards
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from merge_seeds import merged_grid

    merged = merged_grid(str(synthetic_catalog), [str(tmp_path / "work" / f"seed{s}")
                                                  for s in (0, 1)], models, config_name="tiny")
    again = merged["cells"][0]["report"]
    assert merged["seeds"] == again["seeds"] == 2
    for name in models:
        assert again["models"][name]["ndcg@10"] == pytest.approx(
            report["models"][name]["ndcg@10"])
        assert again["models"][name]["seeds"]["ndcg@10"]["values"] == pytest.approx(
            report["models"][name]["seeds"]["ndcg@10"]["values"])
    assert again["models"]["weighted_sum"]["vs_text_only"]["ndcg@10"] == pytest.approx(
        report["models"]["weighted_sum"]["vs_text_only"]["ndcg@10"])
    with pytest.raises(BadInputError, match="no finished text_only run"):
        merged_grid(str(synthetic_catalog), [str(tmp_path / "nowhere")], models)


def test_benchmark_refuses_unknown_models_and_expands_core():
    from fusion_model.benchmark import core_models, resolve_models

    assert resolve_models(("core", "fusion_no_ft")) == (*core_models(), "fusion_no_ft")
    with pytest.raises(ValueError, match="unknown model"):
        resolve_models(("fusion_typo",))


def test_benchmark_scores_the_val_split_when_asked(synthetic_catalog, tmp_path, capsys):
    from fusion_model.benchmark import zero_shot_text
    from fusion_model.config import load_config
    from fusion_model.data.catalog import load_catalog

    overrides = (f"train.cache_dir={tmp_path / 'cache'}", "train.stage1.epochs=1")
    report = run_benchmark(str(synthetic_catalog), None, models=("zero_shot_text",
                                                                   "text_only"),
                           config_name="tiny", overrides=overrides, split="val",
                           work_dir=str(tmp_path / "work"), progress=False)
    catalog = load_catalog(str(synthetic_catalog))
    config = load_config("tiny", list(overrides)).for_catalog(catalog.max_grade)
    on_val = zero_shot_text(catalog, config, "val").metrics["ndcg@10"]
    on_test = zero_shot_text(catalog, config, "test").metrics["ndcg@10"]
    assert on_val != on_test
    assert report["split"] == "val"
    assert report["models"]["zero_shot_text"]["ndcg@10"] == pytest.approx(on_val)
    val_queries = len(catalog.queries_in("val"))
    assert f"scored on the val queries ({val_queries})" in capsys.readouterr().out
    with pytest.raises(ValueError, match="split must be one of"):
        run_benchmark(str(synthetic_catalog), None, models=("zero_shot_text",),
                      split="train")


def test_learning_curves_cover_catalogs_and_train_query_counts(synthetic_catalog, tmp_path,
                                                               capsys):
    from fusion_model.cli import main

    output = tmp_path / "grid.json"
    assert main(["benchmark", "--catalog", str(synthetic_catalog), "--train-queries", "10,all",
                 "--models", "text_only,weighted_sum,late_fusion,fusion", "--config", "tiny",
                 "--seeds", "2", "--split", "val", "--output", str(output),
                 "--work-dir", str(tmp_path / "work"), f"train.cache_dir={tmp_path / 'cache'}",
                 "train.stage1.epochs=1", "train.stage2.epochs=1"]) == 0
    grid = json.loads(output.read_text())
    assert grid["split"] == "val" and grid["seeds"] == 2
    assert [c["requested"] for c in grid["cells"]] == [10, "all"]
    few, every = (c["report"] for c in grid["cells"])
    assert few["train_queries"] == 10 < every["train_queries"]
    for report in (few, every):
        assert 0 <= report["models"]["fusion"]["val"]["ndcg@10"] <= 1  # what to select on
        versus = report["models"]["fusion"]["vs_best_simple"]
        best = max(("weighted_sum", "late_fusion"),
                   key=lambda name: report["models"][name]["ndcg@10"])
        assert versus["model"] == best
        gap = report["models"]["fusion"]["ndcg@10"] - report["models"][best]["ndcg@10"]
        assert versus["ndcg@10"]["low"] <= gap <= versus["ndcg@10"]["high"]
    assert (tmp_path / "work" / "catalog" / "q10" / "seed1" / "fusion").is_dir()
    table = capsys.readouterr().out
    assert "| catalog | train queries | text_only |" in table
    assert f"| catalog | 10 | {few['models']['text_only']['ndcg@10']:.4f} |" in table


def test_train_query_samples_keep_val_and_test_and_differ_by_seed(synthetic_catalog):
    from fusion_model.data.catalog import load_catalog

    catalog = load_catalog(str(synthetic_catalog))
    sample = catalog.with_train_queries(12, seed=1)
    assert len(sample.queries_in("train")) == 12
    for split in ("val", "test"):
        assert sample.queries_in(split).reset_index(drop=True).equals(
            catalog.queries_in(split).reset_index(drop=True))
    assert set(sample.judgments["query_id"]) <= set(sample.queries["query_id"])
    assert set(sample.queries_in("train")["query_id"]) != set(
        catalog.with_train_queries(12, seed=2).queries_in("train")["query_id"])
    assert catalog.with_train_queries(None) is catalog
    with pytest.raises(ValueError, match="at least 1"):
        catalog.with_train_queries(0)
