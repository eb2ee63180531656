"""The one plain-text table printer of the command lines (demo, bench, loadtest)."""

from __future__ import annotations

from typing import Sequence

__all__ = ["format_table"]


def format_table(rows: Sequence[Sequence], header: Sequence[str], align: str | None = None) -> str:
    """Columns padded to their widest cell, two spaces apart, a rule under the header.

    ``align``: one character per column, ``<`` left or ``>`` right (default: every column right-aligned).
    Cells are printed with ``str``; format numbers before.
    """
    align = align or ">" * len(header)
    if len(align) != len(header) or set(align) - {"<", ">"}:
        raise ValueError(f"align must be one '<' or '>' per column ({len(header)}), got {align!r}")
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    bad = [i for i, row in enumerate(cells[1:]) if len(row) != len(header)]
    if bad:
        raise ValueError(f"rows {bad} do not have {len(header)} cells")
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(row, widths, align)).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(row) for row in cells[1:]])
