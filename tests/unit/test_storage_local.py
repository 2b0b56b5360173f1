"""Local storage behaves like the S3 one: read, write, list, tags, copy."""

from __future__ import annotations

import hashlib

import pytest

from fusion_model import storage
from fusion_model.errors import StorageError


def test_write_read_list_and_tags(tmp_path):
    uri = storage.join(str(tmp_path), "a", "b.bin")
    storage.write_bytes(uri, b"hello")
    assert storage.read_bytes(uri) == b"hello"
    assert storage.exists(uri) and not storage.exists(uri + ".nope")
    assert storage.list_files(str(tmp_path)) == [uri]
    assert storage.content_tags([uri]) == {uri: hashlib.md5(b"hello").hexdigest()}
    assert not list(tmp_path.rglob(".*.tmp"))  # atomic write leaves no temp file


def test_missing_file_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        storage.read_bytes(str(tmp_path / "missing.jpg"))
    with pytest.raises(StorageError, match="nothing to copy"):
        storage.copy_tree(str(tmp_path / "empty"), str(tmp_path / "dst"))


def test_copy_tree_keeps_relative_layout(tmp_path):
    for rel in ("products.csv", "images/1.jpg", "images/sub/2.jpg"):
        storage.write_bytes(str(tmp_path / "src" / rel), rel.encode())
    assert storage.copy_tree(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False) == 3
    assert (tmp_path / "dst" / "images" / "sub" / "2.jpg").read_bytes() == b"images/sub/2.jpg"


def test_join_on_s3_prefixes():
    assert storage.join("s3://bucket/prefix", "images", "a.jpg") == "s3://bucket/prefix/images/a.jpg"
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/s3://")
