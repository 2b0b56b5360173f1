"""Expectation suites as code (Great Expectations 1.x), one builder per table.

Derived tables turn whole-catalog rules into row rules GX can check and explain:
``split_counts`` (queries per split), ``test_coverage`` (best grade per test query) and
``image_status`` (one row per product, in product order).
"""

from __future__ import annotations

from dataclasses import dataclass

import great_expectations as gx
import great_expectations.expectations as gxe

from fusion_model.data.catalog import GRADES, PRODUCT_ID_PATTERN
from fusion_model.data.splits import SPLITS


@dataclass(frozen=True)
class Limits:
    """Bounds the suites enforce; see ValidationSettings for the documented defaults."""

    max_title_length: int = 300
    max_description_length: int = 5000
    max_query_length: int = 200
    min_queries_per_split: int = 1
    max_missing_image_share: float = 0.1


def products_suite(limits: Limits) -> gx.ExpectationSuite:
    """Row rules for one batch of products; unique ids are checked over every batch by the
    runner (``expect_column_values_to_be_unique``, from id hashes)."""
    suite = gx.ExpectationSuite(name="products")
    for expectation in (
        gxe.ExpectTableColumnsToMatchSet(column_set=["product_id", "title", "description",
                                                     "image"], exact_match=False),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="product_id"),
        gxe.ExpectColumnValuesToMatchRegex(column="product_id",
                                           regex=f"^{PRODUCT_ID_PATTERN}$"),
        gxe.ExpectColumnValuesToNotBeNull(column="title"),
        gxe.ExpectColumnValuesToBeOfType(column="title", type_="str"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1,
                                                max_value=limits.max_title_length),
        gxe.ExpectColumnValueLengthsToBeBetween(column="description", min_value=0,
                                                max_value=limits.max_description_length),
        gxe.ExpectColumnValuesToNotMatchRegex(column="image", regex=RELATIVE_PATH_CLIMBING_OUT),
    ):
        suite.add_expectation(expectation)
    return suite


# A relative image path with a '..' step (the loader's catalog.climbs_out, as a regex for
# GX): not absolute, not scheme://, and '..' as a whole segment between slashes
RELATIVE_PATH_CLIMBING_OUT = (r"^\s*(?![A-Za-z][A-Za-z0-9+.-]*://)(?![/\\])"
                              r"(?:.*[/\\])?\.\.(?:[/\\].*)?\s*$")


def queries_suite(limits: Limits) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name="queries")
    for expectation in (
        gxe.ExpectTableColumnsToMatchSet(column_set=["query_id", "text", "split"],
                                         exact_match=False),
        gxe.ExpectColumnValuesToNotBeNull(column="query_id"),
        gxe.ExpectColumnValuesToBeUnique(column="query_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="text"),
        gxe.ExpectColumnValuesToBeOfType(column="text", type_="str"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1,
                                                max_value=limits.max_query_length),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
    ):
        suite.add_expectation(expectation)
    return suite


def judgments_suite(product_ids: list[str], query_ids: list[str]) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name="judgments")
    for expectation in (
        gxe.ExpectTableColumnsToMatchSet(column_set=["query_id", "product_id", "grade"],
                                         exact_match=True),
        gxe.ExpectColumnValuesToNotBeNull(column="grade"),
        gxe.ExpectColumnValuesToBeInSet(column="grade", value_set=list(GRADES)),
        gxe.ExpectColumnValuesToBeInSet(column="query_id", value_set=query_ids),
        gxe.ExpectColumnValuesToBeInSet(column="product_id", value_set=product_ids),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["query_id", "product_id"]),
    ):
        suite.add_expectation(expectation)
    return suite


def split_counts_suite(limits: Limits) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name="split_counts")
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
        column="queries", min_value=limits.min_queries_per_split))
    return suite


def test_coverage_suite() -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name="test_coverage")
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="best_grade", min_value=1))
    return suite


def image_status_suite(limits: Limits) -> gx.ExpectationSuite:
    """Referenced photos must be usable; missing photos are legal up to a share."""
    suite = gx.ExpectationSuite(name="image_status")
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="status",
                                                          value_set=["ok", "no_image"]))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(
        column="status", value_set=["ok"], mostly=1.0 - limits.max_missing_image_share))
    return suite
