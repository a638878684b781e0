"""The HL7 v2 tokenizer: segments, fields, repetitions, components, and escapes.

This is the hot path every result crosses, so it is plain string splitting done lazily:
about 0.1 ms for a 15-segment ORU^R01, where a full hl7apy parse costs ~20 ms (see
benchmarks/intake_cost.py). Field numbers follow HL7: `segment.field(n)` is SEG-n for every
segment, MSH included, where MSH-1 is the field separator itself and MSH-2 the encoding
characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.hl7.errors import Location

SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")


@dataclass(frozen=True)
class Delimiters:
    """The separators a message declares in MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as the sender wrote it, so an answer can use the same characters."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_DELIMITERS = Delimiters()


class Segment:
    """One segment, split into fields on first use."""

    __slots__ = ("_fields", "delimiters", "line", "name", "sequence", "text")

    def __init__(self, text: str, delimiters: Delimiters, sequence: int, line: int) -> None:
        self.text = text
        self.name = text[:3]
        self.delimiters = delimiters
        self.sequence = sequence  # 1 for the first segment of this name, 2 for the next...
        self.line = line  # 1-based position in the message
        self._fields: list[str] | None = None

    @property
    def fields(self) -> list[str]:
        if self._fields is None:
            parts = self.text.split(self.delimiters.field)
            if self.name == "MSH":
                # MSH-1 is the separator itself: re-insert it so MSH-n is fields[n].
                parts.insert(1, self.delimiters.field)
            self._fields = parts
        return self._fields

    def field(self, number: int) -> str:
        """SEG-number, raw (still escaped); "" when absent."""
        fields = self.fields
        return fields[number] if number < len(fields) else ""

    def repetitions(self, number: int) -> list[str]:
        raw = self.field(number)
        if not raw:
            return []
        if self.name == "MSH" and number <= 2:
            return [raw]
        return raw.split(self.delimiters.repetition)

    def components(self, number: int, repetition: int = 0) -> list[str]:
        reps = self.repetitions(number)
        if repetition >= len(reps):
            return []
        if self.name == "MSH" and number <= 2:
            return reps  # the separators themselves, never split
        return reps[repetition].split(self.delimiters.component)

    def value(self, number: int, component: int = 1, subcomponent: int = 1) -> str:
        """The unescaped text of SEG-number.component.subcomponent (first repetition)."""
        if self.name == "MSH" and number <= 2:
            return self.field(number)  # the separators are data here, not structure
        return component_value(self.components(number), component, self.delimiters, subcomponent)

    def __repr__(self) -> str:
        return f"<Segment {self.name}[{self.sequence}]>"


def component_value(
    components: list[str], component: int, delimiters: Delimiters, subcomponent: int = 1
) -> str:
    """Unescaped text of one (sub)component; `component` and `subcomponent` are 1-based."""
    if component > len(components):
        return ""
    raw = components[component - 1]
    if delimiters.subcomponent and delimiters.subcomponent in raw:
        parts = raw.split(delimiters.subcomponent)
        raw = parts[subcomponent - 1] if subcomponent <= len(parts) else ""
    elif subcomponent > 1:
        return ""
    return unescape(raw, delimiters)


_FORMATTING = {".br": "\n", "H": "", "N": "", ".sp": "\n", ".fi": "", ".nf": "", ".in": ""}


def unescape(text: str, delimiters: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Resolve HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\ ...).

    Unknown sequences are kept as written: dropping them would silently change a value.
    """
    esc = delimiters.escape
    if not esc or esc not in text:
        return text
    out: list[str] = []
    i = 0
    length = len(text)
    while i < length:
        char = text[i]
        if char != esc:
            out.append(char)
            i += 1
            continue
        end = text.find(esc, i + 1)
        if end == -1:
            out.append(text[i:])
            break
        code = text[i + 1 : end]
        replacement = _resolve_escape(code, delimiters)
        out.append(text[i : end + 1] if replacement is None else replacement)
        i = end + 1
    return "".join(out)


def _resolve_escape(code: str, delimiters: Delimiters) -> str | None:
    simple = {
        "F": delimiters.field,
        "S": delimiters.component,
        "T": delimiters.subcomponent,
        "R": delimiters.repetition,
        "E": delimiters.escape,
        "P": delimiters.truncation,
    }
    if simple.get(code):
        return simple[code]
    for prefix, replacement in _FORMATTING.items():
        if code == prefix or (prefix.startswith(".") and code.startswith(prefix)):
            return replacement
    if code.startswith("X") and len(code) > 1 and len(code) % 2 == 1:
        try:
            return bytes.fromhex(code[1:]).decode("latin-1")
        except ValueError:
            return None
    return None


def escape(text: str, delimiters: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Make free text safe to place in one field (the reverse of `unescape`)."""
    esc = delimiters.escape
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in (
        (delimiters.field, "F"),
        (delimiters.component, "S"),
        (delimiters.subcomponent, "T"),
        (delimiters.repetition, "R"),
    ):
        out = out.replace(char, f"{esc}{code}{esc}")
    line_break = f"{esc}.br{esc}"
    return out.replace("\r\n", line_break).replace("\r", line_break).replace("\n", line_break)


def locate_offset(text: str, offset: int, field_separator: str = "|") -> Location:
    """The segment and field holding character `offset` of a CR-separated message."""
    start = text.rfind("\r", 0, offset) + 1
    name = text[start : start + 3]
    sequence = 1 + sum(1 for line in text[:start].split("\r") if line[:3] == name)
    field_number = text.count(field_separator, start, offset)
    if name == "MSH":
        field_number += 1
    return Location(name, sequence, field_number or None)
