#!/bin/sh
# Creates the platform's buckets (idempotent); exits non-zero if MinIO refuses.
set -eu
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
for bucket in $BUCKETS; do
    mc mb --ignore-existing "local/$bucket"
done
echo "minio-init: buckets ready: $BUCKETS"
