"""Load the recipient directory from a CSV file that operators keep in a spreadsheet.

The CSV is the operator's view of the directory: importing the same file twice changes
nothing, and editing a row then re-importing it updates that recipient in place. One bad
row never blocks the others: every row is checked completely before anything is written,
a row the database refuses is rolled back alone (see `directory_store`), and each problem
is reported with the physical line of the file and the column, so the operator can find
it in the spreadsheet.

This module reads and checks the file; `directory_store` writes the rows that pass.

Format (also in docs/directory-csv.md)
--------------------------------------
UTF-8 (a byte-order mark is allowed), comma-separated, standard CSV quoting (a value with a
comma, quote or line break is written in double quotes). The first row is the header;
column names are case-insensitive and may come in any order::

    key,kind,name,specialty,identifiers,local_codes,channels,certificate

- ``key`` (required): the directory's stable name for the recipient, unique in the file; no
  blanks, ``:`` or ``=`` (those mark identifiers and local codes in ``directory show``).
- ``kind`` (required): ``clinician``, ``organisation`` or ``patient``.
- ``name`` (required): the name shown to operators and printed on deliveries.
- ``specialty``: optional.
- ``identifiers``: national identifiers as ``TYPE:VALUE``, separated by ``;``. They are
  normalised first: ``IDNPS:810001234567`` is stored as ``RPPS:10001234567``. Only national
  types are allowed (RPPS, ADELI, FINESS, SIREN, SIRET, INS); a laboratory's own codes go
  in ``local_codes``. An identifier that another recipient already has is an error: it is
  never moved silently (remove it from the other recipient first, in an earlier row).
- ``local_codes``: ``LAB=CODE`` pairs separated by ``;``, where LAB is the laboratory's
  sending facility as it writes it in MSH-4. Laboratories are created on first mention.
- ``channels``: ``kind:address`` pairs separated by ``;``, most preferred first; kind is
  ``mail`` (an e-mail address), ``mailbox`` (a mailbox name) or ``https`` (an ``https://``
  URL). Only the first ``:`` separates kind from address.
- ``certificate``: path of a PEM certificate file, relative to the CSV file's folder
  (several paths may be separated by ``;``, and a file may hold several certificates).

Re-importing a row replaces that recipient's identifiers, local codes, channels and
certificates with the row's (an empty cell removes them all); a column left out of the
header leaves that part of every recipient untouched. Recipients missing from the file are
kept: the file updates the directory, it does not mirror it. Blank lines are ignored.

A header with unknown or missing required columns is one error, and nothing is imported.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy.orm import Session

from pipeline.identifiers import (
    ADELI,
    FINESS,
    INS,
    NATIONAL_TYPES,
    RPPS,
    SIREN,
    SIRET,
    Identifier,
    parse_identifier_text,
)
from pipeline.recipients.directory_store import (
    CertificateData,
    ImportReport,
    RowError,
    RowPlan,
    write_plans,
)
from pipeline.recipients.errors import UnreadableDirectoryFile
from pipeline.recipients.identifiers import DirectoryKey, address_context, stored_form
from pipeline.recipients.models import CHANNEL_KINDS, RECIPIENT_KINDS

__all__ = ["ImportReport", "RowError", "UnreadableDirectoryFile", "import_directory"]

COLUMNS = (
    "key",
    "kind",
    "name",
    "specialty",
    "identifiers",
    "local_codes",
    "channels",
    "certificate",
)
REQUIRED_COLUMNS = ("key", "kind", "name")

#: What a national identifier's value looks like; catches typos before they misroute.
NATIONAL_VALUE_SHAPES: dict[str, tuple[re.Pattern[str], str]] = {
    RPPS: (re.compile(r"\d{11}"), "11 digits"),
    ADELI: (re.compile(r"\d{9}"), "9 digits"),
    FINESS: (re.compile(r"\d[\dAB]\d{7}"), "9 characters"),
    SIREN: (re.compile(r"\d{9}"), "9 digits"),
    SIRET: (re.compile(r"\d{14}"), "14 digits"),
    INS: (re.compile(r"[\dAB]{15}"), "15 characters (the NIR with its key)"),
}
MAIL_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_KEY_FORBIDDEN = re.compile(r"[\s:=]")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # tab, LF, CR allowed
MAX_KEY = 64
MAX_NAME = 200
MAX_CODE = 64
MAX_ADDRESS = 500
#: The longest patient address that still fits the column once sealed (base64 of the
#: address with its nonce and tag, after the key id).
MAX_SEALED_ADDRESS = 320

T = TypeVar("T")

#: What the directory keeps as a patient's name (the name itself is not kept: routing
#: needs none, and the laboratory knows its patient).
PATIENT_NAME = "(patient)"


def import_directory(
    session: Session, path: Path, *, index: DirectoryKey | None = None
) -> ImportReport:
    """Create or update recipients from `path`; the caller commits.

    With `index` (the at-rest cipher: `labdispatch directory import` always gives it), a
    patient's identity is not kept in clear: the INS is stored as its keyed hash, which
    routing finds by, and the patient's name not at all (`PATIENT_NAME` instead). Without
    it (tests, tools with no storage key) rows are stored as written. A patient's channel
    addresses are sealed (`StorageCipher.seal_text`): the transport opens them at send time.

    Raises UnreadableDirectoryFile when the file cannot be read or decoded at all.
    """
    report = ImportReport()
    header, records = _read_csv(path)
    columns, header_error = _check_header(header)
    if header_error is not None:
        report.errors.append(header_error)
        return report

    plans: list[RowPlan] = []
    seen_keys: dict[str, int] = {}
    for line, cells in records:
        plan, errors = _plan_row(line, columns, cells, path.parent, seen_keys)
        if plan is None:
            report.errors.extend(errors)
            continue
        seen_keys[plan.key] = line
        if index is not None:
            plan, problem = _protected(plan, index)
            if problem is not None:
                report.errors.append(problem)
                continue
        plans.append(plan)

    write_plans(session, plans, report)
    report.errors.sort(key=lambda error: error.line)
    return report


# --- reading -------------------------------------------------------------------------------


def _protected(plan: RowPlan, index: DirectoryKey) -> tuple[RowPlan, RowError | None]:
    """The row as the directory keeps it: private identifiers hashed; a patient unnamed,
    their channel addresses sealed (an MSSanté patient address carries the INS)."""
    identifiers = plan.identifiers
    if identifiers is not None:
        identifiers = tuple(stored_form(identifier, index) for identifier in identifiers)
    if plan.kind != "patient":
        return dataclasses.replace(plan, identifiers=identifiers), None
    channels = plan.channels
    if channels is not None:
        channels = tuple(
            (kind, index.seal_text(address, address_context(plan.key, kind)))
            for kind, address in channels
        )
        if any(len(address) > MAX_ADDRESS for _, address in channels):
            return plan, RowError(
                plan.line,
                "channels",
                "a patient's address is kept sealed, which makes it longer: at most "
                f"{MAX_SEALED_ADDRESS} characters",
            )
    return (
        dataclasses.replace(plan, identifiers=identifiers, name=PATIENT_NAME, channels=channels),
        None,
    )


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and every non-blank record with the line it starts on."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UnreadableDirectoryFile(
            f"cannot read directory file {path}: {error.strerror or error}"
        ) from error
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UnreadableDirectoryFile(
            f"{path}:{line}: not UTF-8 (byte 0x{data[error.start]:02x}); "
            "save the file as UTF-8 and import it again"
        ) from error

    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise UnreadableDirectoryFile(
                f"{path}:{start}: not valid CSV ({error}); nothing was imported"
            ) from error
        if header is None:
            header = cells
            continue
        if not any(cell.strip() for cell in cells):
            continue
        records.append((start, cells))
    return header or [], records


def _check_header(header: list[str]) -> tuple[list[str], RowError | None]:
    columns = [name.strip().lower() for name in header]
    if not any(columns):
        return columns, RowError(1, "", "the header row is missing; " + _expected())
    problems = []
    unknown = [name for name in columns if name not in COLUMNS]
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    duplicated = sorted({name for name in columns if columns.count(name) > 1 and name})
    if unknown:
        problems.append("unknown column(s) " + ", ".join(repr(name) for name in unknown))
        if len(columns) == 1 and ";" in columns[0]:
            problems.append("the file seems to use ';' between columns: use ','")
    if missing:
        problems.append("missing required column(s) " + ", ".join(missing))
    if duplicated:
        problems.append("column(s) given twice: " + ", ".join(duplicated))
    if problems:
        message = "; ".join(problems) + f"; {_expected()}; nothing was imported"
        return columns, RowError(1, "", message)
    return columns, None


def _expected() -> str:
    return "expected " + ",".join(COLUMNS)


# --- checking a row ------------------------------------------------------------------------


def _plan_row(
    line: int,
    columns: Sequence[str],
    cells: list[str],
    base: Path,
    seen_keys: dict[str, int],
) -> tuple[RowPlan | None, list[RowError]]:
    errors: list[RowError] = []

    def problem(column: str, message: str) -> None:
        errors.append(RowError(line, column, message))

    if len(cells) > len(columns):
        problem(
            "",
            f"{len(cells)} values but the header has {len(columns)} columns "
            "(a value containing a comma must be in double quotes)",
        )
        return None, errors
    row = dict(zip(columns, [cell.strip() for cell in cells], strict=False))
    row.update({name: "" for name in columns[len(cells) :]})
    for column, cell in row.items():
        control = _CONTROL_CHARACTERS.search(cell)
        if control is not None:
            # NUL and friends: invisible in a spreadsheet, refused by PostgreSQL, never meant.
            problem(column, f"control character U+{ord(control.group()):04X} is not allowed")
    if errors:
        return None, errors

    key = row["key"]
    if not key:
        problem("key", "is required")
    elif len(key) > MAX_KEY:
        problem("key", f"is longer than {MAX_KEY} characters")
    elif _KEY_FORBIDDEN.search(key):
        problem("key", f"{key!r} may not contain blanks, ':' or '='")
    elif key in seen_keys:
        problem("key", f"{key!r} is already used on line {seen_keys[key]}")

    kind = row["kind"].lower()
    if kind not in RECIPIENT_KINDS:
        given = f"{row['kind']!r} is not a kind; " if row["kind"] else "is required; "
        problem("kind", f"{given}use one of {', '.join(RECIPIENT_KINDS)}")

    name = row["name"]
    if not name:
        problem("name", "is required")
    elif len(name) > MAX_NAME:
        problem("name", f"is longer than {MAX_NAME} characters")

    specialty = row.get("specialty", "") or None
    if specialty is not None and len(specialty) > MAX_NAME:
        problem("specialty", f"is longer than {MAX_NAME} characters")

    identifiers = _parse_cell(row, "identifiers", _identifiers, problem)
    local_codes = _parse_cell(row, "local_codes", _local_codes, problem)
    channels = _parse_cell(row, "channels", _channels, problem)
    certificates = _parse_cell(row, "certificate", lambda cell: _certificates(cell, base), problem)

    if errors:
        return None, errors
    plan = RowPlan(
        line=line,
        key=key,
        kind=kind,
        name=name,
        specialty=specialty,
        has_specialty="specialty" in row,
        identifiers=identifiers,
        local_codes=local_codes,
        channels=channels,
        certificates=certificates,
    )
    return plan, errors


class _Problem(Protocol):
    def __call__(self, column: str, message: str, /) -> None: ...


class _CellError(Exception):
    pass


def _parse_cell(
    row: dict[str, str],
    column: str,
    parse: Callable[[str], list[T]],
    problem: _Problem,
) -> tuple[T, ...] | None:
    if column not in row:
        return None
    try:
        return tuple(_unique(parse(row[column])))
    except _CellError as error:
        problem(column, str(error))
        return None


def _unique(items: Iterable[T]) -> Iterator[T]:
    seen: set[T] = set()
    for item in items:
        if item not in seen:
            seen.add(item)
            yield item


def _pieces(cell: str) -> Iterator[str]:
    for piece in cell.split(";"):
        piece = piece.strip()
        if piece:
            yield piece


def _identifiers(cell: str) -> list[Identifier]:
    found = []
    for piece in _pieces(cell):
        identifier = parse_identifier_text(piece)
        if identifier is None:
            raise _CellError(f"{piece!r} is not TYPE:VALUE (for example RPPS:10001234567)")
        if identifier.id_type not in NATIONAL_TYPES:
            raise _CellError(
                f"{piece!r}: {identifier.id_type} is not a national identifier type "
                f"({', '.join(sorted(NATIONAL_TYPES))}); "
                "a laboratory's own codes go in local_codes as LAB=CODE"
            )
        pattern, shape = NATIONAL_VALUE_SHAPES[identifier.id_type]
        if not pattern.fullmatch(identifier.value):
            raise _CellError(f"{piece!r}: an {identifier.id_type} is {shape}")
        found.append(Identifier(identifier.id_type, identifier.value))
    return found


def _local_codes(cell: str) -> list[tuple[str, str]]:
    found = []
    for piece in _pieces(cell):
        lab, sep, code = (part.strip() for part in piece.partition("="))
        if not sep or not lab or not code:
            raise _CellError(f"{piece!r} is not LAB=CODE (for example LABO-NORD=DR9)")
        if len(lab) > MAX_CODE or len(code) > MAX_CODE:
            raise _CellError(f"{piece!r}: laboratory and code are at most {MAX_CODE} characters")
        found.append((lab, code))
    return found


def _channels(cell: str) -> list[tuple[str, str]]:
    found = []
    for piece in _pieces(cell):
        kind, sep, address = piece.partition(":")
        kind, address = kind.strip().lower(), address.strip()
        if not sep or not address:
            raise _CellError(f"{piece!r} is not kind:address (for example mail:dr@example.org)")
        if kind not in CHANNEL_KINDS:
            raise _CellError(f"{piece!r}: channel kind must be one of {', '.join(CHANNEL_KINDS)}")
        if len(address) > MAX_ADDRESS:
            raise _CellError(f"{piece!r}: address is longer than {MAX_ADDRESS} characters")
        if kind == "mail" and not MAIL_ADDRESS.fullmatch(address):
            raise _CellError(f"{piece!r}: {address!r} is not an e-mail address")
        if kind == "https":
            parts = urlsplit(address)
            if parts.scheme != "https" or not parts.netloc:
                raise _CellError(f"{piece!r}: an https channel needs an https://host/... URL")
        found.append((kind, address))
    return found


def _certificates(cell: str, base: Path) -> list[CertificateData]:
    found: list[CertificateData] = []
    for piece in _pieces(cell):
        path = Path(piece)
        if not path.is_absolute():
            path = base / path
        try:
            data = path.read_bytes()
        except OSError as error:
            raise _CellError(f"cannot read {piece}: {error.strerror or error}") from error
        try:
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError as error:
            raise _CellError(f"{piece} is not a PEM certificate") from error
        found.extend(_certificate_data(certificate) for certificate in certificates)
    return found


def _certificate_data(certificate: x509.Certificate) -> CertificateData:
    return CertificateData(
        pem=certificate.public_bytes(Encoding.PEM).decode("ascii"),
        subject=certificate.subject.rfc4514_string(),
        fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )
