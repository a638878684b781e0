"""Read one delivery or disposition report (DSN, MDN) out of whatever bytes came back.

The return mailbox is the open internet's to write to: besides the reports we asked for it
gets auto-replies, spam, bounces in home-made formats, truncated or mangled mail. So
`parse_report` takes any bytes and always answers with a `Report`; what it cannot read is
`kind="unrecognised"` with a `reason` an operator can act on, never an exception. A
parser bug would otherwise stop the reader on one bad mail and leave every later receipt
unread.

The MIME walk is our own small one rather than the standard library's `email` parser: that
parser turns every `message/*` part into a nested message of its own, so the RFC 6533
`message/global-delivery-status` part (UTF-8, possibly base64) and the returned message
cannot be read from their bytes, and its header-object API raises on some malformed input.
Here every part is bytes plus unfolded header fields, each transfer encoding is undone
leniently, and nesting and part counts are bounded.

Only the fields the ledger matches on and shows are kept: message and envelope IDs,
disposition or per-recipient action and status, and the diagnostic, status and subject
lines, each cut to `MAX_TEXT_LENGTH`. The returned message's body is never kept: it may be
the sealed result itself or, from a misconfigured server, a decrypted copy with patient
data. Free text is stripped of control characters, so a report cannot forge log lines.

Formats: RFC 3464 (DSN), RFC 8098 (MDN; older RFC 2298 / 3798 dispositions such as
"failed" and "denied" are read too), RFC 6533 (`message/global-*` parts), RFC 6522
(`multipart/report`), RFC 3461 xtext in Original-Envelope-Id.
"""

from __future__ import annotations

import base64
import binascii
import logging
import quopri
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Literal

__all__ = [
    "MAX_ENVELOPE_ID_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_TEXT_LENGTH",
    "RecipientStatus",
    "Report",
    "ReportKind",
    "parse_report",
]

logger = logging.getLogger(__name__)

ReportKind = Literal["mdn", "dsn", "unrecognised"]

#: Longest diagnostic, status, subject or address line kept (characters); longer is cut.
MAX_TEXT_LENGTH = 500
#: Longest Message-ID kept, angle brackets included (characters). Ours are ~60; the ledger
#: column holds 250.
MAX_ID_LENGTH = 250
#: RFC 3461 caps ENVID at 100 characters.
MAX_ENVELOPE_ID_LENGTH = 100
#: A disposition or action is one token; anything longer is not one we can act on.
_MAX_TOKEN_LENGTH = 32
#: Bounds on the MIME walk, so a crafted mail cannot make parsing deep or slow.
_MAX_DEPTH = 8
_MAX_PARTS = 200

_MDN_PART_TYPES = frozenset(
    {"message/disposition-notification", "message/global-disposition-notification"}
)
_DSN_PART_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
#: Parts that carry the returned message's header section (and nothing else).
_HEADERS_PART_TYPES = frozenset(
    {"text/rfc822-headers", "message/rfc822-headers", "message/global-headers"}
)
#: Parts that carry the whole returned message: only its header section is read.
_MESSAGE_PART_TYPES = frozenset({"message/rfc822", "message/global"})
_ENCRYPTED_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})

#: DSN actions, the most decisive first: the order `Report.outcome` summarises by.
_ACTION_PRECEDENCE = ("failed", "delayed", "delivered", "relayed", "expanded")


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient block of a DSN: what became of the envelope for that address."""

    #: The address the reporting server tried, without its "rfc822;" type prefix.
    final_recipient: str | None
    #: The address as we gave it in RCPT TO (ORCPT), when the server kept it.
    original_recipient: str | None
    #: delivered / failed / delayed / relayed / expanded, lower case.
    action: str | None
    #: The RFC 3463 enhanced status code, e.g. "5.1.1"; the raw value if it is not one.
    status: str | None
    #: The remote server's own words, e.g. "smtp; 550 5.1.1 User unknown".
    diagnostic_code: str | None


@dataclass(frozen=True, slots=True)
class Report:
    """What one received report says about one of our envelopes.

    `kind` decides how to read the rest. For "mdn" and "dsn", `original_message_id` and
    `original_envelope_id` are the keys to the delivery (either may be missing: an MDN has
    no envelope id, a DSN may return no headers). For "unrecognised", `reason` says why in
    an operator's words; the keys are only filled when the mail was a report we could not
    finish reading (a status part without its required fields), never guessed from an
    auto-reply or a home-made bounce.
    """

    kind: ReportKind
    #: The envelope's Message-ID in "<...>" form.
    original_message_id: str | None = None
    #: The SMTP ENVID we gave, echoed by DSNs (RFC 3461 xtext decoded).
    original_envelope_id: str | None = None
    #: MDN: processed / displayed / deleted / dispatched (RFC 8098), "failed" when the
    #: report says processing failed (an "error" or "failed" modifier, an Error or Failure
    #: field), or an older type as written ("denied").
    disposition: str | None = None
    #: MDN: how the report was sent, e.g. "manual-action/MDN-sent-manually".
    disposition_mode: str | None = None
    #: MDN: the address whose client or gateway sent the report.
    final_recipient: str | None = None
    #: MDN: the Error, Failure or Warning field, when there is one.
    diagnostic: str | None = None
    #: DSN: one entry per recipient block, in the report's order.
    recipients: tuple[RecipientStatus, ...] = ()
    #: The report's own Subject, decoded.
    subject: str | None = None
    #: The report's own Message-ID: the same report read twice is recorded once.
    report_message_id: str | None = None
    #: Unrecognised: why, for the operator.
    reason: str | None = None

    @property
    def outcome(self) -> str | None:
        """One word for what happened: the MDN's disposition, or the most decisive DSN
        action (failed, then delayed, delivered, relayed, expanded). Our envelopes have
        one recipient each, so a DSN with several blocks is rare; when it happens a
        failure must not hide behind another address's success."""
        if self.kind == "mdn":
            return self.disposition
        if self.kind == "dsn":
            actions = {recipient.action for recipient in self.recipients}
            for action in _ACTION_PRECEDENCE:
                if action in actions:
                    return action
        return None


def parse_report(data: bytes) -> Report:
    """Read `data` (one whole mail, CRLF or LF line ends) as a DSN or MDN.

    Never raises: anything that is not a report we can read is `kind="unrecognised"`
    with the reason."""
    try:
        return _parse(bytes(data))
    except Exception as error:  # the reader must outlive our own bugs, see module docstring
        # The type only: an exception's text may quote the mail, which may quote a result.
        logger.warning(
            "receipt parser failed on a mail (%s); recorded as unrecognised",
            type(error).__name__,
        )
        return Report(
            kind="unrecognised",
            reason=f"the report could not be read (internal error {type(error).__name__})",
        )


# --- the MIME walk ----------------------------------------------------------------------------


class _Fields:
    """Header fields in order, unfolded, looked up case-insensitively (first one wins)."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self.items = list(items)

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.items:
            if key.lower() == name:
                return value
        return None

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def __bool__(self) -> bool:
        return bool(self.items)


@dataclass
class _Part:
    fields: _Fields
    content_type: str
    params: dict[str, str]
    #: Still transfer-encoded; `_decoded` undoes that.
    body: bytes
    children: list[_Part] = field(default_factory=list)


class _Budget:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts = 0


_FIELD_LINE = re.compile(rb"([!-9;-~]+)[ \t]*:(.*)", re.DOTALL)


def _split_lines(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """(offset, line without its LF, offset of the next line) for each line."""
    start = 0
    length = len(data)
    while start < length:
        end = data.find(b"\n", start)
        if end < 0:
            yield start, data[start:], length
            return
        yield start, data[start:end], end + 1
        start = end + 1


def _to_text(raw: bytes) -> str:
    # RFC 6533 parts are UTF-8; anything else 8-bit is garbage we only need to survive.
    return raw.decode("utf-8", errors="replace")


def _header_section(data: bytes) -> tuple[_Fields, bytes]:
    """The header fields at the start of `data` and the body after them.

    The section ends at the first empty line, or at the first line that is neither a field
    nor a folded continuation (a mail without the empty line, as some bounces are). An mbox
    "From " line before the first field is skipped."""
    items: list[tuple[bytes, bytes]] = []
    rest = len(data)
    for start, line, after in _split_lines(data):
        if not line.strip():
            rest = after
            break
        if line[:1] in (b" ", b"\t") and items:
            name, value = items[-1]
            items[-1] = (name, value + b" " + line.strip())
            continue
        match = _FIELD_LINE.fullmatch(line)
        if match:
            items.append((match.group(1), match.group(2).strip()))
            continue
        if not items and line.startswith(b"From "):
            continue
        rest = start
        break
    return _Fields((_to_text(n), _to_text(v)) for n, v in items), data[rest:]


def _status_blocks(data: bytes) -> list[_Fields]:
    """The blocks of fields of a status part (RFC 3464 / 8098), split at empty lines.

    Lines that are not fields are skipped rather than ending the block: a status part is
    only fields, so such a line is damage, and the fields after it still count."""
    blocks: list[_Fields] = []
    items: list[tuple[bytes, bytes]] = []
    for _, line, _ in _split_lines(data):
        if not line.strip():
            if items:
                blocks.append(_Fields((_to_text(n), _to_text(v)) for n, v in items))
                items = []
            continue
        if line[:1] in (b" ", b"\t") and items:
            name, value = items[-1]
            items[-1] = (name, value + b" " + line.strip())
            continue
        match = _FIELD_LINE.fullmatch(line.strip())
        if match:
            items.append((match.group(1), match.group(2).strip()))
    if items:
        blocks.append(_Fields((_to_text(n), _to_text(v)) for n, v in items))
    return blocks


def _content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """Type/subtype in lower case and the parameters by lower-case name."""
    if not value:
        return "text/plain", {}
    holder = Message()
    holder["Content-Type"] = value
    content_type = holder.get_content_type()
    params: dict[str, str] = {}
    for name, raw in holder.get_params(failobj=[], header="content-type")[1:]:
        if name and name.lower() not in params:
            params[name.lower()] = collapse_rfc2231_value(raw).strip()
    return content_type, params


def _parse_part(data: bytes, depth: int, budget: _Budget) -> _Part:
    budget.parts += 1
    fields, body = _header_section(data)
    content_type, params = _content_type(fields.get("content-type"))
    part = _Part(fields=fields, content_type=content_type, params=params, body=body)
    boundary = params.get("boundary")
    if content_type.startswith("multipart/") and boundary and depth < _MAX_DEPTH:
        chunks = _split_multipart(body, boundary.encode("utf-8", "replace"), _MAX_PARTS)
        for chunk in chunks:
            if budget.parts >= _MAX_PARTS:
                break
            part.children.append(_parse_part(chunk, depth + 1, budget))
    return part


def _split_multipart(body: bytes, boundary: bytes, most: int) -> list[bytes]:
    """The body parts between the delimiter lines, at most `most`; a missing close
    delimiter (a truncated mail) ends the last part at the end of the data."""
    delimiter = re.compile(rb"^--" + re.escape(boundary) + rb"(--)?[ \t]*$", re.MULTILINE)
    chunks: list[bytes] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if start is not None:
            chunks.append(body[start : max(start, match.start() - 1)])
        if match.group(1) or len(chunks) >= most:
            return chunks
        start = match.end() + 1
    if start is not None:
        chunks.append(body[start:])
    return chunks


def _decoded(part: _Part) -> bytes:
    """The part's body with its Content-Transfer-Encoding undone, leniently."""
    encoding = (part.fields.get("content-transfer-encoding") or "").strip().lower()
    body = part.body
    if encoding == "base64":
        alphabet_only = re.sub(rb"[^A-Za-z0-9+/]", b"", body)
        usable = len(alphabet_only) - len(alphabet_only) % 4
        remainder = alphabet_only[usable:]
        if len(remainder) >= 2:  # a cut-off last quantum still holds whole bytes
            alphabet_only = alphabet_only[:usable] + remainder + b"=" * (4 - len(remainder))
        else:
            alphabet_only = alphabet_only[:usable]
        try:
            body = base64.b64decode(alphabet_only)
        except (binascii.Error, ValueError):
            return b""
    elif encoding == "quoted-printable":
        body = quopri.decodestring(body)
    return body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _walk_containers(root: _Part) -> Iterator[_Part]:
    """The root and every part of its multipart tree, breadth first; message/* parts are
    not entered (a returned message is not the report)."""
    queue = [root]
    while queue:
        part = queue.pop(0)
        yield part
        queue.extend(child for child in part.children)


# --- field values -------------------------------------------------------------------------------


def _clean(value: str | None, limit: int = MAX_TEXT_LENGTH) -> str | None:
    """One line of text fit to show an operator: control and format characters become
    spaces, runs of blanks one space, cut to `limit` characters."""
    if value is None:
        return None
    text = "".join(
        " " if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") else char
        for char in value[: limit * 4]
    )
    text = " ".join(text.split())
    if not text:
        return None
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _strip_comments(value: str) -> str:
    """`value` without RFC 5322 (comments), which structured fields may carry; only its
    start is looked at, as nothing we keep is longer."""
    out: list[str] = []
    depth = 0
    escaped = False
    for char in value[: 4 * MAX_TEXT_LENGTH]:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                out.append(char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)


_MESSAGE_ID = re.compile(r"<\s*([^<>\s]+?)\s*>")


def _message_id(value: str | None, *, last: bool = False) -> str | None:
    """A Message-ID in its "<...>" form. A bare id without brackets, as some clients
    write in Original-Message-ID, is accepted when it has an "@"."""
    if not value:
        return None
    found = _MESSAGE_ID.findall(value)
    if found:
        ident = found[-1] if last else found[0]
    else:
        words = _strip_comments(value).split()
        if len(words) != 1 or "@" not in words[0]:
            return None
        ident = words[0]
    ident = _clean(ident, MAX_ID_LENGTH - 2)
    if ident is None or " " in ident:
        return None
    return f"<{ident}>"


def _envelope_id(value: str | None) -> str | None:
    """The ENVID as we gave it: xtext ("+2B" for "+") decoded (RFC 3461)."""
    if not value:
        return None
    words = value.split()
    if not words:
        return None
    decoded = re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), words[0])
    return _clean(decoded, MAX_ENVELOPE_ID_LENGTH)


def _address(value: str | None) -> str | None:
    """The address of a Final-Recipient / Original-Recipient field, without its
    address-type ("rfc822;", "utf-8;") and angle brackets."""
    if not value:
        return None
    address_type, sep, address = value.partition(";")
    if not sep:
        address = address_type
    address = address.strip().strip("<>").strip()
    return _clean(address)


_TOKEN = re.compile(r"[a-z][a-z0-9-]*")


def _token(value: str | None) -> str | None:
    """The first word of `value`, lower case, when it is a plain token."""
    if not value:
        return None
    words = _strip_comments(value).split()
    if not words:
        return None
    word = words[0].lower()
    if len(word) > _MAX_TOKEN_LENGTH or not _TOKEN.fullmatch(word):
        return None
    return word


_STATUS_CODE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def _status(value: str | None) -> str | None:
    if not value:
        return None
    match = _STATUS_CODE.search(value)
    if match:
        return match.group(0)
    return _clean(value)


def _subject(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        decoded = str(make_header(decode_header(value)))
    except Exception:  # unknown charset or broken encoded-word: show it as written
        decoded = value
    return _clean(decoded)


_MODES = {
    "manual-action": "manual-action",
    "automatic-action": "automatic-action",
    "mdn-sent-manually": "MDN-sent-manually",
    "mdn-sent-automatically": "MDN-sent-automatically",
}


def _disposition(value: str | None) -> tuple[str | None, str | None, frozenset[str]]:
    """(disposition-type, action-mode/sending-mode, modifiers) of a Disposition field,
    e.g. "automatic-action/MDN-sent-automatically; processed/error"."""
    if not value:
        return None, None, frozenset()
    text = _strip_comments(value)
    mode_text, sep, type_text = text.partition(";")
    if not sep:
        mode_text, type_text = "", mode_text
    mode_words = [w.strip() for w in mode_text.split("/")]
    mode = "/".join(_MODES.get(w.lower(), w) for w in mode_words if w) or None
    base, _, modifier_text = type_text.partition("/")
    modifiers = frozenset(m.strip().lower() for m in modifier_text.split(",") if m.strip())
    return _token(base), _clean(mode), modifiers


# --- reading a report -------------------------------------------------------------------------


def _parse(data: bytes) -> Report:
    if not data.strip():
        return Report(kind="unrecognised", reason="empty: no bytes at all")
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    root = _parse_part(data, 0, _Budget())
    if not root.fields:
        return Report(
            kind="unrecognised",
            reason="not a mail message at all: it does not start with header fields",
        )
    heading = _Heading(
        subject=_subject(root.fields.get("subject")),
        report_message_id=_message_id(root.fields.get("message-id")),
    )
    container = _find_report(root)
    if container is None:
        return heading.unrecognised(_why_not_a_report(root))
    status_part, kind = _status_part(container)
    if status_part is None or kind is None:
        return heading.unrecognised(_why_no_status(container))
    returned_id = _returned_message_id(container)
    blocks = _status_blocks(_decoded(status_part))
    misplaced = [
        (name, value)
        for name, value in status_part.fields.items
        if not name.lower().startswith("content-") and name.lower() != "mime-version"
    ]
    if misplaced:  # the empty line between part header and fields is missing
        blocks.insert(0, _Fields(misplaced))
    if kind == "mdn":
        return _mdn(blocks, root, returned_id, heading)
    return _dsn(blocks, returned_id, heading)


@dataclass(frozen=True, slots=True)
class _Heading:
    """What every report of a mail carries, whatever its kind."""

    subject: str | None
    report_message_id: str | None

    def unrecognised(
        self,
        reason: str,
        original_message_id: str | None = None,
        original_envelope_id: str | None = None,
    ) -> Report:
        return Report(
            kind="unrecognised",
            reason=reason,
            original_message_id=original_message_id,
            original_envelope_id=original_envelope_id,
            subject=self.subject,
            report_message_id=self.report_message_id,
        )


def _find_report(root: _Part) -> _Part | None:
    """The multipart/report, or a lone status part: at the top, or inside a
    multipart/signed (a signed MDN) or a gateway's multipart/mixed wrapper."""
    for part in _walk_containers(root):
        if part.content_type == "multipart/report":
            return part
    if root.content_type in _MDN_PART_TYPES | _DSN_PART_TYPES:
        return root
    return None


def _status_part(container: _Part) -> tuple[_Part | None, Literal["mdn", "dsn"] | None]:
    """The status part, preferring the kind the report-type announces; a report whose
    report-type names one kind but carries the other is read as what it carries."""
    candidates = container.children or [container]
    mdn = next((p for p in candidates if p.content_type in _MDN_PART_TYPES), None)
    dsn = next((p for p in candidates if p.content_type in _DSN_PART_TYPES), None)
    report_type = container.params.get("report-type", "").lower()
    if report_type == "delivery-status" and dsn is not None:
        return dsn, "dsn"
    if mdn is not None:
        return mdn, "mdn"
    if dsn is not None:
        return dsn, "dsn"
    return None, None


def _why_not_a_report(root: _Part) -> str:
    fields = root.fields
    if root.content_type in _ENCRYPTED_TYPES:
        return (
            "not a multipart/report: an S/MIME encrypted or opaque-signed mail, "
            "which cannot be read without decrypting it"
        )
    is_mime = fields.has("mime-version") or fields.has("content-type")
    what = f"not a multipart/report (it is {_type(root)})" if is_mime else "not MIME at all"
    sender = (fields.get("from") or "").lower()
    from_mail_system = "mailer-daemon" in sender or "postmaster" in sender
    if not from_mail_system and _is_auto_reply(fields):
        return "not a multipart/report: an automatic reply or notice (out of office or similar)"
    null_sender = (fields.get("return-path") or "").replace(" ", "") == "<>"
    if from_mail_system or null_sender:
        return (
            f"{what}: a bounce in a non-standard format, which names no delivery we can "
            "match; read it by hand"
        )
    if not is_mime:
        return "not MIME at all: a plain-text mail, not a delivery or read report"
    return what


def _type(part: _Part) -> str:
    return _clean(part.content_type, 80) or "unknown"


def _is_auto_reply(fields: _Fields) -> bool:
    auto_submitted = _token(fields.get("auto-submitted"))
    if auto_submitted is not None and auto_submitted != "no":  # RFC 3834
        return True
    if fields.has("x-autoreply") or fields.has("x-autorespond"):
        return True
    if (fields.get("precedence") or "").strip().lower() == "auto_reply":
        return True
    subject = (_subject(fields.get("subject")) or "").lower()
    return subject.startswith(
        ("automatic reply", "auto:", "out of office", "réponse automatique", "absence")
    )


def _why_no_status(container: _Part) -> str:
    report_type = _clean(container.params.get("report-type", "").lower(), 80)
    if report_type == "disposition-notification":
        return "multipart/report without a message/disposition-notification part"
    if report_type == "delivery-status":
        return "multipart/report without a message/delivery-status part"
    if report_type:
        return (
            f"multipart/report of report-type {report_type!r}, "
            "which is neither a delivery nor a read report"
        )
    return "multipart/report without a report-type and without a delivery or read status part"


def _returned_message_id(container: _Part) -> str | None:
    """The Message-ID of the returned message's header section, if a part returns it."""
    for part in container.children:
        if part.content_type in _HEADERS_PART_TYPES | _MESSAGE_PART_TYPES:
            fields, _ = _header_section(_decoded(part))
            found = _message_id(fields.get("message-id"))
            if found:
                return found
    return None


def _first(blocks: list[_Fields], name: str) -> str | None:
    for block in blocks:
        value = block.get(name)
        if value is not None:
            return value
    return None


def _mdn(blocks: list[_Fields], root: _Part, returned_id: str | None, heading: _Heading) -> Report:
    original_id = (
        _message_id(_first(blocks, "original-message-id"))
        or returned_id
        or _message_id(root.fields.get("in-reply-to"))
        or _message_id(root.fields.get("references"), last=True)
    )
    disposition, mode, modifiers = _disposition(_first(blocks, "disposition"))
    problem = _first(blocks, "error") or _first(blocks, "failure")
    if disposition is None:
        return heading.unrecognised(
            "message/disposition-notification part without a readable Disposition field",
            original_message_id=original_id,
        )
    if disposition == "failed" or modifiers & {"error", "failed"} or problem is not None:
        disposition = "failed"
    return Report(
        kind="mdn",
        original_message_id=original_id,
        disposition=disposition,
        disposition_mode=mode,
        final_recipient=_address(_first(blocks, "final-recipient")),
        diagnostic=_clean(problem or _first(blocks, "warning")),
        subject=heading.subject,
        report_message_id=heading.report_message_id,
    )


def _is_recipient_block(block: _Fields) -> bool:
    return block.has("final-recipient") or block.has("action")


def _dsn(blocks: list[_Fields], returned_id: str | None, heading: _Heading) -> Report:
    envelope_id = _envelope_id(_first(blocks, "original-envelope-id"))
    recipients = tuple(
        RecipientStatus(
            final_recipient=_address(block.get("final-recipient")),
            original_recipient=_address(block.get("original-recipient")),
            action=_token(block.get("action")),
            status=_status(block.get("status")),
            diagnostic_code=_clean(block.get("diagnostic-code")),
        )
        for block in blocks
        if _is_recipient_block(block)
    )
    if not recipients:
        return heading.unrecognised(
            "message/delivery-status part without any per-recipient fields",
            original_message_id=returned_id,
            original_envelope_id=envelope_id,
        )
    return Report(
        kind="dsn",
        original_message_id=returned_id,
        original_envelope_id=envelope_id,
        recipients=recipients,
        subject=heading.subject,
        report_message_id=heading.report_message_id,
    )
