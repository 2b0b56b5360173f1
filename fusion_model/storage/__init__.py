"""One small interface over local paths and ``s3://bucket/key`` URIs.

S3 access goes through boto3 with its usual configuration: credentials and region from
the AWS environment variables or config files, and the endpoint from
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO, moto server, Ceph, ...).
"""

from fusion_model.storage.core import (
    TAG_CHUNK,
    Storage,
    content_tag_list,
    content_tags,
    copy_tree,
    delete_files,
    exists,
    is_s3,
    is_uri,
    is_within,
    join,
    join_within,
    known_content_tags,
    list_files,
    parallel_map_iter,
    read_bytes,
    split_s3,
    storage_for,
    write_bytes,
)

__all__ = [
    "TAG_CHUNK",
    "Storage",
    "content_tag_list",
    "content_tags",
    "copy_tree",
    "delete_files",
    "exists",
    "is_s3",
    "is_uri",
    "is_within",
    "join",
    "join_within",
    "known_content_tags",
    "list_files",
    "parallel_map_iter",
    "read_bytes",
    "split_s3",
    "storage_for",
    "write_bytes",
]
