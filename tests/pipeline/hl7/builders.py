"""Building HL7 text in tests by field number, so no one counts pipes by hand."""

from __future__ import annotations


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment (not MSH) with `fields` at their HL7 positions, empty ones in between."""
    last = max(fields) if fields else 0
    return "|".join([name] + [fields.get(i, "") for i in range(1, last + 1)])
