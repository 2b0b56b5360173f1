"""Exceptions with messages that say what broke and how to fix it."""

from __future__ import annotations


class FusionModelError(Exception):
    """Base class of every error this package raises on purpose."""


class StorageError(FusionModelError):
    """A path or object URI cannot be read or written."""


class CatalogError(FusionModelError):
    """A catalog file breaks the catalog format contract.

    The message names the file, the offending rows (1-based data rows, as a
    spreadsheet shows them below the header) and the rule that was broken.
    """

    def __init__(self, file: str, rule: str, rows: list[int] | None = None, detail: str = ""):
        self.file = file
        self.rule = rule
        self.rows = list(rows or [])
        self.detail = detail
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.file
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:10])
            more = f" (+{len(self.rows) - 10} more)" if len(self.rows) > 10 else ""
            where += f", row{'s' if len(self.rows) > 1 else ''} {shown}{more}"
        message = f"{where}: {self.rule}"
        return f"{message}: {self.detail}" if self.detail else message
