"""Quality ablation: every model trained and evaluated the same way on one catalog.

Stage 1 (query <-> product text) is trained once with domain fine-tuning and once without;
every image-using model starts its stage 2 from the matching stage 1, so differences
between rows come from the product tower alone. ``zero_shot_text`` is the untrained
MiniLM (mean pooled) floor. Each row reports 95% bootstrap CIs and the paired bootstrap
CI of its difference to ``text_only``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from fusion_model.config import RunConfig, load_config
from fusion_model.data.catalog import Catalog, load_catalog
from fusion_model.evaluation.bootstrap import paired_bootstrap_difference
from fusion_model.evaluation.evaluator import EvaluationResult, evaluate_vectors, query_segments
from fusion_model.models.heads import l2
from fusion_model.models.text import TextEncoder, mean_pool
from fusion_model.training.data import build_data
from fusion_model.training.features import text_bottom_features
from fusion_model.training.trainer import train

log = logging.getLogger(__name__)

CORE_MODELS = ("zero_shot_text", "text_only", "image_only", "concat", "weighted_sum",
               "late_fusion", "fusion")
EXTRA_MODELS = ("text_only_no_ft", "concat_no_ft", "fusion_no_ft")
ALL_MODELS = CORE_MODELS + EXTRA_MODELS
REPORTED = ("recall@10", "recall@100", "ndcg@10", "mrr")
# The paper's ladder, each step tested with a paired bootstrap on the same queries.
LADDER = (("concat_no_ft", "text_only_no_ft"), ("concat", "concat_no_ft"),
          ("concat", "text_only"), ("fusion", "concat"), ("fusion", "weighted_sum"),
          ("fusion", "fusion_no_ft"))


def zero_shot_text(catalog: Catalog, config: RunConfig) -> EvaluationResult:
    """Off-the-shelf text encoder, mean pooled, no projection, no training."""
    config = config.for_catalog(catalog.max_grade)
    encoder = TextEncoder(config.text.model, config.text.max_length, trainable_layers=0)
    data = build_data(catalog, config.train.min_positive_grade)
    test = data.splits["test"]
    cache = str(Path(config.train.cache_dir).expanduser())

    def vectors(texts: list[str], length: int) -> torch.Tensor:
        feats = text_bottom_features(encoder, texts, length, cache, config.train.precision,
                                     desc="zero-shot text")
        return l2(mean_pool(feats["hidden"].float(), feats["mask"]))

    products = vectors(data.product_texts, config.text.max_length)
    queries = vectors(test.texts, config.text.query_max_length)
    return evaluate_vectors(queries, products, test.ids, data.product_ids, test.qrels,
                            config.eval.ks, config.eval.min_relevant_grade,
                            query_segments(catalog.queries, catalog.products, catalog.judgments))


def run_benchmark(catalog_uri: str, output: str | None = None,
                  models: tuple[str, ...] = CORE_MODELS, config_name: str = "default",
                  overrides: tuple[str, ...] = (), work_dir: str = "runs/benchmark",
                  progress: bool = True) -> dict:
    """Train and evaluate ``models``; return (and write) the results JSON."""
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {', '.join(ALL_MODELS)}")
    catalog = load_catalog(catalog_uri)
    base = load_config(config_name, list(overrides)).for_catalog(catalog.max_grade)
    work = Path(work_dir)
    results: dict[str, EvaluationResult] = {}
    seconds: dict[str, float] = {}
    stage1_dirs: dict[bool, str] = {}
    stage1_seconds: dict[bool, float] = {}

    def stage1(finetune: bool) -> str:
        if finetune not in stage1_dirs:
            name = "text_only" if finetune else "text_only_no_ft"
            config = base.replace("model.fusion=text_only",
                                  f"train.domain_finetune={str(finetune).lower()}")
            started = time.perf_counter()
            result = train(catalog, config, work / name, progress)
            stage1_seconds[finetune] = time.perf_counter() - started
            stage1_dirs[finetune] = result.model_dir
            results[name], seconds[name] = result.test, stage1_seconds[finetune]
        return stage1_dirs[finetune]

    for name in models:
        if name in results:
            continue
        log.info("benchmark: %s", name)
        if name == "zero_shot_text":
            started = time.perf_counter()
            results[name] = zero_shot_text(catalog, base)
            seconds[name] = time.perf_counter() - started
            continue
        finetune = not name.endswith("_no_ft")
        kind = name.removesuffix("_no_ft")
        if kind == "text_only":
            stage1(finetune)
            continue
        config = base.replace(f"model.fusion={kind}",
                              f"train.domain_finetune={str(finetune).lower()}")
        from_dir = stage1(finetune)
        started = time.perf_counter()
        results[name] = train(catalog, config, work / name, progress, stage1_from=from_dir).test
        seconds[name] = stage1_seconds[finetune] + time.perf_counter() - started
    report = build_report(catalog, base, {m: results[m] for m in models}, seconds)
    print(format_table(report))
    if output:
        Path(output).write_text(json.dumps(report, indent=2))
        log.info("wrote %s", output)
    return report


def build_report(catalog: Catalog, config: RunConfig, results: dict[str, EvaluationResult],
                 seconds: dict[str, float]) -> dict:
    summary = catalog.summary()
    baseline = results.get("text_only")
    models = {}
    for name, result in results.items():
        query_ids = sorted(result.per_query)
        entry = {metric: result.metrics[metric] for metric in REPORTED}
        entry["ci95"] = {m: result.ci95(m, config.eval.bootstrap_samples) for m in REPORTED}
        if baseline is not None and name != "text_only":
            entry["vs_text_only"] = {
                m: paired_bootstrap_difference(result.values(m, query_ids),
                                               baseline.values(m, query_ids),
                                               config.eval.bootstrap_samples).as_dict()
                for m in REPORTED}
        entry["segments"] = result.segments
        entry["train_seconds"] = round(seconds.get(name, 0.0), 1)
        models[name] = entry
    ladder = {}
    for better, worse in LADDER:
        if better in results and worse in results:
            ids = sorted(results[better].per_query)
            ladder[f"{better}_vs_{worse}"] = {
                m: paired_bootstrap_difference(results[better].values(m, ids),
                                               results[worse].values(m, ids),
                                               config.eval.bootstrap_samples).as_dict()
                for m in REPORTED}
    return {"ladder": ladder, "catalog": {"uri": summary["uri"],
                                          "fingerprint": catalog.fingerprint,
                        "products": summary["products"],
                        "products_with_image": summary["products_with_image"],
                        "queries": summary["queries"]},
            "config": config.to_dict(), "models": models}


def format_table(report: dict) -> str:
    """Plain-text table: metric [95% CI] per model, and the gain over text_only."""
    header = f"{'model':<16}" + "".join(f"{m:>24}" for m in REPORTED) + \
        f"{'nDCG@10 vs text':>18}{'train s':>9}"
    lines = [header, "-" * len(header)]
    for name, entry in report["models"].items():
        cells = "".join(f"{entry[m]:>8.4f} [{entry['ci95'][m]['low']:.3f},"
                        f"{entry['ci95'][m]['high']:.3f}]" for m in REPORTED)
        delta = entry.get("vs_text_only", {}).get("ndcg@10")
        gain = f"{delta['mean']:+.4f}{'*' if delta['low'] > 0 else ' '}" if delta else "-"
        lines.append(f"{name:<16}{cells}{gain:>18}{entry['train_seconds']:>9.0f}")
    lines.append("* paired bootstrap 95% CI of the difference excludes 0")
    return "\n".join(lines)
