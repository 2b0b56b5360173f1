"""Content tags of local files: remembered while a file's stat is unchanged, hashed again
when it changes, never remembered for a file written a moment ago."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fusion_model import storage
from fusion_model.errors import StorageError
from fusion_model.storage import core, tag_cache


@pytest.fixture()
def hashed(monkeypatch, tmp_path) -> list[str]:
    """The files hashed (read and MD5-ed), in a cache of this test's own."""
    monkeypatch.setenv(tag_cache.ENV, str(tmp_path / "tags.sqlite"))
    calls: list[str] = []
    md5 = core.LocalStorage._md5
    monkeypatch.setattr(core.LocalStorage, "_md5",
                        lambda self, uri: calls.append(uri) or md5(self, uri))
    return calls


def settled_file(path, data: bytes) -> str:
    """A file whose modification time lies beyond the racy window."""
    path.write_bytes(data)
    past = time.time() - 60
    os.utime(path, (past, past))
    return str(path)


def test_an_unchanged_file_is_not_read_again(tmp_path, hashed):
    photos = [settled_file(tmp_path / f"p{i}.jpg", bytes([i]) * 100) for i in range(5)]
    first = storage.content_tags(photos)
    assert first == {p: core.md5_hex(Path(p).read_bytes()) for p in photos}
    assert sorted(hashed) == sorted(photos)
    hashed.clear()
    assert storage.content_tags(photos) == first and hashed == []


def test_a_changed_file_is_hashed_again(tmp_path, hashed):
    photo = settled_file(tmp_path / "p.jpg", b"old bytes")
    before = storage.content_tags([photo])[photo]
    settled_file(tmp_path / "p.jpg", b"new bytes, same name")
    hashed.clear()
    after = storage.content_tags([photo])[photo]
    assert hashed == [photo] and after == core.md5_hex(b"new bytes, same name") != before


def test_a_file_written_a_moment_ago_is_not_remembered(tmp_path, hashed):
    fresh = tmp_path / "fresh.jpg"
    fresh.write_bytes(b"just written")
    storage.content_tags([str(fresh)])
    storage.content_tags([str(fresh)])
    assert hashed == [str(fresh), str(fresh)]


def test_off_hashes_every_time_and_writes_no_cache(tmp_path, hashed, monkeypatch):
    monkeypatch.setenv(tag_cache.ENV, "off")
    photo = settled_file(tmp_path / "p.jpg", b"bytes")
    storage.content_tags([photo])
    storage.content_tags([photo])
    assert hashed == [photo, photo] and not (tmp_path / "tags.sqlite").exists()


def test_a_missing_file_is_named(tmp_path, hashed):
    with pytest.raises(StorageError, match="missing.jpg: file does not exist"):
        storage.content_tags([str(tmp_path / "missing.jpg")])
