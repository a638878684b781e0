"""Statistics rows as JSON, CSV or a terminal table: one rendering for the CLI and the API.

Columns come in the row dataclass's field order, then its derived columns (`DERIVED`, e.g.
adoption's `rate`), so a spreadsheet built on the CSV keeps working as rows are added.
A figure that does not apply (None) is JSON null, an empty CSV cell, "-" in a table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence
from typing import Any


def columns_of(row_type: type) -> list[str]:
    names = [f.name for f in dataclasses.fields(row_type)]
    return names + list(getattr(row_type, "DERIVED", ()))


def as_rows_json(rows: Sequence[Any]) -> list[dict[str, Any]]:
    return [{name: getattr(row, name) for name in columns_of(type(row))} for row in rows]


def as_csv(rows: Sequence[Any], row_type: type | None = None) -> str:
    """RFC 4180 (CRLF line ends, quoting where needed), header first; `row_type` gives the
    header when there are no rows."""
    names = _names(rows, row_type)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    if names:
        writer.writerow(names)
    for row in rows:
        writer.writerow(["" if value is None else value for value in _values(row, names)])
    return buffer.getvalue()


def as_table(rows: Sequence[Any], row_type: type | None = None) -> str:
    """Aligned columns: text to the left, figures to the right."""
    names = _names(rows, row_type)
    if not rows:
        return "(nothing in this period)"
    cells = [
        [_cell(name, value) for name, value in zip(names, _values(row, names), strict=True)]
        for row in rows
    ]
    numeric = [
        all(not isinstance(v, str) for v in (getattr(row, n) for row in rows)) for n in names
    ]
    widths = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(names)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(names), line(["-" * w for w in widths]), *map(line, cells)])


def _names(rows: Sequence[Any], row_type: type | None) -> list[str]:
    if rows:
        return columns_of(type(rows[0]))
    return columns_of(row_type) if row_type is not None else []


def _values(row: Any, names: Sequence[str]) -> list[Any]:
    return [getattr(row, name) for name in names]


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1%}" if name == "rate" else f"{value:.1f}"
    return str(value)
