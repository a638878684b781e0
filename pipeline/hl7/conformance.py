"""Strict conformance notes from hl7apy, for people diagnosing a laboratory's feed.

Intake accepts what it can route safely; this goes further and asks hl7apy to parse each
segment strictly against its version's definition (a back-ported PRT, or a segment from a
later version, against the version that defines it):
data types, lengths, component counts, table-coded dates. A shifted OBR (a missing "|"),
a text too long for its field, a date that is not a date: each becomes one line an ops
engineer can show the lab. It costs milliseconds per segment, so it runs on demand
(`labdispatch inspect --strict`), never on the delivery path.
"""

from __future__ import annotations

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_segment

from pipeline.hl7 import reference
from pipeline.hl7.parse import Hl7Message


def strict_findings(message: Hl7Message) -> list[str]:
    """One line per segment hl7apy's strict parse or validation refuses, in message order."""
    d = message.delimiters
    encoding_chars = {
        "FIELD": d.field,
        "COMPONENT": d.component,
        "SUBCOMPONENT": d.subcomponent,
        "REPETITION": d.repetition,
        "ESCAPE": d.escape,
    }
    findings: list[str] = []
    for segment in message.segments:
        if segment.name.startswith("Z"):
            continue
        version = message.version
        if segment.name not in reference.native_segments(version):
            # Back-ported or later-version segments: check them against their own version.
            version = reference.BACKPORTED_SEGMENTS.get(segment.name) or (
                reference.first_defined_in(segment.name) or version
            )
        label = segment.name if segment.sequence == 1 else f"{segment.name}[{segment.sequence}]"
        try:
            parsed = parse_segment(
                segment.text,
                version=version,
                encoding_chars=encoding_chars,
                validation_level=VALIDATION_LEVEL.STRICT,
            )
            parsed.validate()
        except Exception as error:
            # hl7apy reports what it refuses with its own errors and with assorted built-in
            # ones (ValueError for a bad date, IndexError, ...): each is a finding, not a crash.
            findings.append(f"{label} (line {segment.line}): {_describe(error)}")
    return findings


def _describe(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
