"""Quality ablation: every model trained and evaluated the same way on one catalog.

Stage 1 (query <-> product text) is trained once with domain fine-tuning and once without;
every image-using model starts its stage 2 from the matching stage 1, so differences
between rows come from the product tower alone. ``zero_shot_text`` is the untrained
MiniLM (mean pooled) floor. Each row reports 95% bootstrap CIs and the paired bootstrap
CI of its difference to ``text_only``. Rows are scored on the test split; choose recipes
with ``split="val"`` and report the chosen one on test.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fusion_model.checks import load_checked_config
from fusion_model.config import RunConfig
from fusion_model.data.catalog import Catalog, load_catalog
from fusion_model.data.retrieval import build_data
from fusion_model.data.splits import SCORED_SPLITS
from fusion_model.engines import resolve_runtime
from fusion_model.errors import BadInputError
from fusion_model.evaluation.bootstrap import paired_bootstrap_difference
from fusion_model.evaluation.evaluator import EvaluationResult, Evaluator
from fusion_model.features import text_bottom_features
from fusion_model.models.heads import HEADS, l2
from fusion_model.models.text import TextEncoder, mean_pool
from fusion_model.training.trainer import RESULT_FILE, TrainResult, train

log = logging.getLogger(__name__)

REPORTED = ("recall@10", "recall@100", "ndcg@10", "mrr")
# Mixes of the two modalities with one or two learned scalars (and concat, one linear map):
# the fusion network must beat the best of them to earn its parameters.
SIMPLE_FUSIONS = ("weighted_sum", "late_fusion", "concat")
NETWORKS = ("fusion",)
# The paper's ladder, each step tested with a paired bootstrap on the same queries.
LADDER = (("concat_no_ft", "text_only_no_ft"), ("concat", "concat_no_ft"),
          ("concat", "text_only"), ("fusion", "concat"), ("fusion", "weighted_sum"),
          ("fusion", "late_fusion"),
          ("fusion", "fusion_no_ft"))


def zero_shot_text(catalog: Catalog, config: RunConfig, split: str = "test"
                   ) -> EvaluationResult:
    """Off-the-shelf text encoder, mean pooled, no projection, no training."""
    return zero_shot_rankings(catalog, config, split)[0]


def zero_shot_rankings(catalog: Catalog, config: RunConfig, split: str = "test"
                       ) -> tuple[EvaluationResult, dict[str, list[str]]]:
    """``zero_shot_text``'s result and its top-k products per ``split`` query (exact
    search)."""
    from fusion_model.evaluation.evaluator import rank

    config = config.for_catalog(catalog.max_grade)
    encoder = TextEncoder(config.text.model, config.text.max_length, trainable_layers=0)
    data = build_data(catalog, config.train.min_positive_grade)
    evaluator = Evaluator.for_split(catalog, config, data, split)
    cache = str(Path(config.train.cache_dir).expanduser())
    runtime = resolve_runtime(config)

    def vectors(texts: list[str], length: int) -> Iterator[torch.Tensor]:
        feats = text_bottom_features(encoder, texts, length, cache, runtime,
                                     desc="zero-shot text")
        for hidden, mask in zip(feats["hidden"].chunks(4096), feats["mask"].chunks(4096)):
            yield l2(mean_pool(hidden.float(), mask))

    queries = torch.cat(list(vectors(evaluator.query_texts, config.text.query_max_length)))
    rankings = rank(queries, vectors(data.product_texts, config.text.max_length),
                    evaluator.query_ids, evaluator.product_ids, max(evaluator.ks))
    return evaluator.score_rankings(rankings), rankings


def core_models() -> tuple[str, ...]:
    """The untrained floor and every registered product head, fine-tuned."""
    return ("zero_shot_text", *HEADS)


def all_models() -> tuple[str, ...]:
    """The core models plus each text-using head without domain fine-tuning (``_no_ft``)."""
    return core_models() + tuple(f"{kind}_no_ft" for kind, head in HEADS.items()
                                 if head.uses_text)


def resolve_models(names: tuple[str, ...]) -> tuple[str, ...]:
    """Model names with ``core`` expanded to the core ladder; unknown names are refused."""
    expanded = [m for name in names for m in (core_models() if name == "core" else (name,))]
    unknown = [m for m in expanded if m not in all_models()]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from core, "
                         f"{', '.join(all_models())}")
    return tuple(dict.fromkeys(expanded))


def run_benchmark(catalog_uri: str, output: str | None = None,
                  models: tuple[str, ...] = ("core",), config_name: str = "default",
                  overrides: tuple[str, ...] = (), work_dir: str = "runs/benchmark",
                  progress: bool = True, seeds: int = 1, split: str = "test",
                  train_queries: int | None = None, print_table: bool = True) -> dict:
    """Train and evaluate ``models`` with ``seeds`` seeds on ``split``; return (and write)
    the results.

    With several seeds (``train.seed``, +1, +2, ...) every metric is the mean over seeds,
    ``seeds`` gives each seed's value and the spread, and the CIs are over queries of the
    per-query scores averaged over seeds. With ``train_queries`` every seed trains on its
    own seeded sample of that many train queries (val and test stay whole).
    """
    models = resolve_models(models)
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    if split not in SCORED_SPLITS:
        raise ValueError(f"split must be one of {', '.join(SCORED_SPLITS)}, got {split!r}")
    catalog = load_catalog(catalog_uri)
    base = load_checked_config(config_name, list(overrides)).for_catalog(catalog.max_grade)
    runs = []
    for offset in range(seeds):
        seed = base.train.seed + offset
        config = base.replace(f"train.seed={seed}") if offset else base
        work = Path(work_dir) / f"seed{seed}" if seeds > 1 else Path(work_dir)
        log.info("benchmark seed %d (%d/%d)", seed, offset + 1, seeds)
        sample = catalog.with_train_queries(train_queries, seed)
        runs.append(_run_models(sample, config, models, work, progress, split))
    report = seeds_report(catalog, base, models, runs, split, train_queries)
    if print_table:
        print(format_table(report))
    if output:
        Path(output).write_text(json.dumps(report, indent=2))
        log.info("wrote %s", output)
    return report


SeedRun = tuple[dict[str, EvaluationResult], dict[str, float], dict[str, dict[str, float]]]


def seeds_report(catalog: Catalog, base: RunConfig, models: tuple[str, ...],
                 runs: list[SeedRun], split: str = "test",
                 train_queries: int | None = None) -> dict:
    """The report of one seed's run or several: every metric the mean over seeds, the
    spread, and each trained model's mean val metrics. A run: (result per model, training
    seconds per model, val metrics per trained model)."""
    results = {m: average_results([run[0][m] for run in runs]) for m in models}
    seconds = {m: float(np.mean([run[1].get(m, 0.0) for run in runs])) for m in models}
    report = build_report(catalog, base, results, seconds) | {
        "split": split, "seeds": len(runs),
        "train_queries": len(catalog.with_train_queries(train_queries).queries_in("train"))}
    for name in models:
        if len(runs) > 1:
            report["models"][name]["seeds"] = seed_spread([run[0][name] for run in runs])
        if all(name in run[2] for run in runs):  # the val score a recipe is chosen on
            report["models"][name]["val"] = {
                m: float(np.mean([run[2][name][m] for run in runs])) for m in REPORTED}
    return report


def saved_run(work: Path, models: tuple[str, ...], split: str = "test") -> SeedRun:
    """One seed's run read back from its work directory (``<model>/result.json`` of every
    trained model, as ``fusion-model benchmark`` leaves them): seeds run as separate
    processes are reported together with ``seeds_report``."""
    results, seconds, val = {}, {}, {}
    for name in models:
        result_file = work / name / RESULT_FILE
        if not result_file.is_file():
            raise BadInputError(f"{result_file}: no finished {name} run in {work}")
        result = TrainResult.load(result_file)
        results[name], val[name] = getattr(result, split), result.val.metrics
        seconds[name] = result.seconds.get("total", 0.0)
    return results, seconds, val


def _run_models(catalog: Catalog, base: RunConfig, models: tuple[str, ...], work: Path,
                progress: bool, split: str = "test") -> SeedRun:
    """One seed: every model's result on ``split``, training seconds (stage 1 shared) and
    every trained model's val metrics."""
    results: dict[str, EvaluationResult] = {}
    seconds: dict[str, float] = {}
    val: dict[str, dict[str, float]] = {}  # each trained model's val metrics (selection)
    stage1_dirs: dict[bool, str] = {}
    stage1_seconds: dict[bool, float] = {}
    model_dirs: dict[str, str] = {}  # each stage-2 model trained so far

    def stage1(finetune: bool) -> str:
        if finetune not in stage1_dirs:
            name = "text_only" if finetune else "text_only_no_ft"
            config = base.replace("model.fusion=text_only",
                                  f"train.domain_finetune={str(finetune).lower()}")
            started = time.perf_counter()
            result = train(catalog, config, work / name, progress)
            stage1_seconds[finetune] = time.perf_counter() - started
            stage1_dirs[finetune] = result.model_dir
            results[name] = getattr(result, split)
            val[name] = result.val.metrics
            seconds[name] = stage1_seconds[finetune]
        return stage1_dirs[finetune]

    # the fusion network last: its late branch is the late_fusion head, when that is listed
    for name in sorted(models, key=lambda m: m.removesuffix("_no_ft") == "fusion"):
        if name in results:
            continue
        log.info("benchmark: %s", name)
        if name == "zero_shot_text":
            started = time.perf_counter()
            results[name] = zero_shot_text(catalog, base, split)
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
        # the fusion network's late branch is the late_fusion head of the same stage 1
        late = name.replace("fusion", "late_fusion", 1) if kind == "fusion" else None
        started = time.perf_counter()
        result = train(catalog, config, work / name, progress, stage1_from=from_dir,
                       late_branch_from=model_dirs.get(late))
        model_dirs[name] = result.model_dir
        results[name] = getattr(result, split)
        val[name] = result.val.metrics
        seconds[name] = stage1_seconds[finetune] + time.perf_counter() - started
        if late in model_dirs and config.model.late_mix:  # its branch's training time too
            seconds[name] += seconds[late] - stage1_seconds[finetune]
    return results, seconds, val


def average_results(results: list[EvaluationResult]) -> EvaluationResult:
    """One result whose metrics, per-query and segment values are means over seeds."""
    if len(results) == 1:
        return results[0]

    def mean_of(tables: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
        keys = set.intersection(*(set(t) for t in tables))
        return {k: {m: float(np.mean([t[k][m] for t in tables])) for m in tables[0][k]}
                for k in sorted(keys)}

    metrics = {m: float(np.mean([r.metrics[m] for r in results])) for m in results[0].metrics}
    return EvaluationResult(metrics, mean_of([r.per_query for r in results]),
                            mean_of([r.segments for r in results]))


def seed_spread(results: list[EvaluationResult]) -> dict[str, dict]:
    """Per reported metric: each seed's value, their mean, standard deviation, min and max."""
    spread = {}
    for metric in REPORTED:
        values = [r.metrics[metric] for r in results]
        spread[metric] = {"values": values, "mean": float(np.mean(values)),
                          "std": float(np.std(values, ddof=1)), "min": min(values),
                          "max": max(values)}
    return spread


def build_report(catalog: Catalog, config: RunConfig, results: dict[str, EvaluationResult],
                 seconds: dict[str, float]) -> dict:
    summary = catalog.summary()
    samples = config.eval.bootstrap_samples
    baseline = results.get("text_only")
    models = {}
    for name, result in results.items():
        entry = {metric: result.metrics[metric] for metric in REPORTED}
        entry["ci95"] = {m: result.ci95(m, config.eval.bootstrap_samples) for m in REPORTED}
        if baseline is not None and name != "text_only":
            entry["vs_text_only"] = paired(result, baseline, samples)
        entry["segments"] = result.segments
        entry["train_seconds"] = round(seconds.get(name, 0.0), 1)
        models[name] = entry
    best_simple = max((name for name in SIMPLE_FUSIONS if name in results), default=None,
                      key=lambda name: results[name].metrics["ndcg@10"])
    for name in NETWORKS:
        if best_simple and name in results:
            models[name]["vs_best_simple"] = {"model": best_simple} | paired(
                results[name], results[best_simple], samples)
    ladder = {}
    for better, worse in LADDER:
        if better in results and worse in results:
            ladder[f"{better}_vs_{worse}"] = paired(results[better], results[worse], samples)
    return {"ladder": ladder, "catalog": {"uri": summary["uri"],
                                          "fingerprint": catalog.fingerprint,
                        "products": summary["products"],
                        "products_with_image": summary["products_with_image"],
                        "queries": summary["queries"]},
            "config": config.to_dict(), "models": models}


def paired(better: EvaluationResult, worse: EvaluationResult, samples: int) -> dict:
    """Per reported metric, the paired bootstrap CI of ``better - worse`` over the same
    queries."""
    ids = sorted(better.per_query)
    return {m: paired_bootstrap_difference(better.values(m, ids), worse.values(m, ids),
                                           samples).as_dict() for m in REPORTED}


def format_table(report: dict) -> str:
    """Plain-text table: metric [95% CI] per model, and the gain over text_only."""
    header = f"{'model':<16}" + "".join(f"{m:>24}" for m in REPORTED) + \
        f"{'nDCG@10 vs text':>18}{'seed sd':>9}{'train s':>9}"
    lines = [header, "-" * len(header)]
    for name, entry in report["models"].items():
        cells = "".join(f"{entry[m]:>8.4f} [{entry['ci95'][m]['low']:.3f},"
                        f"{entry['ci95'][m]['high']:.3f}]" for m in REPORTED)
        delta = entry.get("vs_text_only", {}).get("ndcg@10")
        gain = f"{delta['mean']:+.4f}{'*' if delta['low'] > 0 else ' '}" if delta else "-"
        spread = entry.get("seeds", {}).get("ndcg@10")
        sd = f"{spread['std']:.4f}" if spread else "-"
        lines.append(f"{name:<16}{cells}{gain:>18}{sd:>9}{entry['train_seconds']:>9.0f}")
    split = report.get("split", "test")
    lines.append(f"scored on the {split} queries ({report['catalog']['queries'][split]}); "
                 "* paired bootstrap 95% CI of the difference excludes 0")
    if any("seeds" in entry for entry in report["models"].values()):
        lines.append("means over seeds; seed sd: standard deviation of nDCG@10 across seeds")
    return "\n".join(lines)


def run_learning_curves(catalogs: list[str], train_queries: list[int | None],
                        output: str | None = None, work_dir: str = "runs/benchmark",
                        **options) -> dict:
    """``run_benchmark`` for every catalog x number of train queries (None: all of them),
    each cell with its own work directory; the cells so far are written to ``output``
    after each one, so a long run that stops keeps what it finished. ``options`` go to
    ``run_benchmark`` (models, seeds, split, config_name, overrides, progress)."""
    cells = []
    for uri in catalogs:
        label = catalog_label(uri)
        for n in train_queries:
            log.info("learning curve: %s with %s train queries", label, n or "all")
            work = Path(work_dir) / label / f"q{n or 'all'}"
            report = run_benchmark(uri, None, work_dir=str(work), train_queries=n,
                                   print_table=False, **options)
            cells.append({"catalog": label, "requested": n or "all", "report": report})
            grid = {"split": report["split"], "seeds": report["seeds"], "cells": cells}
            if output:
                Path(output).write_text(json.dumps(grid, indent=2))
    print(format_grid(grid))
    return grid


def catalog_label(uri: str) -> str:
    """A catalog's short name in reports: its folder's name."""
    return Path(uri.rstrip("/")).name or uri


def format_grid(grid: dict) -> str:
    """Markdown: nDCG@10 per catalog x train queries x model, and the fusion network's
    paired difference to the best simple fusion of the same cell."""
    names = list(dict.fromkeys(name for cell in grid["cells"]
                               for name in cell["report"]["models"]))
    head = ["catalog", "train queries", *names, "fusion - best simple [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in grid["cells"]:
        models = cell["report"]["models"]
        scores = [f"{models[n]['ndcg@10']:.4f}" if n in models else "-" for n in names]
        versus = models.get("fusion", {}).get("vs_best_simple")
        gap = "-"
        if versus:
            d = versus["ndcg@10"]
            star = "*" if d["low"] > 0 or d["high"] < 0 else ""
            gap = (f"{d['mean']:+.4f} [{d['low']:+.3f}, {d['high']:+.3f}]{star} "
                   f"vs {versus['model']}")
        lines.append(f"| {cell['catalog']} | {cell['report']['train_queries']} | "
                     + " | ".join(scores) + f" | {gap} |")
    lines.append(f"\nnDCG@10 on {grid['split']}, mean of {grid['seeds']} seed(s); each seed "
                 "trains on its own sample of the train queries; * paired bootstrap 95% CI "
                 "over queries excludes 0.")
    return "\n".join(lines)
