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

    def __init__(self, text: str, fields: list[str]):
        self.text, self.fields = text, fields
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
            return f"{field.text} {operator} {self._value()}"
        self._expect("[")
        values = [self._value()]
        while self._peek() is not None and self._peek().text == ",":
            self.pos += 1
            values.append(self._value())
        self._expect("]")
        if len(values) > MAX_VALUES:
            raise ValueError(f"at most {MAX_VALUES} values in a list, got {len(values)}")
        return f"{field.text} {operator} [{', '.join(values)}]"

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
        token = self._take("a value")
        if token.kind == "string":
            raw = re.sub(r"\\(.)", r"\1", token.text[1:-1])
        elif token.kind == "word" and token.text.lower() not in KEYWORDS:
            raw = token.text
        else:
            self.pos -= 1
            self._fail("a value")
        return quote(raw)


def quote(value: str) -> str:
    """A Milvus string literal for ``value``: double quotes, backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_milvus(text: str, fields: list[str]) -> str:
    """The Milvus expression for the user's filter ``text`` over ``fields``; an empty or
    blank filter is no filter (""). InvalidFilterError says what is wrong and where."""
    if not text or not text.strip():
        return ""
    try:
        return _Parser(text, list(fields)).parse()
    except ValueError as error:
        raise InvalidFilterError(text, str(error), list(fields)) from None
