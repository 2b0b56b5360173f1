"""Leave one catalog out: choose one default recipe on the other catalogs' val, report it on
the held-out catalog's test.

    python benchmarks/loco.py --results myntra_s05=myntra.json --results ikea=ikea.json \
        --results flipkart=flipkart.json --candidates fusion,fusion_gated,fusion_mix \
        --simple weighted_sum,late_fusion

Each ``--results`` file is what ``benchmarks/ablation.py --output`` writes for one catalog
(per variant: every seed's val nDCG@10 and the test metrics, means over seeds), or a
``fusion-model benchmark --output`` report, a learning-curve grid included (its cell with
every train query; ``--rename fusion=fusion_gated`` names a head by the overrides it ran
with). Several files for one catalog are merged. For each
fold the candidate with the highest val nDCG@10, averaged over the catalogs it may see, is
chosen; the table gives its test nDCG@10 on the held-out catalog beside the best simple
fusion there (the simple mix with the highest test mean: the bar the issue sets) and every
candidate's, so a reader sees what another choice would have given.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

METRIC = "ndcg@10"


def load(specs: list[str], rename: dict[str, str] | None = None) -> dict[str, dict]:
    """{catalog: {variant: {"val": mean val, "test": mean test, "seeds": n}}} from NAME=FILE
    specs; files named for the same catalog are merged."""
    catalogs: dict[str, dict] = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        data = json.loads(Path(path).read_text())
        rows = _from_report(data, rename or {}) if "cells" in data or "models" in data else {
            variant: {"val": statistics.mean(row["val"]), "test": row["test"][METRIC],
                      "seeds": len(row["val"])} for variant, row in data.items()}
        catalogs.setdefault(name, {}).update(rows)
    return catalogs


def _from_report(data: dict, rename: dict[str, str]) -> dict[str, dict]:
    """The trained heads of a benchmark report (a grid: its cell with all train queries)."""
    if "cells" in data:
        cells = [c["report"] for c in data["cells"] if c["requested"] == "all"]
        if len(cells) != 1:
            raise SystemExit("a grid for loco.py needs exactly one cell with all train queries")
        data = cells[0]
    return {rename.get(model, model): {"val": row["val"][METRIC], "test": row[METRIC],
                                       "seeds": data.get("seeds", 1)}
            for model, row in data["models"].items() if "val" in row}


def folds(catalogs: dict[str, dict], candidates: list[str], simple: list[str]) -> list[dict]:
    """One row per held-out catalog: the candidate chosen on the others' val, its test and
    the best simple fusion's test there."""
    rows = []
    for held_out in catalogs:
        seen = [c for c in catalogs if c != held_out]
        chosen = max(candidates, key=lambda v: statistics.mean(
            catalogs[c][v]["val"] for c in seen))
        here = catalogs[held_out]
        best_simple = max(simple, key=lambda v: here[v]["test"])
        rows.append({"held_out": held_out, "chosen_on": seen, "chosen": chosen,
                     "test": here[chosen]["test"], "best_simple": best_simple,
                     "best_simple_test": here[best_simple]["test"],
                     "gap": here[chosen]["test"] - here[best_simple]["test"],
                     "candidates": {v: here[v]["test"] for v in candidates},
                     "seeds": here[chosen]["seeds"]})
    return rows


def table(rows: list[dict], candidates: list[str]) -> str:
    head = ["held out", "chosen on val of", "chosen", "test", "best simple (test)",
            "chosen - best simple", *(f"{c} test" for c in candidates), "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["held_out"], ", ".join(r["chosen_on"]), r["chosen"], f"{r['test']:.4f}",
                 f"{r['best_simple']} {r['best_simple_test']:.4f}", f"{r['gap']:+.4f}",
                 *(f"{r['candidates'][c]:.4f}" for c in candidates), str(r["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", action="append", required=True, metavar="NAME=FILE")
    parser.add_argument("--candidates", required=True, help="comma-separated variants")
    parser.add_argument("--simple", default="weighted_sum,late_fusion")
    parser.add_argument("--rename", action="append", default=[], metavar="HEAD=VARIANT",
                        help="in benchmark reports, call HEAD this variant")
    parser.add_argument("--output", help="write the folds as JSON here too")
    args = parser.parse_args()
    candidates, simple = args.candidates.split(","), args.simple.split(",")
    rename = dict(pair.split("=", 1) for pair in args.rename)
    rows = folds(load(args.results, rename), candidates, simple)
    print(table(rows, candidates))
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
