"""The work area of a pipeline: a local folder or an ``s3://bucket/prefix`` shared by tasks
that run on different hosts, each with its own local disk.

Trainers, PyTorch, numpy memory maps and Great Expectations need local files, so a task
works in a local mirror of the part of the work area it needs: ``pull`` brings that part
down (skipping files it already holds), the task writes locally, and ``staged`` uploads
what the task wrote when it succeeds. For a local work area the mirror is the folder
itself and nothing is copied: one host, or a volume every worker mounts, works as before.

The mirror of ``s3://bucket/key`` is ``<scratch>/s3/bucket/key``; the scratch folder is
``$FUSION_SCRATCH_DIR`` (default ``~/.cache/fusion-model/scratch``), one per worker disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fusion_model.errors import StorageError
from fusion_model.storage.core import is_s3, parallel_map, s3_client, split_s3

log = logging.getLogger(__name__)

SCRATCH_ENV = "FUSION_SCRATCH_DIR"
FileState = dict[Path, tuple[int, int]]


def scratch_root() -> Path:
    """Where this worker mirrors remote work areas (``$FUSION_SCRATCH_DIR``)."""
    return Path(os.environ.get(SCRATCH_ENV) or "~/.cache/fusion-model/scratch").expanduser()


def local_path(uri: str) -> Path:
    """The local file or folder that stands for ``uri`` (the path itself when local)."""
    if not is_s3(uri):
        return Path(uri)
    bucket, key = split_s3(uri.rstrip("/"))
    return scratch_root() / "s3" / bucket / key


def pull(uri: str, local: Path | None = None) -> Path:
    """The local copy of the folder or file at ``uri``: for S3, every object under it is
    downloaded into the mirror unless the mirror holds it already (same size and time).
    A folder with nothing in it yet gives an empty local folder. ``local``: another local
    folder to hold the copy (a worker's feature cache) instead of the mirror."""
    local = local or local_path(uri)
    if not is_s3(uri):
        return local
    objects = list_objects(uri)
    if not objects:
        local.mkdir(parents=True, exist_ok=True)
        return local
    bucket, _ = split_s3(uri)
    jobs = [(bucket, key, stamp, _mirror_of(uri, local, key)) for key, size, stamp in objects
            if not _is_current(_mirror_of(uri, local, key), size, stamp)]
    parallel_map(_download, jobs)
    log.info("pulled %s -> %s (%d of %d objects downloaded)", uri, local, len(jobs),
             len(objects))
    return local


def push(uri: str, before: FileState | None = None, local: Path | None = None) -> int:
    """Upload the files under the local copy of ``uri`` that are new or changed since
    ``before`` (a ``file_state``; all files when None); returns how many."""
    if not is_s3(uri):
        return 0
    local = local or local_path(uri)
    now = file_state(local)
    changed = [path for path, stamp in now.items() if (before or {}).get(path) != stamp]
    bucket, key = split_s3(uri.rstrip("/"))

    def upload(path: Path) -> None:
        target = key if path == local else f"{key}/{path.relative_to(local).as_posix()}"
        try:
            client = s3_client()
            client.upload_file(str(path), bucket, target)
            stamp = client.head_object(Bucket=bucket, Key=target)["LastModified"].timestamp()
        except Exception as exc:  # noqa: BLE001 - boto3 raises several families
            raise StorageError(f"{path}: cannot upload to s3://{bucket}/{target} "
                               f"({exc})") from exc
        os.utime(path, (stamp, stamp))  # a later pull here sees it as current

    parallel_map(upload, changed)
    if changed:
        log.info("pushed %d file(s) %s -> %s", len(changed), local, uri)
    return len(changed)


@contextmanager
def staged(uri: str, pull_first: bool = True, local: Path | None = None) -> Iterator[Path]:
    """A local folder for the work at ``uri``: pulled first (unless ``pull_first`` is
    False), and what the block wrote uploaded when it ends, also when it fails (a failed
    validation's report, the checkpoints a retry on another host resumes from)."""
    local = pull(uri, local) if pull_first else (local or local_path(uri))
    local.mkdir(parents=True, exist_ok=True)
    before = file_state(local)
    try:
        yield local
    except BaseException:
        try:
            push(uri, before, local)
        except StorageError as exc:  # the block's own error is the one to report
            log.warning("could not upload the work left in %s: %s", local, exc)
        raise
    push(uri, before, local)


def file_state(local: Path) -> FileState:
    """(size, mtime_ns) of every file under ``local`` (or of ``local`` itself)."""
    if local.is_file():
        stat = local.stat()
        return {local: (stat.st_size, stat.st_mtime_ns)}
    if not local.is_dir():
        return {}
    return {path: (path.stat().st_size, path.stat().st_mtime_ns)
            for path in local.rglob("*") if path.is_file()}


def list_objects(uri: str) -> list[tuple[str, int, float]]:
    """(key, size, modified epoch) of the object ``uri`` or of every object under it."""
    bucket, key = split_s3(uri.rstrip("/"))
    found = []
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                name = obj["Key"]
                if name == key or name.startswith(key + "/") or not key:
                    found.append((name, obj["Size"], obj["LastModified"].timestamp()))
    except Exception as exc:  # noqa: BLE001 - botocore's errors, network errors
        raise StorageError(f"{uri}: cannot list objects ({exc})") from exc
    return found


def delete_objects(bucket: str, keys: list[str]) -> None:
    """Delete ``keys`` from ``bucket``, 1,000 per request (the S3 limit)."""
    for start in range(0, len(keys), 1000):
        chunk = [{"Key": key} for key in keys[start:start + 1000]]
        try:
            s3_client().delete_objects(Bucket=bucket, Delete={"Objects": chunk,
                                                              "Quiet": True})
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"s3://{bucket}: cannot delete {len(chunk)} objects "
                               f"({exc})") from exc


def _mirror_of(uri: str, local: Path, key: str) -> Path:
    _, root = split_s3(uri.rstrip("/"))
    return local if key == root else local / key[len(root):].lstrip("/")


def _is_current(target: Path, size: int, stamp: float) -> bool:
    """The mirror holds this object already: same size, same modification second."""
    return target.is_file() and target.stat().st_size == size \
        and int(target.stat().st_mtime) == int(stamp)


def _download(job: tuple[str, str, float, Path]) -> None:
    bucket, key, stamp, target = job
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        s3_client().download_file(bucket, key, str(partial))
    except Exception as exc:  # noqa: BLE001
        partial.unlink(missing_ok=True)
        raise StorageError(f"s3://{bucket}/{key}: cannot download ({exc})") from exc
    os.utime(partial, (stamp, stamp))
    partial.replace(target)
