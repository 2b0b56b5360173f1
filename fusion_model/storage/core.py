"""Local and S3 storage behind one interface; dispatch on the URI scheme."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import os
import posixpath
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Protocol

from fusion_model.errors import StorageError, UnsupportedURIError
from fusion_model.progress import progress_bar

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"


class Storage(Protocol):
    """What the platform needs from a file system."""

    def read_bytes(self, uri: str) -> bytes: ...

    def write_bytes(self, uri: str, data: bytes) -> None: ...

    def exists(self, uri: str) -> bool: ...

    def list_files(self, prefix: str) -> list[str]: ...

    def content_tags(self, uris: list[str]) -> dict[str, str]: ...


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_SCHEME)


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local directory or an S3 prefix."""
    base = str(base)
    if is_s3(base):
        return S3_SCHEME + posixpath.join(base[len(S3_SCHEME):], *parts)
    return str(Path(base, *parts))


def md5_hex(data: bytes) -> str:
    """The content tag of a local file: equal to the S3 ETag of a single-part upload."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class LocalStorage:
    """Plain files on the local disk."""

    def read_bytes(self, uri: str) -> bytes:
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"{uri}: file does not exist") from exc
        except OSError as exc:
            raise StorageError(f"{uri}: cannot read file ({exc.strerror})") from exc

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def exists(self, uri: str) -> bool:
        return Path(uri).is_file()

    def list_files(self, prefix: str) -> list[str]:
        root = Path(prefix)
        if not root.exists():
            return []
        return sorted(str(p) for p in root.rglob("*") if p.is_file())

    def content_tags(self, uris: list[str]) -> dict[str, str]:
        """MD5 per file, remembered by (path, size, mtime, inode) in the host's tag cache
        (``storage/tag_cache.py``): a file that did not change is stat-ed, not read."""
        from fusion_model.storage.tag_cache import tag_cache

        cache = tag_cache()
        if cache is None:
            return dict(zip(uris, parallel_map(self._md5, uris)))
        stats = dict(zip(uris, parallel_map(self._stat, uris)))
        tags = cache.lookup(stats)
        missing = [u for u in dict.fromkeys(uris) if u not in tags]
        computed = dict(zip(missing, parallel_map(self._md5, missing)))
        cache.remember(computed, stats)
        log.debug("content tags: %d remembered, %d hashed", len(tags), len(computed))
        return {u: tags.get(u) or computed[u] for u in uris}

    def _md5(self, uri: str) -> str:
        return md5_hex(self.read_bytes(uri))

    @staticmethod
    def _stat(uri: str) -> os.stat_result:
        try:
            return os.stat(uri)
        except FileNotFoundError as exc:
            raise StorageError(f"{uri}: file does not exist") from exc
        except OSError as exc:
            raise StorageError(f"{uri}: cannot read file ({exc.strerror})") from exc


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = uri[len(S3_SCHEME):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: not a valid S3 URI (expected s3://bucket/key)")
    return bucket, key


@functools.cache
def _s3_client(endpoint: str | None):
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def s3_client():
    """A boto3 S3 client for the endpoint currently configured in the environment."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return _s3_client(endpoint)


class S3Storage:
    """Objects in an S3-compatible store."""

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise StorageError(f"{uri}: cannot read object ({_s3_reason(exc)})") from exc

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as exc:
            raise StorageError(f"{uri}: cannot write object ({_s3_reason(exc)})") from exc

    def exists(self, uri: str) -> bool:
        bucket, key = split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _s3_reason(exc) in {"404", "NoSuchKey", "Not Found"}:
                return False
            raise StorageError(f"{uri}: cannot check object ({_s3_reason(exc)})") from exc
        return True

    def list_files(self, prefix: str) -> list[str]:
        return sorted(self._list_with_etags(prefix))

    def content_tags(self, uris: list[str]) -> dict[str, str]:
        """ETags, fetched by listing the common prefix instead of one request per object."""
        tags: dict[str, str] = {}
        by_bucket: dict[str, list[str]] = {}
        for uri in uris:
            by_bucket.setdefault(split_s3(uri)[0], []).append(uri)
        for bucket, bucket_uris in by_bucket.items():
            keys = [split_s3(u)[1] for u in bucket_uris]
            listed = self._list_with_etags(f"{S3_SCHEME}{bucket}/{os.path.commonprefix(keys)}",
                                           first=min(keys), last=max(keys))
            missing = [u for u in bucket_uris if u not in listed]
            if missing:
                raise StorageError(f"{missing[0]}: object does not exist ({len(missing)} missing)")
            tags.update({u: listed[u] for u in bucket_uris})
        return tags

    def _list_with_etags(self, prefix: str, first: str = "", last: str | None = None
                         ) -> dict[str, str]:
        """ETags of the objects under ``prefix`` whose keys lie in [first, last]: the
        listing starts just before ``first`` and stops after ``last``."""
        bucket, key_prefix = split_s3(prefix)
        paginator = s3_client().get_paginator("list_objects_v2")
        found: dict[str, str] = {}
        try:
            start = {"StartAfter": first[:-1]} if first[:-1] else {}
            for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix, **start):
                for obj in page.get("Contents", []):
                    if last is not None and obj["Key"] > last:
                        return found
                    found[f"{S3_SCHEME}{bucket}/{obj['Key']}"] = obj["ETag"].strip('"')
        except Exception as exc:
            raise StorageError(f"{prefix}: cannot list objects ({_s3_reason(exc)})") from exc
        return found


def _s3_reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", exc))
    return str(exc)


_LOCAL = LocalStorage()
_S3 = S3Storage()


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_uri(text: str) -> bool:
    """True for ``scheme://...`` (any scheme), false for paths."""
    return bool(_SCHEME.match(str(text)))


def storage_for(uri: str) -> Storage:
    """S3 for ``s3://``, the local disk for paths; any other scheme is refused by name."""
    if is_s3(uri):
        return _S3
    scheme = _SCHEME.match(str(uri))
    if scheme:
        raise UnsupportedURIError(f"{uri}: {scheme.group(1)}:// URIs are not supported; use a "
                                  "local path or an s3:// URI (download or upload the file "
                                  "there first)")
    return _LOCAL


def join_within(root: str, relative: str) -> str:
    """``relative`` joined onto ``root``; refuses absolute paths and ``..`` that leave it."""
    parts = PurePosixPath(str(relative).replace("\\", "/"))
    if parts.is_absolute() or _SCHEME.match(str(relative)) or ".." in parts.parts:
        raise StorageError(f"{relative!r}: path must stay inside {root} (no absolute paths, "
                           "URIs or '..')")
    return join(root, *parts.parts)


def is_within(uri: str, roots: Iterable[str]) -> bool:
    """True when ``uri`` lies inside one of ``roots``: a local path after every symlink is
    resolved (on both sides), an ``s3://`` key under a root's prefix with no '..' step."""
    if is_s3(uri):
        if ".." in PurePosixPath(split_s3(uri)[1]).parts:
            return False
        return any(is_s3(root) and (uri == root or uri.startswith(root.rstrip("/") + "/"))
                   for root in roots)
    if is_uri(uri):
        return False
    real = os.path.realpath(uri)
    for root in roots:
        if is_s3(root) or is_uri(root):
            continue
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return True
    return False


def read_bytes(uri: str) -> bytes:
    return storage_for(uri).read_bytes(uri)


def write_bytes(uri: str, data: bytes) -> None:
    storage_for(uri).write_bytes(uri, data)


def exists(uri: str) -> bool:
    return storage_for(uri).exists(uri)


def list_files(prefix: str) -> list[str]:
    return storage_for(prefix).list_files(prefix)


def content_tags(uris: Iterable[str]) -> dict[str, str]:
    """A content tag per URI (MD5 of local bytes, ETag on S3); raises if one is missing."""
    uris = list(uris)
    local = [u for u in uris if not is_s3(u) and storage_for(u) is _LOCAL]
    remote = [u for u in uris if is_s3(u)]
    tags = _LOCAL.content_tags(local) if local else {}
    if remote:
        tags.update(_S3.content_tags(remote))
    return tags


def delete_files(uris: Iterable[str]) -> int:
    """Delete files (local paths, or S3 objects 1,000 a request); a missing one is
    skipped. Returns how many were asked for."""
    local, remote = [], {}
    for uri in uris:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            remote.setdefault(bucket, []).append(key)
        else:
            local.append(uri)
    for uri in local:
        Path(uri).unlink(missing_ok=True)
    for bucket, keys in remote.items():
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": key} for key in keys[start:start + 1000]]
            try:
                s3_client().delete_objects(Bucket=bucket, Delete={"Objects": chunk,
                                                                  "Quiet": True})
            except Exception as exc:  # noqa: BLE001 - botocore's errors, network errors
                raise StorageError(f"s3://{bucket}: cannot delete {len(chunk)} objects "
                                   f"({_s3_reason(exc)})") from exc
    return len(local) + sum(map(len, remote.values()))


TAG_CHUNK = 20_000
_KNOWN_TAGS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "known_content_tags", default=None)


@contextlib.contextmanager
def known_content_tags(tags: Mapping[str, str]) -> Iterator[None]:
    """Within the block, ``content_tag_list`` takes these URIs' tags from ``tags`` (a
    partition manifest's, found once per snapshot) instead of the storage."""
    token = _KNOWN_TAGS.set(tags)
    try:
        yield
    finally:
        _KNOWN_TAGS.reset(token)


def content_tag_list(uris: Sequence[str | None]) -> list[str | None]:
    """``content_tags`` as a list aligned with ``uris`` (None stays None), found
    ``TAG_CHUNK`` URIs at a time in key order, so that on S3 each chunk lists only the
    key range it spans and the whole list costs one pass over the prefix; beside the
    list, memory does not grow with the catalog (a whole-catalog dict of stats and tags
    costs about 1 KB a photo). Tags given to ``known_content_tags`` are not looked up."""
    known = _KNOWN_TAGS.get() or {}
    wanted = [i for i, u in enumerate(uris) if u is not None and u not in known]
    wanted.sort(key=uris.__getitem__)
    tags: list[str | None] = [None if u is None else known.get(u) for u in uris]
    for start in range(0, len(wanted), TAG_CHUNK):
        chunk = wanted[start:start + TAG_CHUNK]
        found = content_tags(uris[i] for i in chunk)
        for i in chunk:
            tags[i] = found[uris[i]]
    return tags


def copy_tree(src: str, dst: str, *, progress: bool = True) -> int:
    """Copy every file under ``src`` to ``dst`` (local <-> S3 in any direction)."""
    files = list_files(src)
    if not files:
        raise StorageError(f"{src}: nothing to copy (no files found)")
    src_root = src.rstrip("/")

    def copy_one(uri: str) -> None:
        relative = uri[len(src_root):].lstrip("/").replace(os.sep, "/")
        write_bytes(join(dst, relative), read_bytes(uri))

    for _ in progress_bar(parallel_map_iter(copy_one, files), total=len(files), show=progress,
                  desc=f"copy -> {dst}", unit="file"):
        pass
    return len(files)


def parallel_map_iter(fn, items: Iterable, workers: int = 16):
    """``map`` over threads (I/O-bound work: reads, writes, S3 calls), in order. At most
    ``4 * workers`` items are in flight: memory does not grow with the number of items
    (``Executor.map`` submits them all at once, a future each)."""
    window: deque = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in items:
            if len(window) >= 4 * workers:
                yield window.popleft().result()
            window.append(pool.submit(fn, item))
        while window:
            yield window.popleft().result()


def parallel_map(fn, items: list, workers: int = 16) -> list:
    return list(parallel_map_iter(fn, items, workers))
