"""Markdown tables for the bench's reports (report.py, report_projected.py): one helper, one dash."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

DASH = "—"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The table's lines (none when there are no rows); cells are str() of the values."""
    rows = [[str(c) for c in r] for r in rows]
    if not rows:
        return []
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
