"""benchmarks/loco.py: a fold chooses on the other catalogs' val, never on its own."""

from __future__ import annotations

import json
import subprocess
import sys

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
