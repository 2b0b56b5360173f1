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

from fusion_model import storage
from fusion_model.storage import workarea

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
    if storage.is_s3(str(runs_root)):
        return _prune_s3_runs(str(runs_root), current, keep, older_than_days, now)
    root = Path(runs_root)
    if not root.is_dir():
        return {"pruned": [], "freed_mb": 0.0, "kept": 0}
    runs = [RunDir.read(p) for p in root.iterdir() if p.is_dir()]
    old = _old_runs(runs, current, keep, older_than_days, now)
    freed = sum(_remove_bulky(run.path) for run in old)
    return _outcome(runs, old, freed, str(root))


def _old_runs(runs: list[RunDir], current: str | None, keep: int, older_than_days: float,
              now: float | None) -> list[RunDir]:
    newest_first = sorted(runs, key=lambda run: run.last_active, reverse=True)
    cutoff = (time.time() if now is None else now) - older_than_days * DAY
    return [run for run in newest_first[keep:]
            if run.last_active < cutoff and run.path.name != current]


def _outcome(runs: list[RunDir], old: list[RunDir], freed: int, root: str) -> dict:
    log.info("runs: %d kept, %d pruned (%.0f MB freed) under %s", len(runs) - len(old),
             len(old), freed / 2**20, root)
    return {"pruned": [run.path.name for run in old], "freed_mb": round(freed / 2**20, 1),
            "kept": len(runs) - len(old)}


def _prune_s3_runs(runs_root: str, current: str | None, keep: int, older_than_days: float,
                   now: float | None) -> dict:
    """``prune_runs`` for a work area in S3: runs are the prefixes under ``runs_root``,
    active as of their newest object; this worker's local mirror of a pruned run goes
    too."""
    bucket, root_key = storage.split_s3(runs_root.rstrip("/"))
    objects: dict[str, list[tuple[str, int, float]]] = {}
    for key, size, stamp in workarea.list_objects(runs_root):
        run = key[len(root_key):].lstrip("/").split("/", 1)[0]
        objects.setdefault(run, []).append((key, size, stamp))
    runs = [RunDir(Path(name), max(stamp for _, _, stamp in found))
            for name, found in objects.items()]
    old = _old_runs(runs, current, keep, older_than_days, now)
    doomed = [(key, size) for run in old for key, size, _ in objects[run.path.name]
              if any(key.startswith(f"{root_key}/{run.path.name}/{bulky}/")
                     for bulky in BULKY)]
    workarea.delete_objects(bucket, [key for key, _ in doomed])
    for run in old:
        _remove_bulky(workarea.local_path(storage.join(runs_root, run.path.name)))
    return _outcome(runs, old, sum(size for _, size in doomed), runs_root)


def _remove_bulky(run: Path) -> int:
    """Bytes removed from ``run``'s models and checkpoints."""
    freed = 0
    if not run.is_dir():
        return freed
    for relative in BULKY:
        folder = run / relative
        if folder.is_dir():
            freed += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder)
    return freed
