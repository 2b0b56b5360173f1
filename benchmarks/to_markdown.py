"""Render a `fusion-model benchmark` results JSON as a markdown table; learning-curve grids
(`--train-queries`) as one catalog x train queries x model table, several files merged.

    python benchmarks/to_markdown.py results.json
    python benchmarks/to_markdown.py grid-ikea.json grid-flipkart.json
"""

from __future__ import annotations

import json
import sys

METRICS = ("recall@10", "recall@100", "ndcg@10", "mrr")


def seed_values(entry: dict) -> str:
    """Each seed's nDCG@10 and their sd, or "-" for a model run with one seed."""
    spread = entry.get("seeds", {}).get("ndcg@10")
    if not spread:
        return "-"
    return " ".join(f"{v:.4f}" for v in spread["values"]) + f" ({spread['std']:.4f})"


def table(report: dict) -> str:
    base = report["models"].get("text_only", {}).get("ndcg@10")
    seeded = any("seeds" in entry for entry in report["models"].values())
    extra = " nDCG@10 per seed (sd) |" if seeded else ""
    lines = ["| model | " + " | ".join(METRICS) + f" | nDCG@10 vs text_only |{extra} train s |",
             "|---" * (len(METRICS) + 3 + seeded) + "|"]
    for name, entry in report["models"].items():
        cells = [f"{entry[m]:.4f} [{entry['ci95'][m]['low']:.3f}, {entry['ci95'][m]['high']:.3f}]"
                 for m in METRICS]
        delta = entry.get("vs_text_only", {}).get("ndcg@10")
        gain = "-"
        if delta and base:
            star = "*" if delta["low"] > 0 else ""
            gain = f"{delta['mean']:+.4f}{star} ({delta['mean'] / base:+.1%})"
        per_seed = f"{seed_values(entry)} | " if seeded else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {gain} | {per_seed}"
                     f"{entry['train_seconds']:.0f} |")
    catalog = report["catalog"]
    split = report.get("split", "test")
    lines.append("")
    lines.append(f"Catalog: {catalog['products']:,} products ({catalog['products_with_image']:,} "
                 f"with photo), {split} queries {catalog['queries'][split]}; * = paired "
                 "bootstrap 95% CI of the gain excludes 0.")
    for step, values in report.get("ladder", {}).items():
        d = values["ndcg@10"]
        lines.append(f"- {step}: nDCG@10 {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
                     f"{' (significant)' if d['low'] > 0 else ''}")
    return "\n".join(lines)


def grid_table(grids: list[dict]) -> str:
    """One table over the cells of several grids (each run with the same seeds)."""
    from fusion_model.benchmark import format_grid

    seeds = {g["seeds"] for g in grids}
    return format_grid({"split": grids[0]["split"], "seeds": "/".join(map(str, sorted(seeds))),
                        "cells": [cell for g in grids for cell in g["cells"]]})


if __name__ == "__main__":
    reports = []
    for path in sys.argv[1:]:
        with open(path) as handle:
            reports.append(json.load(handle))
    if any("cells" in r for r in reports):
        print(grid_table([r for r in reports if "cells" in r]))
    else:
        print("\n\n".join(table(r) for r in reports))
