"""Reading the Annuaire Santé public extractions, streamed, bounded, checked.

Two files are read (docs/directory-national.md): the MSSanté correspondence file
(`Extraction_Correspondance_MSSante*.txt`: who has which MSSanté mailbox) and the
practitioners' activity file (`PS_LibreAcces_Personne_activite_*.txt`: names, professions,
specialties), each as published: a `.txt`, or inside the `.zip` the ANS serves. Both are
`|`-separated with one header line, in UTF-8 (a byte-order mark is allowed); anything
else is refused with the file, line and column, never guessed.

Everything a file controls is bounded: line length, field length, row count, the size a
zip member claims and the bytes it really inflates to. A row that names no one we can
route to (no identifier, a BAL type we do not know) is skipped and counted; a row that is
malformed refuses the whole file.
"""

from __future__ import annotations

import unicodedata
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pipeline.identifiers import ADELI, FINESS, IDNPS, RPPS, SIREN, SIRET, normalise_identifier
from pipeline.recipients.directory_csv import MAIL_ADDRESS, NATIONAL_VALUE_SHAPES
from pipeline.recipients.errors import DirectoryError

MSSANTE = "Extraction_Correspondance_MSSante"
PRACTITIONERS = "PS_LibreAcces_Personne_activite"
#: The MSSanté file's published width (FACTS.md §4); one trailing empty field is tolerated.
MSSANTE_COLUMNS = 31
MAX_LINE_BYTES = 8192
MAX_FIELD_CHARACTERS = 1000
MAX_ROWS = 5_000_000
MAX_MEMBER_BYTES = 4 * 1024**3
MAX_NAME = 200
MAX_ADDRESS = 254  # RFC 5321 path limit

#: Channel priority of national mailboxes: after any the laboratory set (0, 1, …); an
#: organisation's general mailbox (no service) before its services'.
NATIONAL_PRIORITY = 100

#: "Type identifiant structure" → the identifier the structure's number is (IDNST prefix).
STRUCTURE_TYPES = {"1": FINESS, "2": SIREN, "3": SIRET}
PERSON_BAL_TYPES = frozenset({"PER"})
STRUCTURE_BAL_TYPES = frozenset({"ORG", "APP", "CAB"})
_TRUE = frozenset({"true", "1", "o", "oui", "y", "yes"})
_FALSE = frozenset({"false", "0", "n", "non", "no"})


class NationalFileError(DirectoryError):
    """A national extraction refused as a whole; the message names file, line, column."""


@dataclass(frozen=True)
class Mailbox:
    """One MSSanté row as the directory keeps it."""

    line: int
    key: str
    kind: str
    id_type: str
    id_value: str
    name: str
    specialty: str
    address: str
    accepts_results: bool | None
    priority: int


@dataclass(frozen=True)
class Practitioner:
    """What the activity file adds to a person: name and specialty."""

    line: int
    key: str
    name: str
    specialty: str


@dataclass
class Skipped:
    """Rows that name no one routable, counted, with the first few lines for the log."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, where: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(where)


#: Called as reading goes: (bytes read, bytes in all, rows read).
ProgressFn = Callable[[int, int, int], None]


@dataclass
class Source:
    """One extraction file, wherever it sits (a path, or a member of a zip)."""

    label: str
    kind: str  # MSSANTE or PRACTITIONERS
    size: int
    path: Path
    member: str | None = None

    def open(self, stack: ExitStack) -> IO[bytes]:
        if self.member is None:
            return stack.enter_context(self.path.open("rb"))
        archive = stack.enter_context(zipfile.ZipFile(self.path))
        return stack.enter_context(archive.open(self.member))


def find_sources(paths: list[Path]) -> tuple[Source, Source | None]:
    """The MSSanté file (required: it says who has a mailbox, so a refresh without it
    would withdraw everyone) and the activity file (optional), among `paths`."""
    found: list[Source] = []
    for path in paths:
        before = len(found)
        if path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as archive:
                    for info in archive.infolist():
                        kind = _kind(Path(info.filename).name)
                        if kind is not None:
                            if info.file_size > MAX_MEMBER_BYTES:
                                raise NationalFileError(
                                    f"{path}:{info.filename}: {info.file_size} bytes inflated, "
                                    f"more than {MAX_MEMBER_BYTES}; nothing was imported"
                                )
                            found.append(
                                Source(
                                    f"{path}:{info.filename}",
                                    kind,
                                    info.file_size,
                                    path,
                                    info.filename,
                                )
                            )
            except (OSError, zipfile.BadZipFile) as error:
                raise NationalFileError(f"{path}: not a readable zip archive ({error})") from error
        else:
            kind = _kind(path.name)
            try:
                size = path.stat().st_size
            except OSError as error:
                raise NationalFileError(f"cannot read {path}: {error.strerror}") from error
            if kind is not None:
                found.append(Source(str(path), kind, size, path))
        if len(found) == before:
            raise NationalFileError(
                f"{path}: neither an {MSSANTE}*.txt nor a {PRACTITIONERS}_*.txt "
                "(nor a zip holding one); nothing was imported"
            )
    mssante = [s for s in found if s.kind == MSSANTE]
    practitioners = [s for s in found if s.kind == PRACTITIONERS]
    if len(mssante) != 1:
        raise NationalFileError(
            f"give exactly one {MSSANTE} file (found {len(mssante)}): it lists every mailbox, "
            "so an import without it would withdraw them all; nothing was imported"
        )
    if len(practitioners) > 1:
        raise NationalFileError(f"give at most one {PRACTITIONERS} file; nothing was imported")
    return mssante[0], (practitioners[0] if practitioners else None)


def _kind(name: str) -> str | None:
    if not name.lower().endswith(".txt"):
        return None
    for kind in (MSSANTE, PRACTITIONERS):
        if name.startswith(kind):
            return kind
    return None


def _plain(text: str) -> str:
    """A header name compared loosely: no accents, case or extra blanks."""
    decomposed = unicodedata.normalize("NFKD", text)
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).lower().split())


class _Reader:
    """Lines of one source, decoded and bounded, each split on `|`."""

    def __init__(self, source: Source, stream: IO[bytes]) -> None:
        self.source = source
        self.stream = stream
        self.line = 0
        self.read_bytes = 0
        self.header: list[str] = []

    def fail(self, message: str, column: int | None = None) -> NationalFileError:
        where = f"{self.source.label}:{self.line}:"
        if column is not None:
            name = self.header[column - 1] if 0 < column <= len(self.header) else ""
            where += f" column {column}" + (f" ({name})" if name else "") + ":"
        return NationalFileError(f"{where} {message}; nothing was imported")

    def read_header(self, rows: Iterator[list[str]]) -> list[str]:
        """The first line, kept so that errors name their column."""
        header = next(rows, None)
        if header is None:
            raise self.fail("empty file: no header line")
        self.header = header
        return header

    def rows(self) -> Iterator[list[str]]:
        while True:
            raw = self.stream.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            self.line += 1
            self.read_bytes += len(raw)
            if self.read_bytes > MAX_MEMBER_BYTES:
                raise self.fail(f"more than {MAX_MEMBER_BYTES} bytes")
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise self.fail(f"line longer than {MAX_LINE_BYTES} bytes")
            if self.line > MAX_ROWS + 1:
                raise self.fail(f"more than {MAX_ROWS} rows")
            try:
                text = raw.decode("utf-8-sig" if self.line == 1 else "utf-8")
            except UnicodeDecodeError as error:
                column = raw.count(b"|", 0, error.start) + 1
                raise self.fail(
                    f"not UTF-8 (byte 0x{raw[error.start]:02x}); the extraction is published "
                    "in UTF-8",
                    column,
                ) from error
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            if "\x00" in text:
                raise self.fail("NUL character", text.count("|", 0, text.index("\x00")) + 1)
            fields = text.split("|")
            for number, value in enumerate(fields, 1):
                if len(value) > MAX_FIELD_CHARACTERS:
                    raise self.fail(f"longer than {MAX_FIELD_CHARACTERS} characters", number)
            yield fields


def read_mailboxes(
    source: Source, skipped: Skipped, progress: ProgressFn | None = None, total: int = 0
) -> Iterator[Mailbox]:
    """Every routable row of the MSSanté file, in file order."""
    with ExitStack() as stack:
        reader = _Reader(source, source.open(stack))
        rows = reader.rows()
        header = reader.read_header(rows)
        width = len(header)
        if width == MSSANTE_COLUMNS + 1 and not header[-1].strip():
            width = MSSANTE_COLUMNS + 1
        elif width != MSSANTE_COLUMNS:
            raise reader.fail(
                f"the header has {width} columns, the published file {MSSANTE_COLUMNS}"
            )
        for column, expected in (
            (1, "bal"),
            (2, "adresse"),
            (5, "nationale"),
            (18, "materialisation"),
        ):
            if expected not in _plain(header[column - 1]):
                raise reader.fail(f"expected the published column here ({expected!r})", column)
        for fields in rows:
            if len(fields) != width:
                raise reader.fail(f"{len(fields)} columns, the header has {width}")
            mailbox = _mailbox(reader, fields, skipped)
            if mailbox is not None:
                yield mailbox
            if progress is not None and reader.line % 20_000 == 0:
                progress(reader.read_bytes, total, reader.line - 1)
        if progress is not None:
            progress(reader.read_bytes, total, reader.line - 1)


def _mailbox(reader: _Reader, fields: list[str], skipped: Skipped) -> Mailbox | None:
    bal_type = fields[0].strip().upper()
    address = fields[1].strip()
    if not address:
        raise reader.fail("no mailbox address", 2)
    if len(address) > MAX_ADDRESS or not MAIL_ADDRESS.fullmatch(address):
        raise reader.fail(f"{address[:80]!r} is not a mailbox address", 2)
    demat = fields[17].strip().lower()
    if demat in _TRUE:
        accepts: bool | None = True
    elif demat in _FALSE:
        accepts = False
    elif not demat:
        accepts = None
    else:
        raise reader.fail(f"{fields[17][:20]!r} is neither true nor false", 18)
    where = f"{reader.source.label}:{reader.line}"
    if bal_type in PERSON_BAL_TYPES:
        national = fields[4].strip()
        if not national and fields[2].strip() in ("0", "8") and fields[3].strip():
            national = fields[2].strip() + fields[3].strip()
        identifier = normalise_identifier(national, IDNPS) if national else None
        if identifier is None:
            skipped.add(f"{where}: a personal mailbox with no national identifier")
            return None
        if identifier.id_type not in (RPPS, ADELI):
            raise reader.fail(f"{national!r} is neither 8+RPPS nor 0+ADELI", 5)
        column = 5
        kind = "clinician"
        name = " ".join(part for part in (fields[9].strip(), fields[10].strip()) if part)
        specialty = fields[16].strip() or fields[14].strip()
        priority = NATIONAL_PRIORITY
    elif bal_type in STRUCTURE_BAL_TYPES:
        id_type = STRUCTURE_TYPES.get(fields[5].strip())
        number = fields[6].strip()
        if id_type is None or not number:
            skipped.add(f"{where}: an organisation's mailbox with no FINESS, SIREN or SIRET")
            return None
        pattern, _ = NATIONAL_VALUE_SHAPES[id_type]
        if not pattern.fullmatch(number) and number[:1] == fields[5].strip():
            number = number[1:]  # an IDNST: type prefix + number
        identifier = normalise_identifier(number, id_type)
        assert identifier is not None
        column = 7
        kind = "organisation"
        name = fields[18].strip() or fields[19].strip()
        service = fields[7].strip()
        if service:
            name = f"{name} — {service}" if name else service
        specialty = ""
        priority = NATIONAL_PRIORITY + (1 if service else 0)
    else:
        skipped.add(f"{where}: BAL type {bal_type!r} is not one we route to")
        return None
    pattern, shape = NATIONAL_VALUE_SHAPES[identifier.id_type]
    if not pattern.fullmatch(identifier.value):
        raise reader.fail(f"an {identifier.id_type} is {shape}, not {identifier.value!r}", column)
    key = f"{identifier.id_type.lower()}-{identifier.value}"
    return Mailbox(
        line=reader.line,
        key=key,
        kind=kind,
        id_type=identifier.id_type,
        id_value=identifier.value,
        name=(name or key)[:MAX_NAME],
        specialty=specialty[:MAX_NAME],
        address=address,
        accepts_results=accepts,
        priority=priority,
    )


#: The activity file's columns we read, by their published names (compared loosely).
_PRACTITIONER_COLUMNS = {
    "national": "identification nationale pp",
    "last": "nom d'exercice",
    "first": "prenom d'exercice",
    "profession": "libelle profession",
    "specialty": "libelle savoir-faire",
}


def read_practitioners(
    source: Source, progress: ProgressFn | None = None, done: int = 0, total: int = 0
) -> Iterator[Practitioner]:
    """Name and specialty of each person row of the activity file (columns found by name:
    the file has some fifty, and has grown before)."""
    with ExitStack() as stack:
        reader = _Reader(source, source.open(stack))
        rows = reader.rows()
        header = reader.read_header(rows)
        plain = [_plain(name) for name in header]
        at: dict[str, int] = {}
        for what, name in _PRACTITIONER_COLUMNS.items():
            if name not in plain:
                raise reader.fail(f"no column named {name!r} in the header")
            at[what] = plain.index(name)
        width = len(header)
        for fields in rows:
            if len(fields) != width:
                raise reader.fail(f"{len(fields)} columns, the header has {width}")
            national = fields[at["national"]].strip()
            identifier = normalise_identifier(national, IDNPS) if national else None
            if identifier is not None and identifier.id_type in (RPPS, ADELI):
                name = " ".join(
                    part
                    for part in (fields[at["last"]].strip(), fields[at["first"]].strip())
                    if part
                )
                specialty = fields[at["specialty"]].strip() or fields[at["profession"]].strip()
                yield Practitioner(
                    reader.line,
                    f"{identifier.id_type.lower()}-{identifier.value}",
                    name[:MAX_NAME],
                    specialty[:MAX_NAME],
                )
            if progress is not None and reader.line % 20_000 == 0:
                progress(done + reader.read_bytes, total, reader.line - 1)
        if progress is not None:
            progress(done + reader.read_bytes, total, reader.line - 1)
