"""Bulk import staging: column files where the Milvus server reads them, named as the
server must be given them (local paths as they are, S3 keys relative to its bucket)."""

from __future__ import annotations

import io

import boto3
import numpy as np

from fusion_model.index import bulk_import


def columns() -> dict[str, np.ndarray]:
    return {"product_id": bulk_import.text_column(["a", "bé"]),
            "vector": np.ones((2, 4), dtype=np.float32),
            "colour": bulk_import.text_column(["", "red"])}


def test_s3_staging_names_keys_in_the_milvus_bucket_and_cleans_up(s3_bucket):
    batch, files = bulk_import.stage_columns(f"s3://{s3_bucket}/import", "c_m1_x", columns())
    assert batch.startswith(f"s3://{s3_bucket}/import/c_m1_x/")
    assert [f.rsplit("/", 1)[1] for f in files] == ["product_id.npy", "vector.npy",
                                                     "colour.npy"]
    assert all(f.startswith("import/c_m1_x/") for f in files)
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key=files[0])["Body"].read()
    assert np.load(io.BytesIO(body)).tolist() == ["a", "bé"]
    bulk_import.remove_batch(batch)
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=s3_bucket,
                                                                Prefix="import/")


def test_local_staging_passes_paths_and_loads_without_pickle(tmp_path):
    batch, files = bulk_import.stage_columns(str(tmp_path / "import"), "c_m1_x", columns())
    assert all(f.startswith(str(tmp_path / "import" / "c_m1_x")) for f in files)
    loaded = np.load(files[1], allow_pickle=False)
    assert loaded.dtype == np.float32 and loaded.shape == (2, 4)
    assert np.load(files[2], allow_pickle=False).tolist() == ["", "red"]
    bulk_import.remove_batch(batch)
    assert not any((tmp_path / "import").rglob("*.npy"))


def test_the_build_sends_jobs_of_exactly_import_rows_and_the_rest_at_the_end():
    from fusion_model.config import IndexConfig
    from fusion_model.index.build import ImportBuffer

    sent = []

    class Recorder:
        def import_rows(self, name, ids, vectors, hashes, attributes, import_uri):
            assert len(ids) == len(vectors) == len(hashes) == len(attributes["colour"])
            sent.append(ids)

    buffer = ImportBuffer(Recorder(), "c", IndexConfig(import_uri="/x", import_rows=70))
    ids = [f"p{i}" for i in range(150)]
    for start in range(0, 150, 50):
        part = ids[start:start + 50]
        buffer.add(part, np.zeros((len(part), 4), np.float32), ["h"] * len(part),
                   {"colour": ["red"] * len(part)})
    buffer.send()
    buffer.send()  # nothing left: no empty job
    assert [len(job) for job in sent] == [70, 70, 10]
    assert [pid for job in sent for pid in job] == ids
