"""Paired comparison of trained runs: each NAME=RESULT pair is a training run's
``result.json`` (``TrainResult``), or several separated by commas (one per seed: their
per-query means are compared); every run after the first is compared with the first on
the val and test queries they all share (nDCG@10 by default), with a paired bootstrap 95%
CI over those queries.

    python benchmarks/compare_runs.py base=runs/a/model/result.json new=runs/b/model/result.json
    python benchmarks/compare_runs.py base=a0/result.json,a1/result.json new=b0/r.json,b1/r.json
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from fusion_model.evaluation.bootstrap import paired_bootstrap_difference
from fusion_model.training.trainer import TrainResult

log = logging.getLogger("compare_runs")


def named_result(text: str) -> tuple[str, list[TrainResult]]:
    name, sep, paths = text.partition("=")
    if not sep or not name or not paths:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=path/to/result.json[,...]")
    return name, [TrainResult.load(path) for path in paths.split(",")]


def shared_queries(runs: list[TrainResult], other: list[TrainResult], split: str) -> list[str]:
    """The ``split`` queries every run of both lists scored."""
    sets = [set(getattr(run, split).per_query) for run in [*runs, *other]]
    return sorted(set.intersection(*sets))


def seed_mean(runs: list[TrainResult], split: str, metric: str, ids: list[str]) -> np.ndarray:
    """Per query of ``ids``, ``metric`` averaged over the runs (seeds)."""
    return np.mean([getattr(run, split).values(metric, ids) for run in runs], axis=0)


def comparison_rows(runs: list[tuple[str, list[TrainResult]]], metric: str) -> list[str]:
    """One markdown row per run: its val and test (seed means), and its difference from
    the first."""
    base_name, base = runs[0]
    lines = [f"| run | seeds | val {metric} | test {metric} | val - {base_name} [95% CI] | "
             f"test - {base_name} [95% CI] |", "|---|---|---|---|---|---|"]
    for name, seeds in runs:
        cells = [name, str(len(seeds))]
        for split in ("val", "test"):
            cells.append(f"{np.mean([getattr(r, split).metrics[metric] for r in seeds]):.4f}")
        for split in ("val", "test"):
            ids = shared_queries(seeds, base, split)
            if name == base_name or not ids:
                cells.append("")
                continue
            diff = paired_bootstrap_difference(seed_mean(seeds, split, metric, ids),
                                               seed_mean(base, split, metric, ids))
            cells.append(f"{diff.mean:+.4f} [{diff.low:+.3f}, {diff.high:+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=named_result,
                        help="NAME=result.json, or NAME=seed0.json,seed1.json,...")
    parser.add_argument("--metric", default="ndcg@10")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("\n".join(comparison_rows(args.runs, args.metric)))


if __name__ == "__main__":
    main()
