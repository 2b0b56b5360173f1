"""Stage-2 ablations: product-tower variants trained from ONE shared stage 1, side by side.

    python benchmarks/ablation.py --catalog CATALOG_DIR --stage1-from RUN/model \
        --work-dir runs/ablation --seeds 2 \
        --variant "weighted_sum=model.fusion=weighted_sum" \
        --variant "fusion=model.fusion=fusion" \
        --variant "fusion_colour=model.fusion=fusion image.colour_tokens=true"

Every variant starts its stage 2 from the same stage-1 model (``fusion-model benchmark``
writes one to ``<work-dir>/text_only/model``), so rows differ only in what the overrides
change. The table gives val nDCG@10 (what to select on) and test nDCG@10 with its 95% CI,
means over seeds, and the paired bootstrap CI over test queries of each variant's
difference to the first one.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fusion_model.benchmark import average_results
from fusion_model.config import load_config
from fusion_model.data.catalog import load_catalog
from fusion_model.evaluation.bootstrap import paired_bootstrap_difference
from fusion_model.training.trainer import RESULT_FILE, TrainResult, train

log = logging.getLogger("ablation")
METRIC = "ndcg@10"


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    if not name or not overrides:
        raise SystemExit(f"--variant {text!r}: expected NAME=key=value [key=value ...]")
    return name, overrides.split()


def run(args: argparse.Namespace) -> dict:
    catalog = load_catalog(args.catalog)
    variants = [parse_variant(v) for v in args.variant]
    rows = {}
    for name, overrides in variants:
        tests, vals = [], []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            config = load_config(args.config, [*args.overrides, *overrides,
                                               f"train.seed={seed}"])
            work = Path(args.work_dir) / name / f"seed{seed}"
            finished = work / RESULT_FILE
            sample = catalog.with_train_queries(args.train_queries, seed)
            result = TrainResult.load(finished) if args.reuse and finished.is_file() else \
                train(sample, config, work, progress=False,
                      stage1_from=args.stage1_from.format(seed=seed))
            tests.append(result.test)
            vals.append(result.val.metrics[METRIC])
            log.info("%s seed %d: val %.4f test %.4f", name, seed, vals[-1],
                     result.test.metrics[METRIC])
        rows[name] = {"test": average_results(tests), "val": vals,
                      "test_seeds": [t.metrics[METRIC] for t in tests]}
    return rows


def table(rows: dict, samples: int = 1000) -> str:
    names = list(rows)
    first = rows[names[0]]["test"]
    ids = sorted(first.per_query)
    lines = [f"{'variant':<28}{'val':>8}{'test':>8}{'test 95% CI':>18}"
             f"{'vs ' + names[0]:>34}{'test per seed':>24}", "-" * 120]
    for name in names:
        test = rows[name]["test"]
        ci = test.ci95(METRIC, samples)
        diff = paired_bootstrap_difference(test.values(METRIC, ids), first.values(METRIC, ids),
                                           samples)
        mark = "*" if diff.low > 0 or diff.high < 0 else " "
        seeds = " ".join(f"{v:.4f}" for v in rows[name]["test_seeds"])
        val = sum(rows[name]["val"]) / len(rows[name]["val"])
        lines.append(f"{name:<28}{val:>8.4f}{test.metrics[METRIC]:>8.4f}"
                     f"  [{ci['low']:.3f}, {ci['high']:.3f}]"
                     f"{diff.mean:>+14.4f} [{diff.low:+.4f}, {diff.high:+.4f}]{mark}"
                     f"{seeds:>24}")
    lines.append(f"{METRIC}; means over seeds; * paired 95% CI over test queries excludes 0")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--stage1-from", required=True,
                        help="a stage-1 model directory; {seed} in it is replaced by each "
                        "seed, to pair every seed with that seed's own stage 1")
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME=key=value [key=value ...]; the first is the reference")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed + seeds - 1 (to run seeds apart)")
    parser.add_argument("--train-queries", type=int, default=None,
                        help="train each seed on its own sample of N train queries, the same "
                        "sample `fusion-model benchmark --train-queries N` draws for that seed "
                        "(pair with that run's stage 1 through --stage1-from)")
    parser.add_argument("--config", default="default")
    parser.add_argument("--work-dir", default="runs/ablation")
    parser.add_argument("--output", help="JSON file for the per-variant numbers")
    parser.add_argument("--reuse", action="store_true",
                        help="take a variant's finished run from the work dir (same command "
                        "rerun after a stop, or to rebuild the table)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="applied to every variant")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows = run(args)
    print(table(rows))
    if args.output:
        Path(args.output).write_text(json.dumps(
            {name: {"val": r["val"], "test_seeds": r["test_seeds"],
                    "test": r["test"].metrics} for name, r in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
