"""Data validation: every bad input is caught with a clear message; good data passes."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import zlib
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
from PIL import Image

from fusion_model.cli import main
from fusion_model.data.synthetic import generate_synthetic_catalog
from fusion_model.validation import DataValidationError, validate_catalog


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "catalog"
    generate_synthetic_catalog(str(root), n_products=80, n_queries=40, seed=3, fmt="csv",
                               progress=False)
    return root


@pytest.fixture()
def catalog(pristine, tmp_path) -> Path:
    shutil.copytree(pristine, tmp_path / "catalog")
    return tmp_path / "catalog"


def failing(catalog: Path, tmp_path: Path, profile: Path | None = None) -> list[dict]:
    with pytest.raises(DataValidationError) as info:
        validate_catalog(str(catalog), tmp_path / "report", profile_uri=str(profile)
                         if profile else None, progress=False)
    report = info.value.report
    assert json.loads(Path(report.summary_uri).read_text())["success"] is False
    return report.failures


def edit_table(catalog: Path, name: str, edit) -> None:
    path = catalog / f"{name}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edited = edit(frame)
    (frame if edited is None else edited).to_csv(path, index=False)


def first_image(catalog: Path) -> Path:
    return sorted((catalog / "images").iterdir())[0]


def row_of(catalog: Path, image: Path) -> int:
    products = pd.read_csv(catalog / "products.csv", dtype=str, keep_default_na=False)
    return int((products["image"] == f"images/{image.name}").to_numpy().argmax()) + 1


def test_good_catalog_passes_and_writes_report_docs_and_profile(catalog, tmp_path):
    profile = tmp_path / "profiles" / "last_good.json"
    report = validate_catalog(str(catalog), tmp_path / "report", profile_uri=str(profile),
                              progress=False)
    assert report.success and report.profile_saved and len(report.checks) > 25
    assert json.loads(profile.read_text())["row_count"] == 80
    assert Path(report.data_docs_uri).is_file()
    index = Path(report.data_docs_uri).read_text()
    assert "products" in index
    # offline: no CDN asset on any page, the index's tables written out (no script draws them)
    pages = [p.read_text() for p in Path(report.data_docs_uri).parent.rglob("*.html")]
    assert not any(re.search(r"<(script|link|img)\b[^>]*(src|href)=\"https?://", p)
                   for p in pages)
    assert not any("<script" in p for p in pages)
    links = re.findall(r'<a href="(validations/[^"]+\.html)"', index)
    assert len(links) >= 4 and all((Path(report.data_docs_uri).parent / unquote(link))
                                   .is_file() for link in links)
    assert "Success" in index
    summary = json.loads(Path(report.summary_uri).read_text())
    assert summary["success"] and summary["failures"] == 0


def test_empty_file(catalog, tmp_path):
    (catalog / "queries.csv").write_text("")
    [failure] = failing(catalog, tmp_path)
    assert failure["expectation"] == "table readable" and "file is empty" in failure["detail"]


def test_missing_columns(catalog, tmp_path):
    frame = pd.read_csv(catalog / "products.csv", dtype=str, keep_default_na=False)
    frame.rename(columns={"title": "name"}).to_csv(catalog / "products.csv", index=False)
    failures = failing(catalog, tmp_path)
    columns = next(f for f in failures if f["expectation"] == "expect_table_columns_to_match_set")
    assert "observed" in columns["detail"] and "name" in columns["detail"]


def test_wrong_column_set_in_judgments(catalog, tmp_path):
    edit_table(catalog, "judgments", lambda f: f.insert(3, "note", "x"))
    failures = failing(catalog, tmp_path)
    assert any(f["suite"] == "judgments" and f["expectation"] ==
               "expect_table_columns_to_match_set" for f in failures)


def test_duplicate_product_ids(catalog, tmp_path):
    edit_table(catalog, "products", lambda f: f.__setitem__(
        "product_id", [f["product_id"][0]] + list(f["product_id"][1:4]) + [f["product_id"][0]]
        + list(f["product_id"][5:])))
    failures = failing(catalog, tmp_path)
    unique = next(f for f in failures if f["expectation"] == "expect_column_values_to_be_unique")
    assert unique["column"] == "product_id" and unique["unexpected_count"] == 2
    assert [e["row"] for e in unique["examples"]] == [1, 5]
    assert unique["file"].endswith("products.csv")


@pytest.mark.parametrize("title", ["", None])
def test_null_or_empty_titles(catalog, tmp_path, title):
    edit_table(catalog, "products", lambda f: f.__setitem__(
        "title", [title if i == 2 else t for i, t in enumerate(f["title"])]))
    failures = failing(catalog, tmp_path)
    lengths = next(f for f in failures if f["column"] == "title")
    assert lengths["examples"][0]["row"] == 3


def test_non_utf8_bytes(catalog, tmp_path):
    path = catalog / "products.csv"
    path.write_bytes(path.read_bytes().replace(b"Made from", b"Made fr\xf6m", 1))
    failure = failing(catalog, tmp_path)[0]
    assert failure["expectation"] == "table readable"
    assert "not valid UTF-8" in failure["detail"] and "line 3" in failure["detail"]


@pytest.mark.parametrize("grade", ["-1", "7", "high"])
def test_bad_grades(catalog, tmp_path, grade):
    edit_table(catalog, "judgments", lambda f: f.__setitem__(
        "grade", [grade if i == 4 else g for i, g in enumerate(f["grade"])]))
    failures = failing(catalog, tmp_path)
    bad = next(f for f in failures if f["column"] == "grade")
    assert bad["examples"][0]["row"] == 5 and str(bad["examples"][0]["value"]) == grade


def test_judgments_for_unknown_products(catalog, tmp_path):
    edit_table(catalog, "judgments", lambda f: f.__setitem__(
        "product_id", ["P999999" if i == 0 else p for i, p in enumerate(f["product_id"])]))
    failure = next(f for f in failing(catalog, tmp_path) if f["column"] == "product_id")
    assert failure["examples"][0] == {"row": 1, "value": "P999999"}


def test_test_query_without_relevant_product(catalog, tmp_path):
    queries = pd.read_csv(catalog / "queries.csv", dtype=str)
    test_query = queries.loc[queries["split"] == "test", "query_id"].iloc[0]
    edit_table(catalog, "judgments", lambda f: f[f["query_id"] != test_query])
    failure = next(f for f in failing(catalog, tmp_path) if f["suite"] == "test_coverage")
    assert failure["examples"][0]["query_id"] == test_query


def image_failure(catalog: Path, tmp_path: Path, status: str) -> dict:
    failures = failing(catalog, tmp_path)
    usable = next(f for f in failures if f["suite"] == "image_status")
    example = usable["examples"][0]
    assert example["value"] == status, example
    return example


def test_zero_byte_jpeg(catalog, tmp_path):
    first_image(catalog).write_bytes(b"")
    example = image_failure(catalog, tmp_path, "empty_file")
    assert example["row"] == row_of(catalog, first_image(catalog))
    assert example["product_id"] == first_image(catalog).stem


def test_truncated_jpeg(catalog, tmp_path):
    image = first_image(catalog)
    image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])
    assert "truncated" in image_failure(catalog, tmp_path, "truncated")["detail"]


def test_png_renamed_jpg_is_legal(catalog, tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="PNG")
    first_image(catalog).write_bytes(buffer.getvalue())
    assert validate_catalog(str(catalog), tmp_path / "report", progress=False).success


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height (never decoded by the check)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def test_decompression_bomb(catalog, tmp_path):
    first_image(catalog).write_bytes(bomb_png(20000, 20000))
    assert "400000000 pixels" in image_failure(catalog, tmp_path, "too_many_pixels")["detail"]


def test_missing_image_file(catalog, tmp_path):
    first_image(catalog).unlink()
    assert "does not exist" in image_failure(catalog, tmp_path, "not_found")["detail"]


def test_too_many_products_without_photos(catalog, tmp_path):
    edit_table(catalog, "products", lambda f: f.__setitem__(
        "image", ["" if i % 2 else img for i, img in enumerate(f["image"])]))
    [failure] = failing(catalog, tmp_path)
    assert failure["suite"] == "image_status" and failure["unexpected_percent"] > 40


def test_row_count_halved_since_last_good_snapshot(catalog, tmp_path):
    profile = tmp_path / "last_good.json"
    validate_catalog(str(catalog), tmp_path / "first", profile_uri=str(profile),
                     progress=False)
    before = profile.read_bytes()
    keep = set(pd.read_csv(catalog / "products.csv", dtype=str)["product_id"][:40])
    edit_table(catalog, "products", lambda f: f[f["product_id"].isin(keep)])
    edit_table(catalog, "judgments", lambda f: f[f["product_id"].isin(keep)])
    failures = failing(catalog, tmp_path, profile)
    drift = next(f for f in failures if f["expectation"] == "row_count_change")
    assert drift["observed"] == -0.5 and "80 -> 40 rows" in drift["detail"]
    assert profile.read_bytes() == before  # a failed snapshot never becomes the baseline


def test_cli_exit_codes_and_summary(catalog, tmp_path, capsys):
    profile = tmp_path / "profiles" / "catalog.json"  # the README's command, with --profile
    assert main(["validate", "--catalog", str(catalog), "--profile", str(profile),
                 "--report-dir", str(tmp_path / "ok")]) == 0
    assert "PASSED" in capsys.readouterr().out and profile.is_file()
    first_image(catalog).write_bytes(b"")
    assert main(["validate", "--catalog", str(catalog), "--report-dir",
                 str(tmp_path / "bad")]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "image_status" in out and "validation.json" in out


def test_the_terminal_shows_our_log_lines_only(catalog, tmp_path):
    """As a person runs it: Great Expectations logs some 200 INFO lines when imported (and
    sets one of its loggers to INFO itself); stderr keeps ours and warnings only."""
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fusion_model.cli", "validate", "--catalog",
                           str(catalog), "--report-dir", str(tmp_path / "report")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "PASSED" in done.stdout
    ours = re.compile(r"\d{4}-\d\d-\d\d [\d:,]+ INFO fusion_model\.")
    assert [line for line in done.stderr.splitlines() if not ours.match(line)] == [], \
        done.stderr
    assert ours.match(done.stderr)  # and ours are still there


def test_a_relative_image_path_leaving_the_catalog(catalog, tmp_path):
    """The loader's rule (no '..' in a relative path) as a check of its own, even when the
    file it points at exists."""
    outside = tmp_path / "outside.jpg"
    shutil.copy(first_image(catalog), outside)
    edit_table(catalog, "products", lambda f: f.__setitem__(
        "image", ["../outside.jpg"] + list(f["image"][1:])))
    failures = failing(catalog, tmp_path)
    climbing = next(f for f in failures
                    if f["expectation"] == "expect_column_values_to_not_match_regex")
    assert climbing["column"] == "image" and climbing["unexpected_count"] == 1
    assert [e["row"] for e in climbing["examples"]] == [1]
    assert not any(f["suite"] == "image_status" for f in failures)  # the photo itself is fine


def test_data_docs_show_catalog_values_escaped(catalog, tmp_path):
    script = "<script>alert('docs')</script>"
    edit_table(catalog, "products", lambda f: f.__setitem__(
        "image", [f"../{script}.jpg" if i == 1 else v for i, v in enumerate(f["image"])]))
    failing(catalog, tmp_path)
    pages = [p.read_text(errors="replace") for p in (tmp_path / "report").rglob("*.html")]
    assert pages and not any(script in page for page in pages)
    assert any("&lt;script&gt;" in page for page in pages)
