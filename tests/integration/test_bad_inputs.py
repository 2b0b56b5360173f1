"""The bad-input suite: what a new user gets wrong and what goes wrong around them.

Every case runs through the CLI (or the step an Airflow task calls) against a platform with
a promoted champion on real Milvus Lite and MLflow, and asserts a named one-line error (or
the safe outcome), no traceback, and that nothing downstream changed: the collections and
their row counts, the serving alias, the registry's versions and aliases, the audit runs.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fusion_model.cli import main
from fusion_model.data.catalog import load_catalog
from fusion_model.data.synthetic import generate_synthetic_catalog
from fusion_model.index import milvus
from fusion_model.registry import registry
from fusion_model.registry.tracking import configure
from tests.conftest import free_port, promote_tiny

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MODEL = "fusion_products"
AUDIT = "fusion-model-promotion-audit"
SECRET = "root:s3cr3t-token-do-not-log"


@dataclass
class Platform:
    root: Path
    catalog: str
    overrides: list[str]  # on the packaged ``tiny`` config

    @property
    def argv(self) -> list[str]:
        """The CLI's config options for this platform."""
        return ["--config", "tiny", *self.overrides]

    @property
    def index_uri(self) -> str:
        return str(self.root / "milvus.db")

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Platform:
    """A catalog of 120 products and a promoted champion (v1), the token set in the env."""
    root = tmp_path_factory.mktemp("bad-inputs")
    os.environ["FUSION_MILVUS_TOKEN"] = SECRET
    try:
        catalog, overrides = promote_tiny(root, 120, 60, 3, f"index.token={SECRET}")
    finally:
        del os.environ["FUSION_MILVUS_TOKEN"]
    return Platform(root, catalog, overrides)


def state(platform: Platform) -> dict:
    """Everything a bad input must leave alone."""
    with milvus.MilvusIndex.open(platform.index_uri) as index:
        collections = {name: index.count(name) for name in index.list_collections()}
        serving = index.resolve_alias("products_serving")
    configure(platform.tracking_uri)
    found = mlflow.MlflowClient().search_model_versions("")
    versions = sorted((v.name, str(v.version), v.tags.get("milvus_collection", ""))
                      for v in found)
    aliases = {alias: registry.get_alias(MODEL, alias)
               for alias in (registry.CHAMPION, registry.CHALLENGER)}
    audit = mlflow.get_experiment_by_name(AUDIT)
    runs = len(mlflow.search_runs([audit.experiment_id])) if audit else 0
    return {"collections": collections, "serving": serving, "versions": versions,
            "aliases": aliases, "audit_runs": runs}


def fails(platform: Platform, argv: list[str], match: str, capsys, code: int = 2) -> str:
    """Run the CLI; assert exit ``code``, an error matching ``match``, no traceback and
    an unchanged platform. Returns stderr."""
    before = state(platform)
    capsys.readouterr()
    try:
        returned = main(argv)
    except SystemExit as exc:  # argparse rejects bad option values itself
        returned = exc.code
    err = capsys.readouterr().err
    assert returned == code, err
    assert re.search(match, err, re.S), err
    assert "Traceback" not in err
    assert state(platform) == before
    return err


def with_platform(platform: Platform, *extra: str) -> list[str]:
    return [*platform.argv, *extra]


# -- snapshots a user might upload -------------------------------------------------------

def snapshot(platform: Platform, out: Path, products=None, queries=None, judgments=None,
             images: dict[str, bytes] | None = None) -> str:
    """A copy of the platform's catalog as CSV with tables changed by the given functions
    and photos replaced by ``images`` (product index -> bytes)."""
    source = load_catalog(platform.catalog)
    shutil.copytree(Path(platform.catalog) / "images", out / "images")
    tables = {"products": source.products.drop(columns=["image_uri"]),
              "queries": source.queries, "judgments": source.judgments}
    for name, change in (("products", products), ("queries", queries),
                         ("judgments", judgments)):
        if change is not None:
            tables[name] = change(tables[name].copy())
    for index, data in (images or {}).items():
        (out / tables["products"].loc[index, "image"]).write_bytes(data)
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    return str(out)


def with_id(index: int, product_id: str):
    def change(products: pd.DataFrame) -> pd.DataFrame:
        products.loc[index, "product_id"] = product_id
        return products
    return change


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def bomb() -> bytes:
    """A 1 kB PNG whose header declares 10,000 x 10,000 pixels."""
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")
    return buffer.getvalue()


TRUNCATED = jpeg(256, 256)[:400]
UNDECODABLE = b"this is not an image" * 10

BAD_SNAPSHOTS = {
    "quote in product id": ({"products": with_id(0, "P1\" or 1 == 1 or \"")},
                            r"match_regex\(product_id\).*row 1: 'P1\" or 1 == 1"),
    "space in product id": ({"products": with_id(1, "P 2")}, r"product_id"),
    "slash in product id": ({"products": with_id(2, "../P3")}, r"product_id"),
    "product id of 200 chars": ({"products": with_id(3, "P" * 200)}, r"product_id"),
    "duplicate product id": ({"products": with_id(4, "P000000")}, r"unique|product_id"),
    "empty products table": ({"products": lambda p: p.head(0)}, r"products"),
    "title column missing": ({"products": lambda p: p.drop(columns=["title"])}, r"title"),
    "grade out of range": ({"judgments": lambda j: j.assign(grade=j["grade"].where(
        j.index != 0, 7))}, r"grade"),
    "judgment of an unknown product": ({"judgments": lambda j: pd.concat(
        [j, j.head(1).assign(product_id="NOPE")])}, r"NOPE|product_id"),
    "no test queries": ({"queries": lambda q: q.assign(split=q["split"].replace(
        "test", "train"))}, r"test"),
    "unknown split": ({"queries": lambda q: q.assign(split="holdout")}, r"split"),
    "image path leaving the catalog": ({"products": lambda p: p.assign(image=p["image"].where(
        p.index != 2, "../escape.jpg"))}, r"not_match_regex\(image\).*row 3"),
}

BAD_PHOTOS = {
    "truncated photo": (TRUNCATED, r"product P000005: truncated"),
    "undecodable photo": (UNDECODABLE, r"product P000005: undecodable"),
    "decompression bomb": (bomb(), r"product P000005: too_many_pixels \(.*pixels"),
    "empty photo file": (b"", r"product P000005: empty_file"),
}


BAD_SNAPSHOTS.update({case: ({"images": {5: data}}, match)
                      for case, (data, match) in BAD_PHOTOS.items()})


@pytest.mark.parametrize("case", sorted(BAD_SNAPSHOTS))
def test_refresh_refuses_a_bad_snapshot(case, platform, tmp_path, capsys):
    changes, match = BAD_SNAPSHOTS[case]
    bad = snapshot(platform, tmp_path / "snapshot", **changes)
    fails(platform, ["refresh", "--catalog", bad, "--report-dir", str(tmp_path / "report"),
                     *platform.argv], match, capsys)


def test_refresh_refuses_a_csv_row_with_a_field_too_many(platform, tmp_path, capsys):
    """pandas reads such a row's first field as an index and shifts every value left."""
    bad = Path(snapshot(platform, tmp_path / "snapshot"))
    header, first, *rest = (bad / "products.csv").read_text().splitlines()
    (bad / "products.csv").write_text("\n".join([header, first + ",extra", *rest]) + "\n")
    fails(platform, ["refresh", "--catalog", str(bad), "--report-dir",
                     str(tmp_path / "report"), *platform.argv],
          r"products.csv, row 1: every row must have the header's \d+ fields", capsys)


@pytest.mark.parametrize("case", sorted(BAD_PHOTOS))
def test_embed_names_the_product_and_file_of_a_bad_photo(case, platform, tmp_path, capsys):
    bad = snapshot(platform, tmp_path / "snapshot", images={5: BAD_PHOTOS[case][0]})
    product = load_catalog(bad).products.iloc[5]
    err = fails(platform, ["embed", "--model", str(platform.root / "run" / "train" / "model"),
                           "--catalog", bad, "--out", str(tmp_path / "v.parquet"),
                           "--cache-dir", str(tmp_path / "cache")], "cannot use this photo",
                capsys)
    assert f"product {product.product_id}" in err and product["image"] in err
    assert not (tmp_path / "v.parquet").exists()


def test_train_names_the_product_of_a_bomb_photo(platform, tmp_path, capsys):
    bad = snapshot(platform, tmp_path / "snapshot", images={7: bomb()})
    product = load_catalog(bad).products.iloc[7].product_id
    fails(platform, ["train", "--catalog", bad, "--out", str(tmp_path / "run"),
                     *platform.argv], rf"product {product}: .*pixels",
          capsys)


def test_refresh_of_an_empty_snapshot_with_deletions_allowed_still_fails(platform, tmp_path,
                                                                         capsys):
    bad = snapshot(platform, tmp_path / "snapshot", products=lambda p: p.head(0),
                   judgments=lambda j: j.head(0))
    fails(platform, ["refresh", "--catalog", bad, "--allow-deletions", *platform.argv],
          r"products", capsys)


def test_refresh_refuses_a_truncated_snapshot(platform, tmp_path, capsys):
    """A valid snapshot holding 60% of the products: refused by the deletion cap."""
    source = load_catalog(platform.catalog)
    kept = set(source.products["product_id"].head(72))
    judged = source.judgments[source.judgments["product_id"].isin(kept)
                              & (source.judgments["grade"] > 0)]
    queries = set(judged["query_id"])
    bad = snapshot(platform, tmp_path / "snapshot", products=lambda p: p.head(72),
                   queries=lambda q: q[q["query_id"].isin(queries)],
                   judgments=lambda j: j[j["product_id"].isin(kept)
                                         & j["query_id"].isin(queries)])
    fails(platform, ["refresh", "--catalog", bad, *platform.argv],
          r"drops 48 of the 120 products .*max_delete_share=5%.*--allow-deletions", capsys)


def test_refresh_with_an_http_photo_says_http_is_unsupported(platform, tmp_path, capsys):
    def http_photo(products):
        products.loc[3, "image"] = "http://example.com/p.jpg"
        return products

    bad = snapshot(platform, tmp_path / "snapshot", products=http_photo)
    fails(platform, ["embed", "--model", str(platform.root / "run" / "train" / "model"),
                     "--catalog", bad, "--out", str(tmp_path / "v.parquet")],
          r"http:// .*not supported", capsys)


# -- the search command ------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "match"), [
    (["search", ""], r"query must not be empty"),
    (["search", "   "], r"query must not be empty"),
    (["search", "shirt", "-k", "0"], r"-k: must be at least 1"),
    (["search", "shirt", "-k", "-5"], r"-k: must be at least 1"),
    (["search", "shirt", "-k", "ten"], r"-k: expected a whole number"),
    (["search", "shirt", "--filter", "category =="], r"invalid filter.*Filterable fields"),
    (["search", "shirt", "--filter", 'price < "x" and'], r"invalid filter"),
    (["search", "shirt", "--filter", 'nosuchfield == "x"'], r"invalid filter.*nosuchfield"),
    (["search", "shirt", "--filter", "category == 'shirt"], r"invalid filter"),
], ids=["empty", "blank", "k0", "k-negative", "k-text", "filter-syntax", "filter-dangling",
        "filter-unknown-field", "filter-open-quote"])
def test_search_rejects_bad_arguments(argv, match, platform, capsys):
    fails(platform, [*argv, *platform.argv], match, capsys)


def test_search_before_any_promotion(platform, tmp_path, capsys):
    fails(platform, ["search", "shirt", *with_platform(
        platform, f"registry.tracking_uri=sqlite:///{tmp_path / 'empty.db'}")],
        r"no champion for fusion_products yet.*lifecycle", capsys)


def test_search_refuses_an_alias_that_disagrees_with_the_champion(platform, capsys):
    with milvus.MilvusIndex.open(platform.index_uri) as index:
        served = index.resolve_alias("products_serving")
        dim = index.client.describe_collection(served)["fields"]
        vector = next(f for f in dim if f["name"] == "vector")["params"]["dim"]
        index.create_collection("other_m9_x", vector, [])
        index.point_alias("products_serving", "other_m9_x")
    try:
        fails(platform, ["search", "shirt", *platform.argv],
              r"serving alias products_serving -> other_m9_x.*refusing to mix encoders",
              capsys)
    finally:
        with milvus.MilvusIndex.open(platform.index_uri) as index:
            index.point_alias("products_serving", served)
            index.drop_collection("other_m9_x")


# -- rollback and status -----------------------------------------------------------------

def test_rollback_to_an_unknown_version(platform, capsys):
    fails(platform, ["rollback", "99", *platform.argv],
          r"fusion_products has no version 99 in the registry \(versions: 1", capsys)


def test_rollback_with_an_empty_registry(platform, tmp_path, capsys):
    fails(platform, ["rollback", "1", *with_platform(
        platform, f"registry.tracking_uri=sqlite:///{tmp_path / 'empty.db'}")],
        r"no version 1 .*nothing is registered yet", capsys)


@pytest.mark.parametrize("step", [["status"], ["search", "shirt"], ["rollback", "1"]])
def test_an_unreachable_tracking_server_fails_within_seconds(step, platform, capsys):
    started = time.monotonic()
    err = fails(platform, [*step, *with_platform(
        platform, f"registry.tracking_uri=http://127.0.0.1:{free_port()}")],
        r"MLflow tracking server http://127.0.0.1:\d+ is not reachable", capsys)
    assert time.monotonic() - started < 30
    assert "no champion" not in err


# -- the Milvus index --------------------------------------------------------------------

@pytest.mark.parametrize(("uri", "match"), [
    ("/proc/fusion/milvus.db", r"index.uri /proc/fusion/milvus.db: cannot write"),
    ("{root}/catalog/products.parquet/milvus.db", r"a file, not a folder"),
    ("{root}/catalog/products.parquet", r"products.parquet is a file, not Milvus Lite data"),
], ids=["unwritable", "below-a-file", "a-file"])
def test_an_unusable_index_uri(uri, match, platform, capsys):
    fails(platform, ["status", *with_platform(
        platform, f"index.uri={uri.format(root=platform.root)}")], match, capsys)


def test_an_unreachable_milvus_server(platform, capsys):
    fails(platform, ["status", *with_platform(
        platform, f"index.uri=http://127.0.0.1:{free_port()}")],
        r"Milvus at http://127.0.0.1:\d+ is not reachable", capsys)


def hold_lite_file(uri: str) -> subprocess.Popen:
    """Another process that keeps the Milvus Lite file open."""
    code = ("import sys, time\nfrom fusion_model.index.milvus import open_client\n"
            "with open_client(sys.argv[1]) as c:\n    c.list_collections()\n"
            "    print('open', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).parents[2])
    assert holder.stdout.readline().strip() == "open"
    return holder


def test_two_processes_on_one_milvus_lite_file(platform, capsys):
    milvus.release_lite(platform.index_uri)  # as this process's exit would
    holder = hold_lite_file(platform.index_uri)
    try:
        err = None
        for argv in (["search", "shirt"], ["status"]):
            capsys.readouterr()
            returned = main([*argv, *platform.argv])
            err = capsys.readouterr().err
            assert returned == 2 and "Traceback" not in err
            assert re.search(r"locked by another process.*milvus-lite server --data-dir", err)
    finally:
        holder.kill()
        holder.wait()
    assert err is not None
    state(platform)  # the file opens again once the other process is gone


# -- configuration and paths -------------------------------------------------------------

def test_benchmark_of_a_catalog_without_test_queries(platform, tmp_path, capsys):
    bad = snapshot(platform, tmp_path / "snapshot", queries=lambda q: q.assign(
        split=q["split"].replace("test", "val")))
    fails(platform, ["benchmark", "--catalog", bad, "--models", "text_only", "--work-dir",
                     str(tmp_path / "bench"), *platform.argv], r"no .*test.* queries",
          capsys)


@pytest.mark.parametrize(("extra", "match"), [
    (["model.fusion=transformer"], r"model.fusion"),
    (["no.such.key=1"], r"no.such.key|unknown"),
    (["train.min_positive_grade=5"], r"min_positive_grade"),
    (["index.max_delete_share=2"], r"max_delete_share"),
    (["train.stage1.epochs=-1"], r"epochs"),
], ids=["fusion", "unknown-key", "grade", "delete-share", "epochs"])
def test_bad_config_overrides(extra, match, platform, tmp_path, capsys):
    fails(platform, ["train", "--catalog", platform.catalog, "--out", str(tmp_path / "r"),
                     *platform.argv, *extra], match, capsys)


def test_a_config_file_that_is_not_yaml(platform, tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("model: [fusion\n  : broken")
    fails(platform, ["train", "--catalog", platform.catalog, "--config", str(config),
                     "--out", str(tmp_path / "r")], r"YAML|mine.yaml", capsys)


def test_a_catalog_that_does_not_exist(platform, tmp_path, capsys):
    fails(platform, ["refresh", "--catalog", str(tmp_path / "nowhere"), *platform.argv],
          r"nowhere", capsys)


def test_a_model_dir_that_does_not_exist(platform, tmp_path, capsys):
    fails(platform, ["evaluate", "--model", str(tmp_path / "nomodel"), "--catalog",
                     platform.catalog], r"nomodel", capsys)


def test_an_http_catalog_uri(platform, capsys):
    fails(platform, ["catalog", "show", "http://example.com/catalog"],
          r"http:// URIs are not supported", capsys)


def test_myntra_import_refuses_image_paths_leaving_the_source(platform, tmp_path, capsys):
    source = tmp_path / "myntra"
    (source / "images").mkdir(parents=True)
    (source / "images" / "1.jpg").write_bytes(jpeg(64, 64))
    pd.DataFrame({"id": [1, 2], "gender": ["Men", "Women"], "masterCategory": ["A", "A"],
                  "subCategory": ["B", "B"], "articleType": ["Tshirts", "Tops"],
                  "baseColour": ["Red", "Blue"], "season": ["Summer", "Summer"],
                  "year": [2012, 2012], "usage": ["Casual", "Casual"],
                  "productDisplayName": ["Red Tee", "Blue Top"],
                  "image": ["images/1.jpg", "../../escape.jpg"]}
                 ).to_csv(source / "styles.csv", index=False)
    fails(platform, ["catalog", "myntra", "--source", str(source), "--out",
                     str(tmp_path / "out"), "--copy-images"], r"\.\./\.\./escape.jpg", capsys)
    assert not (tmp_path / "escape.jpg").exists()


# -- valid inputs that used to be refused ------------------------------------------------

def test_validate_with_the_default_relative_report_dir(platform, tmp_path, monkeypatch,
                                                       capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "--catalog", platform.catalog]) == 0
    assert (tmp_path / "runs" / "validation" / "validation.json").is_file()


def test_a_catalog_graded_0_to_2_trains_with_the_threshold_it_has(platform, tmp_path,
                                                                  capsys, caplog):
    graded = snapshot(platform, tmp_path / "snapshot", judgments=lambda j: j.assign(
        grade=j["grade"].clip(upper=2)))
    caplog.set_level("INFO")
    assert main(["train", "--catalog", graded, "--out", str(tmp_path / "run"),
                 *platform.argv]) == 0
    assert "test)" in capsys.readouterr().out
    assert re.search(r"highest grade 2: train.min_positive_grade=2, eval.min_relevant_grade=2",
                     caplog.text)


# -- secrets -----------------------------------------------------------------------------

def test_the_milvus_token_reaches_no_param_artifact_or_model_file(platform):
    configure(platform.tracking_uri)
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs
    for run in runs:
        assert SECRET not in repr(run.data.params) + repr(run.data.tags)
    for path in [*platform.root.rglob("*")]:
        if path.is_file() and path.suffix not in (".db", ".pt", ".jpg", ".parquet"):
            assert SECRET.encode() not in path.read_bytes(), path
    versions = client.search_model_versions("")
    assert all(SECRET not in repr(v.tags) for v in versions)


# -- faults ------------------------------------------------------------------------------

@pytest.mark.parametrize("failing", ["set_alias", "record_decision", "tag_version"])
def test_mlflow_failing_between_the_alias_moves_puts_serving_back(failing, platform,
                                                                  monkeypatch, capsys):
    """Rollback to v1 (the champion) exercises the same switch as promote and refresh."""
    from fusion_model.pipelines import steps

    def broken(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    before = state(platform)
    monkeypatch.setattr(registry, failing, broken)
    with pytest.raises(Exception) as raised:
        steps.refresh(str(tmp_snapshot_with_one_change(platform)), "tiny",
                      platform.overrides)
    monkeypatch.undo()
    assert type(raised.value).__name__ == "ServingSwitchError"
    assert "restored to" in str(raised.value)
    after = state(platform)
    assert after["serving"] == before["serving"] and after["aliases"] == before["aliases"]
    assert after["audit_runs"] == before["audit_runs"]
    assert [v[:2] for v in after["versions"]] == [v[:2] for v in before["versions"]]
    assert after["versions"] == before["versions"]
    capsys.readouterr()
    assert main(["search", "shirt", "-k", "2", *platform.argv]) == 0


def tmp_snapshot_with_one_change(platform: Platform) -> Path:
    out = platform.root / "one-change"
    if not out.exists():
        def retitle(products):
            products.loc[0, "title"] = "A Completely New Title"
            return products
        snapshot(platform, out, products=retitle)
    return out


def test_a_refresh_left_half_done_is_reported_by_status(platform, monkeypatch, capsys):
    """MLflow failed after the new collection was written: serving is unchanged and status
    reports the unrecorded collection; a rerun then completes the refresh."""
    from fusion_model.pipelines import steps

    def broken(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(registry, "record_decision", broken)
    with pytest.raises(Exception, match="restored to"):
        steps.refresh(str(tmp_snapshot_with_one_change(platform)), "tiny",
                      platform.overrides)
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["status", *platform.argv]) == 0
    assert re.search(r"orphaned\s+products_m1_\w+: on no version", capsys.readouterr().out)
    # the rerun takes over the half-written collection and completes the switch
    assert main(["refresh", "--catalog", str(tmp_snapshot_with_one_change(platform)),
                 *platform.argv]) == 0
    out = capsys.readouterr().out
    assert "0 embedded, 0 deleted, 120 unchanged" in out and "serving alias ->" in out
    assert main(["status", *platform.argv]) == 0
    assert "orphaned" not in capsys.readouterr().out
    assert main(["search", "new title", "-k", "1", *platform.argv]) == 0


KILL_DURING_INDEXING = """
import os, signal, sys
from fusion_model.index import milvus
from fusion_model.cli import main
original, written = milvus.MilvusIndex.write_rows, []
def write_then_die(*args, **kwargs):
    original(*args, **kwargs)
    written.append(1)
    if len(written) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
milvus.MilvusIndex.write_rows = write_then_die
sys.exit(main(sys.argv[2:]))
"""


def test_sigkill_during_indexing_then_rerun_resumes_the_same_version(tmp_path):
    root = tmp_path
    catalog = generate_synthetic_catalog(str(root / "catalog"), n_products=120, n_queries=60,
                                         seed=4, progress=False)
    overrides = [f"train.cache_dir={root / 'cache'}", "train.stage1.epochs=1",
                 "train.stage2.epochs=1", "index.batch_size=40",
                 f"index.uri={root / 'milvus.db'}",
                 f"registry.tracking_uri=sqlite:///{root / 'mlflow.db'}",
                 f"registry.artifact_location={root / 'artifacts'}"]
    argv = ["lifecycle", "--catalog", catalog, "--work-dir", str(root / "run"),
            "--force-promote", "--config", "tiny", *overrides]
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_INDEXING,
                             str(root / "batches"), *argv], capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with milvus.MilvusIndex.open(str(root / "milvus.db")) as index:
        (partial,) = index.list_collections()
        assert index.count(partial) < 120
    assert main(argv) == 0
    configure(f"sqlite:///{root / 'mlflow.db'}")
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{MODEL}'")
    assert [str(v.version) for v in versions] == ["1"]
    with milvus.MilvusIndex.open(str(root / "milvus.db")) as index:
        assert index.list_collections() == [partial]
        assert index.resolve_alias("products_serving") == partial
        assert index.count(partial) == 120


def test_a_poisoned_training_checkpoint_is_refused(platform, tmp_path, capsys):
    """A checkpoint in the shared work dir that would run code when unpickled."""
    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    work = tmp_path / "run"
    shutil.copytree(platform.root / "run" / "train", work)
    checkpoints = sorted(work.rglob("*.pt"))
    target = next(p for p in checkpoints if "checkpoint" in str(p) or "stage" in p.name)
    torch.save({"run_key": Payload()}, target)
    (work / "result.json").unlink(missing_ok=True)
    fails(platform, ["train", "--catalog", platform.catalog, "--out", str(work),
                     *platform.argv], r"refusing to unpickle", capsys)
    assert not marker.exists()


def test_bad_photo_bytes_never_reach_the_index_through_a_validated_dag_run(platform,
                                                                          tmp_path):
    """The DAG's refresh task trusts its validate task; a photo that decodes badly anyway
    stops it with a named error before the serving alias moves."""
    from fusion_model.pipelines import steps

    bad = snapshot(platform, tmp_path / "snapshot", images={9: TRUNCATED})
    before = state(platform)
    with pytest.raises(Exception, match=r"cannot use this photo"):
        steps.refresh(bad, "tiny", platform.overrides, validated=True)
    after = state(platform)
    assert after["serving"] == before["serving"] and after["aliases"] == before["aliases"]
    assert after["versions"] == before["versions"]


def test_image_pixels_are_capped_before_decoding():
    from fusion_model.features import ImageDecodeError, decode_image

    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_image(bomb(), 32, uri="bomb.png")
    assert decode_image(jpeg(64, 48), 32).shape == (32, 32, 3)
    assert np.asarray(decode_image(jpeg(64, 48), 32)).dtype == np.uint8
