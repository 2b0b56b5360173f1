"""Great Expectations' Data Docs, readable without the internet.

GX's pages load Bootstrap, jQuery and friends from CDNs, and its index page draws its
tables with that JavaScript: offline, or inside MLflow's artifact viewer (which runs no
scripts), the index is blank. ``make_offline`` removes every remote stylesheet and script,
adds a small inline stylesheet, and writes the index's tables as plain HTML.
"""

from __future__ import annotations

import ast
import html
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "<!-- fusion-model: offline -->"
REMOTE_LINK = re.compile(r"<link\b[^>]*\bhref=\"https?://[^>]*>\s*", re.I)
REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>\s*", re.I)
REMOTE_IMAGE = re.compile(r"<img\b[^>]*\bsrc=\"https?://[^>]*>", re.I)
INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)[^>]*>.*?</script>\s*", re.I | re.S)
TABLE_DATA = re.compile(r"\$\('#([\w-]+)'\)\.bootstrapTable\(\s*Object\.assign\(\s*\{\s*"
                        r"columns: (\[.*?\]),\s*data: (\[.*?\]),\s*toolbar:", re.S)
STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 16px 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } .cooltip .top, .d-none, .fa, .fas { display: none; }
.nav, .tab-content > .tab-pane { display: block; list-style: none; padding: 0; }
.text-success { color: #1a7f37; } .text-danger { color: #b00020; }
img { max-height: 48px; }
</style>"""


def make_offline(docs_dir: Path) -> int:
    """Rewrite every page of the Data Docs in ``docs_dir`` that is not offline yet;
    returns how many were rewritten."""
    rewritten = 0
    for page in docs_dir.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        if MARKER in text:
            continue
        page.write_text(offline_page(text), encoding="utf-8")
        rewritten += 1
    return rewritten


def offline_page(text: str) -> str:
    """One page without remote assets; tables that a script would draw written out."""
    tables = {table_id: static_table(columns, rows)
              for table_id, columns, rows in _script_tables(text)}
    text = REMOTE_LINK.sub("", text)
    text = REMOTE_SCRIPT.sub("", text)
    text = REMOTE_IMAGE.sub("", text)
    text = INLINE_SCRIPT.sub("", text)  # they all drive the remote libraries
    for table_id, table in tables.items():
        text = re.sub(rf"<table\b[^>]*\bid=\"{re.escape(table_id)}\"[^>]*>.*?</table>",
                      lambda _m, t=table: t, text, count=1, flags=re.S)
    return text.replace("</head>", f"{STYLE}\n{MARKER}\n</head>", 1)


def _script_tables(text: str) -> list[tuple[str, list[dict], list[dict]]]:
    """(table id, columns, rows) of each ``bootstrapTable`` call with inline data."""
    found = []
    for match in TABLE_DATA.finditer(text):
        try:
            columns = ast.literal_eval(match.group(2))
            rows = ast.literal_eval(match.group(3))
        except (ValueError, SyntaxError):
            log.debug("a Data Docs table of another shape is left to its script")
            continue
        found.append((match.group(1), columns, rows))
    return found


def static_table(columns: list[dict], rows: list[dict]) -> str:
    """An HTML table of ``rows``; a row with a ``_table_row_link_path`` links its first
    cell there. Cell values are GX's own HTML (catalog values in them are escaped)."""
    head = "".join(f"<th>{html.escape(c.get('title', c['field']))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for number, column in enumerate(columns):
            value = str(row.get(column["field"], ""))
            if number == 0 and row.get("_validation_success_text"):
                value += html.escape(row["_validation_success_text"])
            link = row.get("_table_row_link_path")
            if number == 0 and link:
                value = f"<a href=\"{html.escape(link, quote=True)}\">{value or 'open'}</a>"
            cells.append(f"<td>{value}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"
