"""HPRIM Santé records: delimiters declared by the H record, fields, escapes, locations."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.hprim.errors import RecordLocation
from pipeline.hprim.text import Line

#: `\S\` and friends, HPRIM's HL7-like escapes (S = component, R = repetition, E = escape,
#: F = field, T = sub-component); `\.br\` is a line break; any other is left as written.
_ESCAPE_NAMES = "SREFT"


@dataclass(frozen=True)
class Delimiters:
    field: str = "|"
    component: str = "~"
    repetition: str = "^"
    escape: str = "\\"
    subcomponent: str = "&"

    def unescape(self, value: str) -> str:
        escape = self.escape
        if not escape or escape not in value:
            return value
        pattern = re.escape(escape) + r"(\.br|[" + _ESCAPE_NAMES + r"])" + re.escape(escape)
        table = {
            "S": self.component,
            "R": self.repetition,
            "E": escape,
            "F": self.field,
            "T": self.subcomponent,
            ".br": "\n",
        }
        return re.sub(pattern, lambda match: table[match.group(1)], value)


@dataclass
class Record:
    """One logical record: its first line and any A continuation lines joined."""

    kind: str
    sequence: int  # rank among records of this kind in the file (1-based)
    lines: list[Line]
    text: str
    delimiters: Delimiters
    _fields: list[str] | None = field(default=None, repr=False)

    @property
    def line(self) -> int:
        return self.lines[0].number

    @property
    def fields(self) -> list[str]:
        if self._fields is None:
            self._fields = self.text.split(self.delimiters.field)
        return self._fields

    def field(self, number: int) -> str:
        """Field `number` as written, numbered as the specification does (type = 1)."""
        fields = self.fields
        return fields[number - 1] if 0 < number <= len(fields) else ""

    def repetitions(self, number: int) -> list[str]:
        raw = self.field(number)
        return raw.split(self.delimiters.repetition) if raw else []

    def value(self, number: int, component: int = 1, repetition: int = 0) -> str:
        """One component of one repetition, unescaped and stripped."""
        repetitions = self.repetitions(number)
        if repetition >= len(repetitions):
            return ""
        components = repetitions[repetition].split(self.delimiters.component)
        if component > len(components):
            return ""
        return self.delimiters.unescape(components[component - 1]).strip()

    def at(self, number: int | None = None) -> RecordLocation:
        return RecordLocation(self.kind, self.sequence, number, line=self.line)
