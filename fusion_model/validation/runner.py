"""Validate a catalog snapshot before anything trains on it.

``validate_catalog`` reads the raw tables (so that every problem is reported, not only
the first), runs the Great Expectations suites on them and on derived tables, checks every
photo, compares the snapshot with the last one that passed, and writes a JSON summary plus
GX Data Docs HTML. It raises ``DataValidationError`` naming the failing checks; nothing is
written to the profile store unless everything passed.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from fusion_model import storage
from fusion_model.data.catalog import resolve_image
from fusion_model.data.splits import SPLITS
from fusion_model.data.tables import find_table, read_table, table_files
from fusion_model.errors import BadInputError, CatalogError
from fusion_model.validation import suites
from fusion_model.validation.drift import (
    DriftBounds,
    compare,
    load_profile,
    profile,
    save_profile,
)
from fusion_model.validation.images import check_images

log = logging.getLogger(__name__)
MAX_EXAMPLES = 20
TEXT_COLUMNS = {"products": ("product_id", "title", "description", "image"),
                "queries": ("query_id", "text", "split"),
                "judgments": ("query_id", "product_id")}


@dataclass(frozen=True)
class ValidationSettings:
    limits: suites.Limits = field(default_factory=suites.Limits)
    min_image_side: int = 32               # pixels, shorter side
    max_image_pixels: int = 40_000_000     # decompression-bomb guard, checked from the header
    drift: DriftBounds = field(default_factory=DriftBounds)
    workers: int = 8                       # image-checking threads


@dataclass
class ValidationReport:
    success: bool
    catalog: str
    checks: list[dict]
    summary_uri: str
    data_docs_uri: str | None
    seconds: float
    profile_saved: bool = False

    @property
    def failures(self) -> list[dict]:
        return [c for c in self.checks if not c["success"]]

    def describe(self, limit: int = 10) -> str:
        """One line per failing check: where, what, how many, first rows."""
        lines = []
        for check in self.failures[:limit]:
            rows = [e["row"] for e in check.get("examples", []) if "row" in e][:5]
            where = check["file"] + (f" rows {rows}" if rows else "")
            count = check.get("unexpected_count")
            lines.append(f"  - {check['suite']}: {check['expectation']}"
                         f"{'(' + check['column'] + ')' if check.get('column') else ''}"
                         f"{f': {count} unexpected' if count else ''} [{where}]"
                         f"{' - ' + check['detail'] if check.get('detail') else ''}")
            lines += [f"      {_describe_example(e)}" for e in check.get("examples", [])[:3]
                      if "value" in e or "detail" in e]
        if len(self.failures) > limit:
            lines.append(f"  ... and {len(self.failures) - limit} more")
        return "\n".join(lines)


def _describe_example(example: dict) -> str:
    """``row 6, product P000005: too_many_pixels (10000x10000 exceeds ...)``."""
    who = f"row {example['row']}"
    if example.get("product_id") is not None:
        who += f", product {example['product_id']}"
    what = repr(example["value"]) if "value" in example else ""
    if example.get("detail"):
        what = f"{example.get('value', '')} ({example['detail']})"
    return f"{who}: {what}"


class DataValidationError(BadInputError):
    """The catalog failed validation; ``report`` holds every check."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(f"catalog {report.catalog} failed {len(report.failures)} "
                         f"validation check(s):\n{report.describe()}\n"
                         f"report: {report.summary_uri}")


def validate_catalog(uri: str, report_dir: str | Path, profile_uri: str | None = None,
                     settings: ValidationSettings | None = None, progress: bool = True,
                     raise_on_failure: bool = True) -> ValidationReport:
    """Run every check on the catalog at ``uri``; write the report into ``report_dir``."""
    settings = settings or ValidationSettings()
    started = time.perf_counter()
    root = uri.rstrip("/") if storage.is_s3(uri) else os.path.abspath(uri)
    report_dir = Path(report_dir).expanduser().resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    checks: list[dict] = []
    tables, files = _read_tables(root, checks)
    runner = _GXRunner(report_dir / "data_docs")
    products = tables.get("products")
    if products is not None:
        _normalise_ids(products, ("product_id",))
        checks += runner.run("products", products, suites.products_suite(settings.limits),
                             files["products"])
        products["image_uri"] = pd.Series(_image_uris(root, products), index=products.index,
                                          dtype=object)
        images = check_images(products, settings.min_image_side, settings.max_image_pixels,
                              settings.workers, progress)
        checks += runner.run("image_status", images,
                             suites.image_status_suite(settings.limits), files["products"])
    checks += _query_checks(tables, files, runner, settings)
    current = profile(products, settings.drift.distribution_columns) \
        if products is not None else None
    if profile_uri and current is not None:
        checks += _drift_checks(current, profile_uri, settings.drift)
    success = bool(checks) and all(c["success"] for c in checks)
    report = ValidationReport(success, root, checks, str(report_dir / "validation.json"),
                              runner.index_path(), time.perf_counter() - started)
    if success and profile_uri and current is not None:
        save_profile(profile_uri, {"catalog": root, **current})
        report.profile_saved = True
    _write_summary(report)
    log.info("validation of %s: %s (%d checks, %d failed) in %.1fs", root,
             "passed" if success else "FAILED", len(checks), len(report.failures),
             report.seconds)
    if not success and raise_on_failure:
        raise DataValidationError(report)
    return report


def _read_tables(root: str, checks: list[dict]) -> tuple[dict, dict]:
    """Raw tables (no contract checks, so GX sees every problem) and their file URIs."""
    listed = table_files(root)
    tables, files = {}, {}
    if not listed:
        checks.append(_file_check("catalog", root, "catalog directory exists and has files",
                                  False, "does not exist or is empty"))
        return tables, files
    for name in ("products", "queries", "judgments"):
        try:
            found = find_table(root, name, listed)
        except CatalogError as exc:
            checks.append(_file_check(name, exc.file, "exactly one table file", False, str(exc)))
            continue
        if found is None:
            if name == "products":
                checks.append(_file_check(name, root, "products table present", False,
                                          "expected products.parquet, .csv or .jsonl"))
            continue
        files[name] = found
        try:
            tables[name] = read_table(found, TEXT_COLUMNS[name]).reset_index(drop=True)
            checks.append(_file_check(name, found, "table readable", True))
        except CatalogError as exc:
            checks.append(_file_check(name, found, "table readable", False, str(exc)))
    if ("queries" in files) != ("judgments" in files):
        checks.append(_file_check("catalog", root, "queries and judgments come together",
                                  False, "one of the two tables is missing"))
    return tables, files


def _file_check(suite: str, file: str, expectation: str, success: bool,
                detail: str = "") -> dict:
    return {"suite": suite, "expectation": expectation, "column": None, "success": success,
            "unexpected_count": 0 if success else None, "file": file, "examples": [],
            "detail": detail}


def _normalise_ids(frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Ids are strings by contract (numbers in JSON/parquet are accepted as strings)."""
    for column in columns:
        if column in frame.columns:
            frame[column] = frame[column].map(lambda v: v if v is None or v != v else str(v))


def _as_number(value):
    """'2' -> 2 and 2.0 -> 2 (CSV columns with one bad value stay text); others unchanged."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() else number


def _image_uris(root: str, products: pd.DataFrame) -> list[str | None]:
    if "image" not in products.columns:
        return [None] * len(products)
    return [resolve_image(root, v.strip()) if isinstance(v, str) and v.strip() else None
            for v in products["image"]]


def _query_checks(tables: dict, files: dict, runner: _GXRunner,
                  settings: ValidationSettings) -> list[dict]:
    queries, judgments = tables.get("queries"), tables.get("judgments")
    if queries is None or judgments is None:
        return []
    limits = settings.limits
    _normalise_ids(queries, ("query_id",))
    _normalise_ids(judgments, ("query_id", "product_id"))
    if "grade" in judgments.columns:
        judgments["grade"] = judgments["grade"].map(_as_number)
    checks = runner.run("queries", queries, suites.queries_suite(limits), files["queries"])
    products = tables.get("products")
    product_ids = products["product_id"].dropna().tolist() if products is not None else []
    query_ids = queries["query_id"].dropna().tolist() if "query_id" in queries else []
    checks += runner.run("judgments", judgments, suites.judgments_suite(product_ids, query_ids),
                         files["judgments"])
    if "split" in queries.columns:
        counts = pd.DataFrame({"split": list(SPLITS),
                               "queries": [int((queries["split"] == s).sum()) for s in SPLITS]})
        checks += runner.run("split_counts", counts, suites.split_counts_suite(limits),
                             files["queries"], key="split")
        checks += runner.run("test_coverage", _test_coverage(queries, judgments),
                             suites.test_coverage_suite(), files["queries"], key="query_id")
    return checks


def _test_coverage(queries: pd.DataFrame, judgments: pd.DataFrame) -> pd.DataFrame:
    """Best judged grade of every test query (0 when it has no judgment)."""
    test_ids = queries.loc[queries["split"] == "test", "query_id"]
    grades = pd.to_numeric(judgments.get("grade"), errors="coerce")
    best = pd.Series(grades.to_numpy(), index=judgments.get("query_id")).groupby(level=0).max() \
        if "query_id" in judgments else pd.Series(dtype=float)
    return pd.DataFrame({"query_id": test_ids.to_numpy(),
                         "best_grade": [float(best.get(q, 0) or 0) for q in test_ids]})


def _drift_checks(current: dict, profile_uri: str, bounds: DriftBounds) -> list[dict]:
    last = load_profile(profile_uri)
    if last is None:
        log.info("no last good profile at %s: drift checks start with this snapshot",
                 profile_uri)
        return []
    return [{"suite": "drift", "expectation": f["name"], "column": None,
             "success": f["success"], "unexpected_count": None,
             "file": f"{profile_uri} (last good: {last.get('catalog')})", "examples": [],
             "observed": f["observed"], "bound": f["bound"], "detail": f["detail"]}
            for f in compare(current, last, bounds)]


def _write_summary(report: ValidationReport) -> None:
    payload = asdict(report)
    payload["failures"] = len(report.failures)
    Path(report.summary_uri).write_text(json.dumps(payload, indent=2, default=str))


class _GXRunner:
    """One ephemeral GX context; each table is validated through a checkpoint that
    updates the Data Docs site in ``docs_dir``."""

    def __init__(self, docs_dir: Path):
        import great_expectations as gx

        self.gx = gx
        self.docs_dir = docs_dir
        self.context = gx.get_context(mode="ephemeral")
        self._quiet()
        for site in list(self.context.get_site_names()):
            self.context.delete_data_docs_site(site)
        self.context.add_data_docs_site(site_name="fusion_model", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
        self.source = self.context.data_sources.add_pandas("catalog")

    def _quiet(self) -> None:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)

    def index_path(self) -> str | None:
        index = self.docs_dir / "index.html"
        return str(index) if index.exists() else None

    def run(self, name: str, frame: pd.DataFrame, suite, file: str,
            key: str | None = None) -> list[dict]:
        gx = self.gx
        batch = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(
            "all")
        suite = self.context.suites.add(suite)
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(data=batch, suite=suite, name=name))
        checkpoint = self.context.checkpoints.add(gx.Checkpoint(
            name=f"{name}_checkpoint", validation_definitions=[definition],
            actions=[], result_format={"result_format": "COMPLETE"}))
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        checks = []
        for validation in result.run_results.values():
            for item in validation.results:
                checks.append(_to_check(name, item, frame, file, key))
        self._write_docs(result)
        return checks

    def _write_docs(self, result) -> None:
        """Data Docs from results whose catalog values are HTML-escaped (GX renders them
        verbatim: a title holding a script ran in the docs and in MLflow's artifact view)."""
        store = self.context.validation_results_store
        for identifier, validation in result.run_results.items():
            for item in validation.results:
                item.result = _escaped(item.result or {})
            store.set(identifier, validation)
        self.gx.checkpoint.UpdateDataDocsAction(name="docs").run(checkpoint_result=result)


def _escaped(value):
    """Every string in ``value`` (nested lists and dicts too) HTML-escaped."""
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_escaped(v) for v in value)
    return value


def _to_check(suite: str, item, frame: pd.DataFrame, file: str, key: str | None) -> dict:
    config = item.expectation_config
    column = config.kwargs.get("column") or config.kwargs.get("column_list")
    result = item.result or {}
    indices = (result.get("unexpected_index_list") or [])[:MAX_EXAMPLES]
    examples = [_example(frame, i, column, key) for i in indices
                if isinstance(i, int) and i < len(frame)]
    detail = ""
    if item.exception_info and item.exception_info.get("raised_exception"):
        detail = str(item.exception_info.get("exception_message"))
    elif not item.success and result.get("observed_value") is not None:
        detail = f"observed {result['observed_value']}"
    return {"suite": suite, "expectation": config.type,
            "column": ", ".join(column) if isinstance(column, list) else column,
            "success": bool(item.success), "unexpected_count": result.get("unexpected_count"),
            "unexpected_percent": result.get("unexpected_percent"), "file": file,
            "examples": examples, "detail": detail}


def _example(frame: pd.DataFrame, index: int, column, key: str | None) -> dict:
    row = frame.iloc[index]
    example = {"row": index + 1}
    if key:
        example[key] = _plain(row[key])
    if isinstance(column, str) and column in frame.columns:
        example["value"] = _plain(row[column])
    if "detail" in frame.columns:
        example["product_id"] = _plain(row.get("product_id"))
        example["detail"] = row["detail"]
    return example


def _plain(value):
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value
