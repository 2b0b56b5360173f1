"""Search filters typed by people: parsed, checked against the collection's fields and
quoted, so that nothing typed reaches Milvus as expression syntax."""

from __future__ import annotations

import pytest

from fusion_model.errors import InvalidFilterError
from fusion_model.index.filters import to_milvus

FIELDS = ["gender", "colour", "category", "pattern"]


@pytest.mark.parametrize("text, expected", [
    ("gender == Women", 'gender == "Women"'),
    ("colour != 'navy blue'", 'colour != "navy blue"'),
    ("colour in [red, \"navy blue\"]", 'colour in ["red", "navy blue"]'),
    ("colour not in [red]", 'colour not in ["red"]'),
    ("gender == Women and colour == red", '(gender == "Women" and colour == "red")'),
    ("gender == Women AND (colour == red || pattern == striped)",
     '(gender == "Women" and (colour == "red" or pattern == "striped"))'),
    ("gender == b or colour == d and pattern == f",
     '(gender == "b" or (colour == "d" and pattern == "f"))'),
    ("", ""),
    ("   ", ""),
])
def test_filters_become_quoted_milvus_expressions(text, expected):
    assert to_milvus(text, FIELDS) == expected


def test_quotes_and_backslashes_in_values_are_escaped_not_interpreted():
    assert to_milvus("gender == 'x\" or 1 == 1'", FIELDS) == 'gender == "x\\" or 1 == 1"'
    assert to_milvus('category == "a\\\\"', FIELDS) == 'category == "a\\\\"'
    assert to_milvus('category == "say \\"hi\\""', FIELDS) == 'category == "say \\"hi\\""'


@pytest.mark.parametrize("text, message", [
    ("brand == Nike", r"unknown field 'brand' at 1; filterable fields: gender, colour"),
    ("gender = Women", r"unexpected '=' at 8"),
    ("gender == ", r"expected a value, found the end of the filter"),
    ("gender == Women and", r"expected a field name, found the end"),
    ("gender Women", r"expected '==', '!=', 'in' or 'not in', found 'Women' at 8"),
    ("colour in [red, blue", r"expected '\]', found the end"),
    ("(gender == Women", r"expected '\)', found the end"),
    ("gender == Women colour == red", r"expected 'and', 'or' or the end, found 'colour' at 17"),
    ("gender == 'Women", r"unexpected \"'\" at 11 \(unclosed quote"),
    ("gender == and", r"expected a value, found 'and' at 11"),
    ("colour not [red]", r"expected 'in' after 'not'"),
])
def test_bad_filters_say_what_and_where(text, message):
    with pytest.raises(InvalidFilterError, match=message):
        to_milvus(text, FIELDS)


def test_lists_are_bounded():
    values = ", ".join(f"v{i}" for i in range(101))
    with pytest.raises(InvalidFilterError, match="at most 100 values"):
        to_milvus(f"colour in [{values}]", FIELDS)
