"""The report as a list of blocks, rendered once as Markdown and once as HTML.

Text in blocks may use two inline Markdown forms, ```code``` and ``**bold**``; both
renderers understand them. Images are PNG files named relative to the report.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Items:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    file: str
    alt: str


Block = Heading | Text | Items | Table | Image


def table(header: list[str], rows: list[list[object]]) -> Table:
    """A table with every cell turned into text (None → '—')."""
    return Table(tuple(header), tuple(tuple(fmt(v) for v in row) for row in rows))


def fmt(value: object) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
