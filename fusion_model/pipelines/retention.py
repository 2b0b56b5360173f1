"""Disk retention for training runs.

Every training run writes its stage-1 and stage-2 models and checkpoints under
``<work dir>/runs/<run id>`` (about 440 MB with the packaged encoders). Once a run has
ended they are dead weight: its candidate is registered in MLflow (which holds its own
copy) and nothing resumes it. A scheduled or asset-triggered DAG would otherwise fill the
disk run by run. Pruning removes those bulky folders from old runs and keeps each run's
``result.json`` and validation report for audit.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BULKY = ("stage1/checkpoints", "stage1/model", "stage2/checkpoints", "stage2/model")
DAY = 86400.0


@dataclass(frozen=True)
class RunDir:
    path: Path
    last_active: float  # newest modification time of a file inside, epoch seconds

    @classmethod
    def read(cls, path: Path) -> RunDir:
        """Files only: pruning changes its folders' times, not the files it keeps."""
        times = [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
        return cls(path, max(times, default=path.stat().st_mtime))


def prune_runs(runs_root: str | Path, current: str | None = None, keep: int = 5,
               older_than_days: float = 7.0, now: float | None = None) -> dict:
    """Remove the checkpoints and model copies of old runs under ``runs_root``.

    Spared: ``current``, the ``keep`` most recently active runs, and every run active
    within ``older_than_days`` (so a run still training is never touched). Returns the
    pruned run names and the megabytes freed."""
    if keep < 0 or older_than_days < 0:
        raise ValueError(f"keep ({keep}) and older_than_days ({older_than_days}) must not "
                         "be negative")
    root = Path(runs_root)
    if not root.is_dir():
        return {"pruned": [], "freed_mb": 0.0, "kept": 0}
    runs = sorted((RunDir.read(p) for p in root.iterdir() if p.is_dir()),
                  key=lambda run: run.last_active, reverse=True)
    cutoff = (time.time() if now is None else now) - older_than_days * DAY
    old = [run for run in runs[keep:]
           if run.last_active < cutoff and run.path.name != current]
    freed = sum(_remove_bulky(run.path) for run in old)
    pruned = [run.path.name for run in old]
    log.info("runs: %d kept, %d pruned (%.0f MB freed) under %s", len(runs) - len(old),
             len(old), freed / 2**20, root)
    return {"pruned": pruned, "freed_mb": round(freed / 2**20, 1),
            "kept": len(runs) - len(old)}


def _remove_bulky(run: Path) -> int:
    """Bytes removed from ``run``'s models and checkpoints."""
    freed = 0
    for relative in BULKY:
        folder = run / relative
        if folder.is_dir():
            freed += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder)
    return freed
