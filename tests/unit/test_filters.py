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


FACETS = {"gender": {"values": ["women", "men", "Women"], "complete": True},
          "colour": {"values": ["navy blue", "red"], "complete": False}}


def test_values_match_the_stored_ones_regardless_of_case():
    assert to_milvus("gender == WOMEN", FIELDS, FACETS) == 'gender in ["women", "Women"]'
    assert to_milvus("gender != Men", FIELDS, FACETS) == 'gender != "men"'
    assert to_milvus("colour in [RED, 'Navy Blue']", FIELDS, FACETS) == \
        'colour in ["red", "navy blue"]'
    assert to_milvus("gender not in [women]", FIELDS, FACETS) == \
        'gender not in ["women", "Women"]'
    # values not among the recorded ones of an incomplete list pass as typed
    assert to_milvus("colour == teal", FIELDS, FACETS) == 'colour == "teal"'
    assert to_milvus("pattern == Striped", FIELDS, FACETS) == 'pattern == "Striped"'


def test_a_value_the_field_never_holds_is_named_with_its_values():
    with pytest.raises(InvalidFilterError) as raised:
        to_milvus("gender == woman", FIELDS, FACETS)
    message = str(raised.value)
    assert "gender has no value 'woman'; its values: women, men, Women" in message
    assert "--filter" not in message and "example: gender == women" in message


def test_an_unknown_field_lists_the_fields_once():
    with pytest.raises(InvalidFilterError) as raised:
        to_milvus("size == M", FIELDS, FACETS)
    assert str(raised.value).count("filterable fields") == 1


def test_facets_are_recorded_most_frequent_first_and_read_defensively():
    import json

    import pandas as pd

    from fusion_model.index.facets import MAX_TAG_CHARS, facets_of, facets_tag, read_facets

    products = pd.DataFrame({"gender": ["women", "men", "women", None],
                             "colour": [f"c{i}" for i in range(4)]})
    facets = facets_of(products, ["gender", "colour", "missing"])
    assert facets["gender"] == {"values": ["women", "men"], "complete": True}
    assert set(facets) == {"gender", "colour"}
    assert read_facets(facets_tag(facets), ("gender",)) == {"gender": facets["gender"]}
    wide = {f"field{f}": {"values": [f"value-{i:05d}" * 5 for i in range(50)],
                          "complete": True} for f in range(4)}
    text = facets_tag(wide)
    assert len(text) <= MAX_TAG_CHARS
    assert not all(entry["complete"] for entry in json.loads(text).values())
    for bad in ("not json", "[1, 2]", '{"gender": "women"}', '{"gender": {"values": 3}}'):
        assert read_facets(bad, ("gender",)) == {}
    mixed = read_facets('{"gender": {"values": ["women", 7, ""], "complete": true}}',
                        ("gender",))
    assert mixed == {"gender": {"values": ["women"], "complete": False}}
