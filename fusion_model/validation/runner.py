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

import numpy as np
import pandas as pd

from fusion_model import storage
from fusion_model.data.catalog import resolve_image
from fusion_model.data.splits import SPLITS
from fusion_model.data.tables import find_table, iter_table, read_table, table_files
from fusion_model.errors import BadInputError, CatalogError
from fusion_model.memory import release_free_memory
from fusion_model.progress import progress_bar
from fusion_model.validation import suites
from fusion_model.validation.drift import (
    DriftBounds,
    compare,
    finish_profile,
    load_profile,
    merge_counts,
    profile_counts,
    save_profile,
)
from fusion_model.validation.images import check_images
from fusion_model.validation.offline_docs import make_offline

log = logging.getLogger(__name__)
MAX_EXAMPLES = 20
# Product rows validated at a time: a part's memory follows this, not the catalog.
PRODUCT_BATCH_ROWS = 20_000
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
    """Run every check on the catalog at ``uri``; write the report into ``report_dir``.

    The products table is read ``PRODUCT_BATCH_ROWS`` rows at a time (one part), then the
    catalog-wide rules run once (``finish_validation``); the Airflow DAGs run the same two
    halves as mapped ``validate_products_part`` tasks and one finishing task.
    """
    started = time.perf_counter()
    settings = settings or ValidationSettings()
    runner = _GXRunner(_report_dir(report_dir) / "data_docs")
    validate_products_part(uri, report_dir, settings=settings, progress=progress,
                           runner=runner)
    return finish_validation(uri, report_dir, profile_uri, settings, runner=runner,
                             started=started, raise_on_failure=raise_on_failure)


def validate_products_part(uri: str, report_dir: str | Path, part: int = 0, parts: int = 1,
                           settings: ValidationSettings | None = None,
                           progress: bool = True, runner: _GXRunner | None = None) -> dict:
    """Check the product rows of one part (batches ``part``, ``part + parts``, ...): GX
    products suite, every photo, profile counts and id hashes, saved under
    ``report_dir/parts`` for ``finish_validation``. Memory follows the batch size."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not one of 0..{parts - 1}")
    settings = settings or ValidationSettings()
    root, report_dir = catalog_root(uri), _report_dir(report_dir)
    runner = runner or _GXRunner(report_dir / "data_docs")
    products_uri = _products_file(root)
    summary = {"part": part, "parts": parts, "products_file": products_uri, "checks": [],
               "profile_counts": [], "rows": 0}
    ids: list[np.ndarray] = []
    if products_uri is not None:
        try:
            batches = iter_table(products_uri, TEXT_COLUMNS["products"], PRODUCT_BATCH_ROWS)
            for number, batch in enumerate(progress_bar(
                    batches, desc=f"validate products (part {part + 1}/{parts})",
                    unit="batch", show=progress)):
                if number % parts == part:
                    _validate_product_batch(batch, root, products_uri, runner, settings,
                                            summary, ids, first=number == part)
            summary["checks"].append(_file_check("products", products_uri, "table readable",
                                                 True))
        except CatalogError as exc:
            summary["checks"].append(_file_check("products", exc.file, "table readable",
                                                 False, str(exc)))
    _save_part(report_dir, summary, ids)
    return {k: v for k, v in summary.items() if k in ("part", "parts", "rows")}


def _validate_product_batch(batch: pd.DataFrame, root: str, file: str, runner: _GXRunner,
                            settings: ValidationSettings, summary: dict,
                            ids: list[np.ndarray], first: bool) -> None:
    """One batch's row rules, photos, profile counts and id hashes into ``summary``."""
    offset = int(batch.index[0]) if len(batch) else 0
    batch = batch.reset_index(drop=True)
    _normalise_ids(batch, ("product_id",))
    label = f"rows {offset + 1}-{offset + len(batch)}"
    summary["checks"] += runner.run("products", batch, suites.products_suite(settings.limits),
                                    file, row_offset=offset, label=label, docs=first)
    batch["image_uri"] = pd.Series(_image_uris(root, batch), index=batch.index, dtype=object)
    images = check_images(batch, settings.min_image_side, settings.max_image_pixels,
                          settings.workers, progress=False)
    summary["checks"] += runner.run("image_status", images,
                                    suites.image_status_suite(settings.limits), file,
                                    row_offset=offset, label=label, docs=first)
    summary["profile_counts"].append(profile_counts(batch, settings.drift.distribution_columns))
    summary["rows"] += len(batch)
    present = batch["product_id"].notna().to_numpy()
    ids.append(np.stack([_id_hashes(batch["product_id"][present]).view(np.int64),
                         offset + np.flatnonzero(present)]))
    release_free_memory()  # the batch's frames and GX's temporaries


def finish_validation(uri: str, report_dir: str | Path, profile_uri: str | None = None,
                      settings: ValidationSettings | None = None, parts: int = 1,
                      runner: _GXRunner | None = None, started: float | None = None,
                      raise_on_failure: bool = True) -> ValidationReport:
    """The catalog-wide rules over the saved parts: product ids unique across parts,
    queries and judgments (judged products must exist), split counts, test coverage,
    drift; then the summary, the Data Docs and (all passed) the new profile."""
    started = time.perf_counter() if started is None else started
    settings = settings or ValidationSettings()
    root, report_dir = catalog_root(uri), _report_dir(report_dir)
    runner = runner or _GXRunner(report_dir / "data_docs")
    checks: list[dict] = []
    tables, files = _read_tables(root, checks)
    loaded = [_load_part(report_dir, part, parts) for part in range(parts)]
    product_parts = [p for p in loaded if p["products_file"] == files.get("products")
                     and "products" in files]
    current = None
    hashes = np.zeros((2, 0), dtype=np.int64)
    if product_parts:
        checks += merge_checks([c for p in product_parts for c in p["checks"]])
        hashes = np.concatenate([p["ids"] for p in product_parts], axis=1)
        if all(c["success"] for c in checks
               if c["suite"] == "products" and c["expectation"] == "table readable"):
            checks.append(_unique_ids_check(hashes, files["products"]))
            current = finish_profile(merge_counts(
                [c for p in product_parts for c in p["profile_counts"]]))
    checks += _query_checks(tables, files, runner, settings, hashes)
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


def catalog_root(uri: str) -> str:
    return uri.rstrip("/") if storage.is_s3(uri) else os.path.abspath(uri)


def _report_dir(report_dir: str | Path) -> Path:
    path = Path(report_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _products_file(root: str) -> str | None:
    """The one products table, or None (``finish_validation`` reports why)."""
    try:
        return find_table(root, "products", table_files(root))
    except CatalogError:
        return None


def _part_path(report_dir: Path, part: int, parts: int, suffix: str) -> Path:
    return report_dir / "parts" / f"products-{part:05d}-of-{parts:05d}.{suffix}"


def _save_part(report_dir: Path, summary: dict, ids: list[np.ndarray]) -> None:
    """The part's ids (hash, row) then its summary, each written whole (rename)."""
    part, parts = summary["part"], summary["parts"]
    target = _part_path(report_dir, part, parts, "npy")
    target.parent.mkdir(parents=True, exist_ok=True)
    stacked = np.concatenate(ids, axis=1) if ids else np.zeros((2, 0), dtype=np.int64)
    with open(target.with_suffix(".npy.tmp"), "wb") as out:
        np.save(out, stacked)
    os.replace(target.with_suffix(".npy.tmp"), target)
    json_path = _part_path(report_dir, part, parts, "json")
    json_path.with_suffix(".tmp").write_text(json.dumps(summary, default=str))
    os.replace(json_path.with_suffix(".tmp"), json_path)


def _load_part(report_dir: Path, part: int, parts: int) -> dict:
    path = _part_path(report_dir, part, parts, "json")
    if not path.exists():
        raise FileNotFoundError(f"validation part {part + 1} of {parts} is missing ({path}): "
                                "run validate_products_part for it first")
    summary = json.loads(path.read_text())
    summary["ids"] = np.load(_part_path(report_dir, part, parts, "npy"))
    return summary


def _id_hashes(ids: pd.Series) -> np.ndarray:
    """A stable 64-bit hash per id (the same in every process and part)."""
    return pd.util.hash_pandas_object(ids.astype(str), index=False).to_numpy(np.uint64)


def _unique_ids_check(hashes: np.ndarray, file: str) -> dict:
    """product_id unique over the whole table (every part's ids), named by row and value."""
    check = _file_check("products", file, "expect_column_values_to_be_unique", True)
    check["column"] = "product_id"
    _, inverse, counts = np.unique(hashes[0], return_inverse=True, return_counts=True)
    repeated = np.sort(hashes[1][counts[inverse] > 1])
    if len(repeated):
        values = _product_ids_at(file, repeated[:MAX_EXAMPLES])
        check.update(success=False, unexpected_count=int(len(repeated)),
                     unexpected_percent=100.0 * len(repeated) / max(hashes.shape[1], 1),
                     examples=[{"row": int(row) + 1, "value": values.get(int(row))}
                               for row in repeated[:MAX_EXAMPLES]],
                     detail=f"{len(repeated)} rows share their product_id with another row")
    return check


def _product_ids_at(file: str, rows: np.ndarray) -> dict[int, str]:
    """The product_id of a few rows, read back from the table (failure path only)."""
    wanted, found = set(int(r) for r in rows), {}
    for batch in iter_table(file, TEXT_COLUMNS["products"], PRODUCT_BATCH_ROWS):
        for row in wanted.intersection(batch.index):
            found[row] = _plain(batch.at[row, "product_id"])
    return {row: None if value is None else str(value) for row, value in found.items()}


def merge_checks(checks: list[dict]) -> list[dict]:
    """Per-batch results of the same rule as one check over all rows: counts summed,
    the first examples kept, and a ``mostly`` rule decided on the whole table's share."""
    merged: dict[tuple, dict] = {}
    for check in checks:
        key = (check["suite"], check.get("rule"), check["expectation"], check["column"],
               check["file"])
        if key not in merged:
            merged[key] = {**check, "examples": list(check["examples"])}
            continue
        total = merged[key]
        total["examples"] = (total["examples"] + check["examples"])[:MAX_EXAMPLES]
        for name in ("unexpected_count", "element_count", "missing_count"):
            if check.get(name) is not None:
                total[name] = (total.get(name) or 0) + check[name]
        total["success"] = total["success"] and check["success"]
        total["detail"] = total["detail"] or check["detail"]
    for total in merged.values():
        _settle_share(total)
    return list(merged.values())


def _settle_share(check: dict) -> None:
    """Recompute the unexpected share (and a ``mostly`` rule's outcome) from the sums."""
    elements = check.get("element_count")
    if elements is None or check.get("unexpected_count") is None:
        return
    counted = elements - (check.get("missing_count") or 0)
    if counted <= 0:
        return
    share = check["unexpected_count"] / counted
    check["unexpected_percent"] = 100.0 * share
    if check.get("mostly") is not None and not check.get("raised"):
        check["success"] = 1.0 - share >= check["mostly"]


def _read_tables(root: str, checks: list[dict]) -> tuple[dict, dict]:
    """Raw queries and judgments (no contract checks, so GX sees every problem) and the
    three tables' file URIs; the products table is read by the parts."""
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
        if name == "products":
            continue
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
                  settings: ValidationSettings, product_hashes: np.ndarray) -> list[dict]:
    queries, judgments = tables.get("queries"), tables.get("judgments")
    if queries is None or judgments is None:
        return []
    limits = settings.limits
    _normalise_ids(queries, ("query_id",))
    _normalise_ids(judgments, ("query_id", "product_id"))
    if "grade" in judgments.columns:
        judgments["grade"] = judgments["grade"].map(_as_number)
    checks = runner.run("queries", queries, suites.queries_suite(limits), files["queries"])
    product_ids = _judged_products_present(judgments, product_hashes)
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


def _judged_products_present(judgments: pd.DataFrame, product_hashes: np.ndarray) -> list[str]:
    """The judged product ids that the products table holds (the judgments suite's value
    set: bounded by the judgments, not by the catalog)."""
    if "product_id" not in judgments:
        return []
    judged = pd.Series(judgments["product_id"].dropna().unique())
    present = np.isin(_id_hashes(judged).view(np.int64), product_hashes[0])
    return sorted(judged[present].astype(str))


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
            key: str | None = None, row_offset: int = 0, label: str = "",
            docs: bool = True) -> list[dict]:
        """Validate ``frame`` (rows ``row_offset + 1``...) with ``suite``; Data Docs are
        written when ``docs`` or when a rule failed."""
        gx = self.gx
        title = f"{name} {label}".strip()
        batch = self.source.add_dataframe_asset(title).add_batch_definition_whole_dataframe(
            "all")
        suite.name = title
        suite = self.context.suites.add(suite)
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(data=batch, suite=suite, name=title))
        checkpoint = self.context.checkpoints.add(gx.Checkpoint(
            name=f"{title}_checkpoint", validation_definitions=[definition],
            actions=[], result_format={"result_format": "COMPLETE"}))
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        checks = []
        for validation in result.run_results.values():
            for rule, item in enumerate(validation.results):
                checks.append(_to_check(name, item, frame, file, key, row_offset, rule))
        if docs or not result.success:
            self._write_docs(result)
        self._forget(title)
        return checks

    def _forget(self, title: str) -> None:
        """Drop a run's GX objects: the asset would otherwise keep its batch (the frame)
        alive, and memory would grow with every batch validated."""
        self.context.checkpoints.delete(f"{title}_checkpoint")
        self.context.validation_definitions.delete(title)
        self.source.delete_asset(title)
        batches = self.source.get_execution_engine().batch_manager
        batches.reset_batch_cache()
        batches.batch_data_cache.clear()  # the frames themselves (reset keeps them)

    def _write_docs(self, result) -> None:
        """Data Docs from results whose catalog values are HTML-escaped (GX renders them
        verbatim: a title holding a script ran in the docs and in MLflow's artifact view)."""
        store = self.context.validation_results_store
        for identifier, validation in result.run_results.items():
            for item in validation.results:
                item.result = _escaped(item.result or {})
            store.set(identifier, validation)
        self.gx.checkpoint.UpdateDataDocsAction(name="docs").run(checkpoint_result=result)
        make_offline(self.docs_dir)  # no CDN: readable offline and inside MLflow


def _escaped(value):
    """Every string in ``value`` (nested lists and dicts too) HTML-escaped."""
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_escaped(v) for v in value)
    return value


def _to_check(suite: str, item, frame: pd.DataFrame, file: str, key: str | None,
              row_offset: int = 0, rule: int = 0) -> dict:
    config = item.expectation_config
    column = config.kwargs.get("column") or config.kwargs.get("column_list")
    result = item.result or {}
    indices = (result.get("unexpected_index_list") or [])[:MAX_EXAMPLES]
    examples = [_example(frame, i, column, key, row_offset) for i in indices
                if isinstance(i, int) and i < len(frame)]
    detail = ""
    raised = bool(item.exception_info and item.exception_info.get("raised_exception"))
    if raised:
        detail = str(item.exception_info.get("exception_message"))
    elif not item.success and result.get("observed_value") is not None:
        detail = f"observed {result['observed_value']}"
    return {"suite": suite, "expectation": config.type,
            "column": ", ".join(column) if isinstance(column, list) else column,
            "success": bool(item.success), "unexpected_count": result.get("unexpected_count"),
            "unexpected_percent": result.get("unexpected_percent"), "file": file,
            "examples": examples, "detail": detail, "rule": rule,
            "element_count": result.get("element_count"),
            "missing_count": result.get("missing_count"),
            "mostly": config.kwargs.get("mostly"), "raised": raised}


def _example(frame: pd.DataFrame, index: int, column, key: str | None,
             row_offset: int = 0) -> dict:
    row = frame.iloc[index]
    example = {"row": row_offset + index + 1}
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
