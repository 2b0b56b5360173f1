"""The work area: tasks on hosts with separate disks share work through S3, each in its own
local mirror (``$FUSION_SCRATCH_DIR``); a local work area is used in place."""

from __future__ import annotations

import boto3
import pytest

from fusion_model.errors import StorageError
from fusion_model.storage import workarea


def on_host(monkeypatch, tmp_path, name: str):
    monkeypatch.setenv(workarea.SCRATCH_ENV, str(tmp_path / name))


def test_what_one_host_wrote_another_host_pulls(s3_bucket, tmp_path, monkeypatch):
    uri = f"s3://{s3_bucket}/work/runs/r1/stage1"
    on_host(monkeypatch, tmp_path, "host-a")
    with workarea.staged(uri) as local:
        assert local == tmp_path / "host-a" / "s3" / s3_bucket / "work/runs/r1/stage1"
        (local / "model").mkdir()
        (local / "model" / "model.pt").write_bytes(b"weights" * 1000)
        (local / "result.json").write_text("{}")

    on_host(monkeypatch, tmp_path, "host-b")
    pulled = workarea.pull(uri)
    assert pulled.is_relative_to(tmp_path / "host-b")
    assert (pulled / "model" / "model.pt").read_bytes() == b"weights" * 1000
    assert (pulled / "result.json").read_text() == "{}"
    file_only = workarea.pull(f"{uri}/result.json")
    assert file_only == pulled / "result.json" and file_only.is_file()


def test_only_changed_files_travel(s3_bucket, tmp_path, monkeypatch):
    uri = f"s3://{s3_bucket}/work/parts"
    on_host(monkeypatch, tmp_path, "host-a")
    with workarea.staged(uri, pull_first=False) as local:
        (local / "part-0.json").write_text("zero")
    with workarea.staged(uri, pull_first=False) as local:
        (local / "part-1.json").write_text("one")
    keys = boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="work/parts")
    assert sorted(o["Key"] for o in keys["Contents"]) == ["work/parts/part-0.json",
                                                           "work/parts/part-1.json"]
    before = workarea.file_state(workarea.local_path(uri))
    assert workarea.push(uri, before) == 0              # nothing changed: nothing sent

    downloads = []
    real = workarea._download
    monkeypatch.setattr(workarea, "_download", lambda job: downloads.append(job[1])
                        or real(job))
    workarea.pull(uri)                                  # the uploader's own copy is current
    assert downloads == []
    on_host(monkeypatch, tmp_path, "host-b")
    workarea.pull(uri)
    workarea.pull(uri)                                  # the second pull finds it current
    assert sorted(downloads) == ["work/parts/part-0.json", "work/parts/part-1.json"]


def test_a_failed_block_still_uploads_what_it_wrote(s3_bucket, tmp_path, monkeypatch):
    uri = f"s3://{s3_bucket}/work/validation"
    on_host(monkeypatch, tmp_path, "host-a")
    with pytest.raises(RuntimeError), workarea.staged(uri) as local:
        (local / "summary.json").write_text('{"success": false}')
        raise RuntimeError("bad data")
    on_host(monkeypatch, tmp_path, "host-b")
    assert (workarea.pull(uri) / "summary.json").read_text() == '{"success": false}'


def test_an_empty_prefix_pulls_as_an_empty_folder(s3_bucket, tmp_path, monkeypatch):
    on_host(monkeypatch, tmp_path, "host-a")
    local = workarea.pull(f"s3://{s3_bucket}/nothing/here")
    assert local.is_dir() and not any(local.iterdir())


def test_a_local_work_area_is_used_in_place(tmp_path, monkeypatch):
    on_host(monkeypatch, tmp_path, "scratch")
    with workarea.staged(str(tmp_path / "work")) as local:
        (local / "a.txt").write_text("a")
    assert local == tmp_path / "work" and (tmp_path / "work" / "a.txt").is_file()
    assert workarea.pull(str(tmp_path / "work")) == tmp_path / "work"
    assert not (tmp_path / "scratch").exists()


def test_an_unreachable_bucket_is_a_named_error(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    on_host(monkeypatch, tmp_path, "host-a")
    with pytest.raises(StorageError, match="s3://no-such-bucket/work"):
        workarea.pull("s3://no-such-bucket/work")
