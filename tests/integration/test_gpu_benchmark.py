"""benchmarks/gpu.py keeps working where CI runs it: on the CPU, at small sizes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def test_the_device_benchmark_runs_on_the_cpu_and_prints_every_row(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--products", "60",
         "--ladder-products", "150", "--config", "tiny", "--device", "cpu",
         "--image-size", "64", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout[out.stdout.index("| cpu (tiny"):]
    for row in ("decode + resize", "host-to-device copy, pinned | n/a (CPU)",
                "image encoder alone", "image features into an empty cache",
                "catalog embedding from files", "stage 1 epoch", "stage 2 epoch",
                "7-model ladder, 150 products"):
        assert row in table, (row, table)
    embedding = next(line for line in table.splitlines() if "catalog embedding" in line)
    assert embedding.split("|")[-2].strip() in {"decode", "kernels", "Python"}
