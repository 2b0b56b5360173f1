"""Search filters from people: attribute conditions parsed, checked and quoted here.

A filter is conditions on the collection's attribute fields, joined by ``and``/``or``
(``&&``/``||``) and grouped with parentheses::

    gender == Women and (colour in [red, "navy blue"] or pattern != striped)

Values are bare words or quoted strings; every value is written back as a quoted,
escaped string literal, so nothing a user types reaches Milvus as expression syntax.
``to_milvus`` returns the Milvus boolean expression or raises ``InvalidFilterError``
naming the position and what was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fusion_model.errors import InvalidFilterError

TOKEN = re.compile(r"""
    (?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op>==|!=|&&|\|\||[()\[\],])
    | (?P<word>[^\s()\[\],=!"'&|]+)
    )""", re.VERBOSE)
KEYWORDS = {"and": "and", "&&": "and", "or": "or", "||": "or", "in": "in", "not": "not"}
MAX_VALUES = 100
MAX_FILTER_CHARS = 2000
MAX_DEPTH = 16       # nested parentheses
MAX_CONDITIONS = 64  # conditions joined by and/or


@dataclass(frozen=True)
class Token:
    kind: str  # string | op | word
    text: str
    at: int


def tokens(text: str) -> list[Token]:
    found, at = [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return found
        match = TOKEN.match(text, at)
        if match is None:
            raise ValueError(f"unexpected {text[at]!r} at {at + 1} (unclosed quote, or a "
                             "lone '=', '!', '&' or '|')")
        found.append(Token(match.lastgroup, match.group(match.lastgroup), at))
        at = match.end()


class _Parser:
    """Recursive descent: or-expression > and-expression > group or condition."""

    def __init__(self, text: str, fields: list[str], facets: dict[str, dict] | None = None):
        self.text, self.fields, self.facets = text, fields, facets or {}
        if len(text) > MAX_FILTER_CHARS:
            raise ValueError(f"the filter has {len(text)} characters; at most "
                             f"{MAX_FILTER_CHARS}")
        self.items = tokens(text)
        self.pos = 0
        self.depth = 0
        self.conditions = 0

    def parse(self) -> str:
        if not self.items:
            raise ValueError("the filter is empty")
        expression = self._or()
        if self.pos < len(self.items):
            self._fail("'and', 'or' or the end")
        return expression

    def _peek(self) -> Token | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def _keyword(self) -> str | None:
        token = self._peek()
        if token is None or token.kind == "string":
            return None
        return KEYWORDS.get(token.text.lower())

    def _take(self, wanted: str) -> Token:
        token = self._peek()
        if token is None:
            self._fail(wanted)
        self.pos += 1
        return token

    def _expect(self, text: str) -> None:
        token = self._peek()
        if token is None or token.text != text:
            self._fail(repr(text))
        self.pos += 1

    def _fail(self, wanted: str):
        token = self._peek()
        where = (f"{token.text!r} at {token.at + 1}" if token is not None
                 else "the end of the filter")
        raise ValueError(f"expected {wanted}, found {where}")

    def _or(self) -> str:
        return self._joined("or", self._and)

    def _and(self) -> str:
        return self._joined("and", self._factor)

    def _joined(self, keyword: str, operand) -> str:
        """``operand (keyword operand)*``, parenthesised when there are several."""
        parts = [operand()]
        while self._keyword() == keyword:
            self.pos += 1
            parts.append(operand())
        return parts[0] if len(parts) == 1 else "(" + f" {keyword} ".join(parts) + ")"

    def _factor(self) -> str:
        token = self._peek()
        if token is not None and token.text == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ValueError(f"parentheses nest more than {MAX_DEPTH} deep at "
                                 f"{token.at + 1}")
            self.pos += 1
            inner = self._or()
            self._expect(")")
            self.depth -= 1
            return inner
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise ValueError(f"more than {MAX_CONDITIONS} conditions; use 'in [...]' for "
                             "many values of one field")
        return self._condition()

    def _condition(self) -> str:
        field = self._take("a field name")
        if field.kind != "word" or field.text.lower() in KEYWORDS:
            self.pos -= 1
            self._fail("a field name")
        if field.text not in self.fields:
            raise ValueError(f"unknown field {field.text!r} at {field.at + 1}; filterable "
                             f"fields: {', '.join(self.fields)}")
        operator = self._operator()
        if operator in ("==", "!="):
            values = self._stored(field.text, self._value())
            if len(values) == 1:
                return f"{field.text} {operator} {quote(values[0])}"
            operator = "in" if operator == "==" else "not in"
        else:
            self._expect("[")
            typed = [self._value()]
            while self._peek() is not None and self._peek().text == ",":
                self.pos += 1
                typed.append(self._value())
            self._expect("]")
            if len(typed) > MAX_VALUES:
                raise ValueError(f"at most {MAX_VALUES} values in a list, got {len(typed)}")
            values = list(dict.fromkeys(v for raw in typed
                                        for v in self._stored(field.text, raw)))
        return f"{field.text} {operator} [{', '.join(quote(v) for v in values)}]"

    def _stored(self, field: str, typed: str) -> list[str]:
        """The stored values ``typed`` means: those equal to it regardless of case when the
        field's values are known, else ``typed`` itself. A value the field never holds
        (all its values known) is an error naming them."""
        facet = self.facets.get(field)
        if not facet:
            return [typed]
        matching = [v for v in facet["values"] if v.casefold() == typed.casefold()]
        if matching:
            return matching
        if facet.get("complete"):
            raise ValueError(f"{field} has no value {typed!r}; its values: "
                             f"{', '.join(facet['values'][:20])}")
        return [typed]

    def _operator(self) -> str:
        token = self._peek()
        if token is not None and token.text in ("==", "!="):
            self.pos += 1
            return token.text
        if self._keyword() == "in":
            self.pos += 1
            return "in"
        if self._keyword() == "not":
            self.pos += 1
            if self._keyword() != "in":
                self._fail("'in' after 'not'")
            self.pos += 1
            return "not in"
        self._fail("'==', '!=', 'in' or 'not in'")

    def _value(self) -> str:
        """The typed value, unquoted and unescaped."""
        token = self._take("a value")
        if token.kind == "string":
            return re.sub(r"\\(.)", r"\1", token.text[1:-1])
        if token.kind == "word" and token.text.lower() not in KEYWORDS:
            return token.text
        self.pos -= 1
        self._fail("a value")


def quote(value: str) -> str:
    """A Milvus string literal for ``value``: double quotes, backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_milvus(text: str, fields: list[str], facets: dict[str, dict] | None = None) -> str:
    """The Milvus expression for the user's filter ``text`` over ``fields``; an empty or
    blank filter is no filter (""). With ``facets`` (index/facets.py) a value matches the
    stored values equal to it regardless of case. InvalidFilterError says what is wrong
    and where."""
    if not text or not text.strip():
        return ""
    try:
        return _Parser(text, list(fields), facets).parse()
    except ValueError as error:
        raise InvalidFilterError(text, str(error), list(fields),
                                 example_filter(list(fields), facets)) from None


def example_filter(fields: list[str], facets: dict[str, dict] | None = None) -> str:
    """A filter that works on these fields: ``gender == women`` from a known value."""
    for field in fields:
        values = (facets or {}).get(field, {}).get("values") or []
        if values:
            shown = values[0] if re.fullmatch(r"[\w.-]+", values[0]) else quote(values[0])
            return f"{field} == {shown}"
    return f'{fields[0]} == "..."' if fields else ""
