"""A self-contained HTML rendering of the report: one file, figures embedded as base64
PNG data URIs, inline CSS, no scripts and no external assets (CI artifacts open anywhere)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from boltzbench.reports.document import Block, Heading, Image, Items, Table, Text

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #1f2328; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.88em; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfbfc; }
code { background: #eff1f3; padding: 0 3px; border-radius: 3px; font-size: 0.92em; }
img { max-width: 100%; border: 1px solid #eee; }
h1, h2 { border-bottom: 1px solid #d8dee4; padding-bottom: 0.2em; }
td.regression { color: #b00020; font-weight: bold; }
"""


def inline(text: str) -> str:
    """Escape text, then turn `code` and **bold** into HTML."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped)


def _image(block: Image, folder: Path) -> str:
    path = folder / block.file
    if not path.is_file():
        return f"<p><em>missing figure {html.escape(block.file)}</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}"></p>'


def _table(block: Table) -> str:
    head = "".join(f"<th>{inline(h)}</th>" for h in block.header)
    rows = []
    for row in block.rows:
        cells = "".join(f'<td class="regression">{inline(c)}</td>' if c == "REGRESSION" else f"<td>{inline(c)}</td>"
                        for c in row)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(blocks: list[Block], folder: str | Path, title: str = "boltzbench report") -> str:
    """The whole report as one HTML document; images are read from ``folder``."""
    folder = Path(folder)
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            parts.append(f"<h{level}>{inline(block.text)}</h{level}>")
        elif isinstance(block, Text):
            parts.append(f"<p>{inline(block.text)}</p>")
        elif isinstance(block, Items):
            parts.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            parts.append(_table(block))
        elif isinstance(block, Image):
            parts.append(_image(block, folder))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
