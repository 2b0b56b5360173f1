"""Score mix of two trained product heads of one catalog: (1 - w) * s_a + w * s_b, the
weight w chosen on val from a grid, reported on test with paired bootstrap CIs against
each head alone. A mix of two inner-product models is itself one: the query vector
[sqrt(1 - w) q_a; sqrt(w) q_b] against the product vector [sqrt(1 - w) p_a; sqrt(w) p_b].

    python benchmarks/mix_heads.py --catalog myntra_s10 \
        --a runs/seed0/fusion/model --b runs/seed0/late_fusion/model [--output mix.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusion_model.data.catalog import Catalog, load_catalog  # noqa: E402
from fusion_model.evaluation.bootstrap import paired_bootstrap_difference  # noqa: E402
from fusion_model.evaluation.evaluator import EvaluationResult, Evaluator  # noqa: E402

log = logging.getLogger("mix_heads")
SPLITS = ("val", "test")
Vectors = tuple[torch.Tensor, torch.Tensor, Evaluator]


def head_vectors(model_dir: str, catalog: Catalog, cache_dir: str) -> dict[str, Vectors]:
    """Per split: the saved model's query vectors, every product's vector, the evaluator."""
    from fusion_model.inference import embed_catalog, split_queries
    from fusion_model.models.towers import load_model

    model = load_model(model_dir)
    products = embed_catalog(model, catalog, cache_dir, progress=False).float()
    found = {}
    for split in SPLITS:
        queries, evaluator = split_queries(model, catalog, split)
        found[split] = (queries.float(), products, evaluator)
    return found


def mixed(a: Vectors, b: Vectors, weight: float) -> EvaluationResult:
    """Exact search with the score (1 - weight) * s_a + weight * s_b."""
    (qa, pa, evaluator), (qb, pb, _) = a, b
    keep, add = (1 - weight) ** 0.5, weight ** 0.5
    return evaluator.score_vectors(torch.cat([qa * keep, qb * add], 1),
                                   torch.cat([pa * keep, pb * add], 1))


def mix_report(a: dict[str, Vectors], b: dict[str, Vectors], steps: int = 20) -> dict:
    """The val curve over the weight grid, the chosen weight, and test against each head."""
    grid = [i / steps for i in range(steps + 1)]
    val = {w: mixed(a["val"], b["val"], w).metrics["ndcg@10"] for w in grid}
    chosen = max(grid, key=lambda w: (val[w], -w))   # ties: the most of head a
    test = {w: mixed(a["test"], b["test"], w) for w in {0.0, chosen, 1.0}}
    ids = sorted(test[0.0].per_query)
    against = {}
    for name, alone in (("a", 0.0), ("b", 1.0)):
        diff = paired_bootstrap_difference(test[chosen].values("ndcg@10", ids),
                                           test[alone].values("ndcg@10", ids))
        against[name] = {"mean": diff.mean, "low": diff.low, "high": diff.high}
    return {"val": val, "weight": chosen,
            "test": {str(w): r.metrics["ndcg@10"] for w, r in test.items()},
            "test_per_query": {str(w): r.per_query for w, r in test.items()},
            "mix_minus": against}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--a", required=True, help="saved model dir of the first head")
    parser.add_argument("--b", required=True, help="saved model dir of the second head")
    parser.add_argument("--cache-dir", default="~/.cache/fusion-model/features")
    parser.add_argument("--output", help="JSON file for the report")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    catalog = load_catalog(args.catalog)
    report = mix_report(head_vectors(args.a, catalog, args.cache_dir),
                        head_vectors(args.b, catalog, args.cache_dir))
    w, test, val = report["weight"], report["test"], report["val"]
    lines = ["| | weight of b | val nDCG@10 | test nDCG@10 | mix - this head, test [95% CI] |",
             "|---|---|---|---|---|"]
    for name, alone in (("a", 0.0), ("b", 1.0)):
        d = report["mix_minus"][name]
        lines.append(f"| {name} alone | {alone} | {val[alone]:.4f} | {test[str(alone)]:.4f} | "
                     f"{d['mean']:+.4f} [{d['low']:+.3f}, {d['high']:+.3f}] |")
    lines.append(f"| mix (chosen on val) | {w} | {val[w]:.4f} | {test[str(w)]:.4f} | |")
    log.info("val by weight of b: %s", {k: round(v, 4) for k, v in val.items()})
    print("\n".join(lines), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
