"""One report from seeds that ran as separate ``fusion-model benchmark`` processes.

Each ``--run`` is one seed's work directory, the folder holding ``<model>/result.json``
(``--seeds 1 train.seed=S --work-dir W`` leaves it at ``W``, or ``W/<catalog>/q<N>``
with ``--train-queries``; ``--seeds K`` at ``W/seed<S>``). The report is what one
``--seeds`` run over those seeds writes (means over seeds, spread, CIs over queries of
the seed means, fusion against the best simple fusion), as a one-cell grid that
``benchmarks/to_markdown.py`` renders:

    python benchmarks/merge_seeds.py --catalog myntra_s05 --requested all \\
        --run grid/myntra_s05/qall/seed0 --run grid/myntra_s05/qall/seed1 \\
        --run seed2/myntra_s05/qall --models text_only,weighted_sum,late_fusion,fusion \\
        --output grid-myntra_s05-all.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusion_model.benchmark import (  # noqa: E402
    catalog_label,
    format_grid,
    saved_run,
    seeds_report,
)
from fusion_model.checks import load_checked_config  # noqa: E402
from fusion_model.data.catalog import load_catalog  # noqa: E402

log = logging.getLogger("merge_seeds")


def merged_grid(catalog_uri: str, runs: list[str], models: tuple[str, ...],
                requested: str = "all", config_name: str = "default",
                split: str = "test") -> dict:
    """The one-cell grid of ``runs`` (one work directory per seed)."""
    catalog = load_catalog(catalog_uri)
    base = load_checked_config(config_name, []).for_catalog(catalog.max_grade)
    train_queries = None if requested == "all" else int(requested)
    report = seeds_report(catalog, base, models, [saved_run(Path(r), models, split)
                                                  for r in runs], split, train_queries)
    cell = {"catalog": catalog_label(catalog_uri),
            "requested": requested if requested == "all" else int(requested),
            "report": report}
    return {"split": split, "seeds": len(runs), "cells": [cell]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--run", action="append", required=True, help="one seed's work dir")
    parser.add_argument("--models", required=True, help="comma-separated models")
    parser.add_argument("--requested", default="all", help="train queries: all or N")
    parser.add_argument("--config", default="default")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--output", help="grid JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    grid = merged_grid(args.catalog, args.run, tuple(args.models.split(",")), args.requested,
                       args.config, args.split)
    print(format_grid(grid), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(grid, indent=2))


if __name__ == "__main__":
    main()
