"""Milvus bulk import: full builds written as column files the server reads itself.

A batch of rows becomes one ``.npy`` file per field (Milvus's column-based import format)
under ``index.import_uri``, the server imports them as one job into sealed segments, and
the files are deleted once the rows are visible. ``import_uri`` is where the server can
read: a folder on the server's own disk for a Milvus with local storage (the paths are
passed as they are), or ``s3://<the bucket Milvus stores in>/<prefix>`` for one on
MinIO/S3 (the keys are passed, relative to that bucket).
"""

from __future__ import annotations

import io
import logging
import shutil
import time
import uuid

import numpy as np

from fusion_model import storage
from fusion_model.errors import VectorIndexError
from fusion_model.storage import workarea

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
DONE, FAILED = "Completed", "Failed"


class BulkImportError(VectorIndexError):
    """The Milvus server refused or failed a bulk import."""


def stage_columns(import_uri: str, collection: str, columns: dict[str, np.ndarray]
                  ) -> tuple[str, list[str]]:
    """Write each column as ``<import_uri>/<collection>/<batch>/<field>.npy``; returns the
    batch folder and the file names as the server must be given them."""
    batch = storage.join(import_uri, collection, uuid.uuid4().hex)
    files = []
    for field, column in columns.items():
        uri = storage.join(batch, f"{field}.npy")
        buffer = io.BytesIO()
        np.save(buffer, column, allow_pickle=False)
        storage.write_bytes(uri, buffer.getvalue())
        files.append(storage.split_s3(uri)[1] if storage.is_s3(uri) else uri)
    return batch, files


def text_column(values: list[str]) -> np.ndarray:
    """A VARCHAR column: numpy unicode (the import format has no object arrays)."""
    return np.array(values, dtype=str) if values else np.array([], dtype="<U1")


def refused(collection: str, what: str, exc: Exception) -> BulkImportError:
    return BulkImportError(f"{collection}: the server refused {what} ({exc}); Milvus Lite "
                           "has no bulk import: leave index.import_uri empty there")


def running_imports(handler, collection: str) -> list:
    """Import jobs on ``collection`` that have not ended."""
    try:
        tasks = handler.list_bulk_insert_tasks(0, collection)
    except Exception as exc:  # noqa: BLE001
        raise refused(collection, "to list its import jobs", exc) from exc
    return [task for task in tasks if task.state_name not in (DONE, FAILED)]


def run_import(handler, collection: str, files: list[str], timeout: float) -> int:
    """Submit one import job and wait for it; returns its row count."""
    try:
        task = handler.do_bulk_insert(collection, "", files)
    except Exception as exc:  # noqa: BLE001 - pymilvus raises MilvusException and grpc errors
        raise refused(collection, f"a bulk import of {files[0]} ...", exc) from exc
    deadline = time.monotonic() + timeout
    while True:
        state = handler.get_bulk_insert_state(task)
        if state.state_name == DONE:
            return int(state.row_count)
        if state.state_name == FAILED:
            raise BulkImportError(f"{collection}: bulk import task {task} failed: "
                                  f"{state.failed_reason}")
        if time.monotonic() > deadline:
            raise BulkImportError(f"{collection}: bulk import task {task} still "
                                  f"{state.state_name} after {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def remove_batch(batch: str) -> None:
    """Delete a staged batch (its rows are in the collection now)."""
    if storage.is_s3(batch):
        bucket, _ = storage.split_s3(batch)
        workarea.delete_objects(bucket, [storage.split_s3(uri)[1]
                                         for uri in storage.list_files(batch)])
    else:
        shutil.rmtree(batch, ignore_errors=True)
