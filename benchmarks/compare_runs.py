"""Paired comparison of trained runs: each NAME=RESULT pair is a training run's
``result.json`` (``TrainResult``); every run after the first is compared with the first on
the val and test queries they share (nDCG@10 by default), with a paired bootstrap 95% CI.

    python benchmarks/compare_runs.py base=runs/a/model/result.json new=runs/b/model/result.json
"""

from __future__ import annotations

import argparse
import logging

from fusion_model.evaluation.bootstrap import paired_bootstrap_difference
from fusion_model.training.trainer import TrainResult

log = logging.getLogger("compare_runs")


def named_result(text: str) -> tuple[str, TrainResult]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=path/to/result.json")
    return name, TrainResult.load(path)


def comparison_rows(runs: list[tuple[str, TrainResult]], metric: str) -> list[str]:
    """One markdown row per run: its val and test, and its difference from the first."""
    base_name, base = runs[0]
    lines = [f"| run | val {metric} | test {metric} | val - {base_name} [95% CI] | "
             f"test - {base_name} [95% CI] |", "|---|---|---|---|---|"]
    for name, run in runs:
        cells = [name]
        for split in ("val", "test"):
            cells.append(f"{getattr(run, split).metrics[metric]:.4f}")
        for split in ("val", "test"):
            mine, theirs = getattr(run, split), getattr(base, split)
            ids = sorted(set(mine.per_query) & set(theirs.per_query))
            if name == base_name or not ids:
                cells.append("")
                continue
            diff = paired_bootstrap_difference(mine.values(metric, ids),
                                               theirs.values(metric, ids))
            cells.append(f"{diff.mean:+.4f} [{diff.low:+.3f}, {diff.high:+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=named_result, help="NAME=result.json")
    parser.add_argument("--metric", default="ndcg@10")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("\n".join(comparison_rows(args.runs, args.metric)))


if __name__ == "__main__":
    main()
