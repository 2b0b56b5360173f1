"""benchmarks/loco.py: a fold chooses on the other catalogs' val, never on its own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def write(path, rows: dict[str, tuple[list[float], float]]) -> str:
    path.write_text(json.dumps({v: {"val": val, "test": {"ndcg@10": test}}
                                for v, (val, test) in rows.items()}))
    return str(path)


def test_each_fold_chooses_on_the_other_catalogs_and_reports_the_held_out_test(tmp_path):
    # "a" is the best candidate on catalogs x and y; on z only "b" looks best, so z's own
    # val would pick "b": the fold holding z out must still pick "a"
    x = write(tmp_path / "x.json", {"a": ([0.8, 0.8], 0.70), "b": ([0.6], 0.75),
                                    "ws": ([0.7], 0.72), "late": ([0.7], 0.71)})
    y = write(tmp_path / "y.json", {"a": ([0.9], 0.80), "b": ([0.7], 0.60),
                                    "ws": ([0.8], 0.79), "late": ([0.8], 0.78)})
    z = write(tmp_path / "z.json", {"a": ([0.5], 0.50), "b": ([0.9], 0.65),
                                    "ws": ([0.6], 0.55), "late": ([0.6], 0.58)})
    out = tmp_path / "folds.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "loco.py"), "--results",
                    f"x={x}", "--results", f"y={y}", "--results", f"z={z}", "--candidates",
                    "a,b", "--simple", "ws,late", "--output", str(out)], check=True,
                   capture_output=True, cwd=REPO)
    folds = {f["held_out"]: f for f in json.loads(out.read_text())}
    assert folds["z"]["chosen"] == "a" and folds["z"]["chosen_on"] == ["x", "y"]
    assert folds["z"]["best_simple"] == "late"
    assert abs(folds["z"]["gap"] - (0.50 - 0.58)) < 1e-9
    assert folds["x"]["chosen"] == "b"  # on y and z, b's mean val 0.8 beats a's 0.7
    assert abs(folds["x"]["test"] - 0.75) < 1e-9


def grid(path, models: dict[str, tuple[float, float]]) -> str:
    """A learning-curve grid as ``fusion-model benchmark --output`` writes it: the loco
    reads the cell with all train queries, and only trained heads (with a val score)."""
    def report(shift: float) -> dict:
        rows = {m: {"ndcg@10": test + shift, "val": {"ndcg@10": val + shift}}
                for m, (val, test) in models.items()}
        return {"seeds": 3, "models": rows | {"zero_shot_text": {"ndcg@10": 0.3}}}
    path.write_text(json.dumps({"cells": [
        {"catalog": "c", "requested": 300, "report": report(-0.2)},
        {"catalog": "c", "requested": "all", "report": report(0.0)}]}))
    return str(path)


def test_benchmark_grids_and_ablations_of_one_catalog_merge(tmp_path):
    from benchmarks.loco import load

    report = grid(tmp_path / "grid.json", {"fusion": (0.9, 0.8), "weighted_sum": (0.7, 0.75)})
    extra = write(tmp_path / "extra.json", {"fusion": ([0.6, 0.8], 0.7)})
    catalogs = load([f"c={report}", f"c={extra}"], {"fusion": "fusion_gated"})
    assert catalogs["c"]["fusion_gated"] == {"val": 0.9, "test": 0.8, "seeds": 3}
    assert catalogs["c"]["fusion"] == {"val": 0.7, "test": 0.7, "seeds": 2}
    assert catalogs["c"]["weighted_sum"]["test"] == 0.75
    assert "zero_shot_text" not in catalogs["c"]


def test_to_markdown_merges_grids_and_marks_significant_gaps(tmp_path):
    def cell(catalog: str, low: float) -> dict:
        versus = {"model": "weighted_sum", "ndcg@10": {"mean": 0.02, "low": low, "high": 0.04}}
        return {"catalog": catalog, "requested": "all", "report": {
            "train_queries": 100, "models": {"weighted_sum": {"ndcg@10": 0.70},
                                             "fusion": {"ndcg@10": 0.72,
                                                        "vs_best_simple": versus}}}}
    paths = []
    for name, low in (("a", 0.001), ("b", -0.001)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"split": "test", "seeds": 3, "cells": [cell(name, low)]}))
        paths.append(str(path))
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "to_markdown.py"), *paths],
                         check=True, capture_output=True, text=True, cwd=REPO).stdout
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines()
            if line.startswith(("| a", "| b"))}
    assert "+0.001, +0.040]*" in rows["a"] and "-0.001, +0.040] vs" in rows["b"]
    assert "mean of 3 seed(s)" in out


def test_a_grid_without_an_all_queries_cell_is_refused_by_name(tmp_path):
    from benchmarks.loco import load

    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"cells": [{"catalog": "c", "requested": 300, "report": {
        "models": {"fusion": {"ndcg@10": 0.8, "val": {"ndcg@10": 0.9}}}}}]}))
    with pytest.raises(SystemExit, match="exactly one cell with all train queries"):
        load([f"c={path}"])
