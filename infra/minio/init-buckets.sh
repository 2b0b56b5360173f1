#!/bin/sh
# Creates the platform's buckets (idempotent); exits non-zero if MinIO keeps refusing.
set -eu
tries=0
until mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -ge 30 ]; then
        echo "minio-init: MinIO at http://minio:9000 refused the credentials 30 times" >&2
        exit 1
    fi
    sleep 2
done
for bucket in $BUCKETS; do
    mc mb --ignore-existing "local/$bucket"
done
echo "minio-init: buckets ready: $BUCKETS"
