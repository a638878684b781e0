"""`labdispatch inspect FILE...`: what an ops engineer runs on a laboratory's file.

For each message: control ID, sender, type, version, result status and recipients, and
whether the directory knows each recipient. `--json` prints one object per message per
line for scripts. Rejected messages are named on stderr (file, message index, reason) and
make the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from pipeline.db import open_database
from pipeline.delivery.services import StorageKeyIndex
from pipeline.hl7.conformance import strict_findings
from pipeline.hl7.intake import IntakeResult
from pipeline.reading import ReadResult, claimed_identity, read_any
from pipeline.recipients.identifiers import BlindIndex
from pipeline.recipients.laboratories import laboratory_charsets
from pipeline.recipients.routing import RoutedRecipient, route
from pipeline.settings import Settings
from workers.commands.hl7_files import EXIT_UNREADABLE, add_files_argument, read_file

EXIT_REJECTED = 1


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "inspect",
        help="read HL7 or HPRIM files and show each result's sender, status and recipients",
        description=__doc__,
    )
    add_files_argument(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per message per line")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="also list hl7apy's strict conformance findings per segment (slower)",
    )
    parser.add_argument(
        "--no-directory",
        action="store_true",
        help="do not look recipients up in the directory (no database is opened)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.no_directory:
        return inspect_files(args, None)
    settings = Settings.from_env()
    with open_database(settings)() as session:
        return inspect_files(args, session, StorageKeyIndex(settings, strict=False))


def inspect_files(
    args: argparse.Namespace, session: Session | None, blind_index: BlindIndex | None = None
) -> int:
    """Report every message of every file; the exit status says whether any was refused."""
    status = 0
    for path in args.files:
        data = read_file(path)
        if data is None:
            status = max(status, EXIT_UNREADABLE)
            continue
        seen = 0
        charsets = laboratory_charsets(session) if session is not None else None
        for result in read_any(data, charsets):
            seen += 1
            routed = (
                route(session, result.facts, blind_index=blind_index)
                if result.facts is not None and session is not None
                else None
            )
            if result.error is not None:
                status = max(status, EXIT_REJECTED)
                print(
                    f"{path}: message {result.index}: rejected ({result.error.ack_code}"
                    f" {result.error.hl7_code} {type(result.error).__name__}):"
                    f" {result.error}",
                    file=sys.stderr,
                )
            findings = (
                strict_findings(result.message)
                if args.strict and isinstance(result, IntakeResult) and result.message is not None
                else None
            )
            if args.json:
                entry = record(path, result, routed)
                if findings is not None:
                    entry["conformance"] = findings
                print(json.dumps(entry, ensure_ascii=False))
            else:
                print(describe(path, result, routed))
                for finding in findings or ():
                    print(f"    conformance: {finding}")
        if not seen:
            print(f"{path}: no HL7 message in the file", file=sys.stderr)
            status = max(status, EXIT_REJECTED)
    return status


def record(path: Path, result: ReadResult, routed: list[RoutedRecipient] | None) -> dict[str, Any]:
    """The JSON form of one message: stable keys, for scripts and the conformance tests."""
    facts = result.facts
    error = result.error
    out: dict[str, Any] = {
        "file": str(path),
        "index": result.index,
        "ok": result.ok,
        "error": None,
        "format": facts.format if facts else getattr(result, "format", "hl7v2"),
        "control_id": facts.control_id if facts else None,
        "sender": facts.sender if facts else None,
        "sending_application": facts.sending_application if facts else None,
        "sending_facility": facts.sending_facility if facts else None,
        "message_type": facts.message_type if facts else None,
        "version": facts.version if facts else None,
        "processing_id": facts.processing_id if facts else None,
        "status": facts.result_status if facts else None,
        "orders": [],
        "documents": [],
        "recipients": [],
        "warnings": list(facts.warnings) if facts else [],
    }
    if error is not None:
        msh = result.msh
        if msh is None:  # HPRIM: what its header claims
            laboratory, control_id = claimed_identity(result)
            out["control_id"] = control_id or None
            out["sender"] = laboratory or None
        if msh is not None:  # what the refused message says of itself, for the lab to find it
            out["control_id"] = msh.value(10).strip() or None
            out["sender"] = msh.value(4).strip() or msh.value(3).strip() or None
            out["sending_application"] = msh.value(3).strip() or None
            out["sending_facility"] = msh.value(4).strip() or None
            kind = "^".join(part for part in (msh.value(9, 1), msh.value(9, 2)) if part)
            out["message_type"] = kind or None
            out["version"] = msh.value(12).strip() or None
        out["error"] = {
            "type": type(error).__name__,
            "ack_code": error.ack_code,
            "hl7_code": error.hl7_code,
            "location": str(error.location) if error.location else None,
            "reason": error.reason,
        }
        return out
    assert facts is not None
    out["orders"] = [
        {
            "sequence": order.sequence,
            "placer": order.placer,
            "filler": order.filler,
            "service": order.service,
            "status": order.status,
            "observations": order.observations,
            "observation_statuses": list(order.observation_statuses),
        }
        for order in facts.orders
    ]
    out["documents"] = [
        {
            "set_id": document.set_id,
            "order": document.order,
            "code": document.code,
            "mime_type": document.mime_type,
            "encoding": document.encoding,
            "size": document.size,
        }
        for document in facts.documents
    ]
    resolutions = {id(item.participant): item for item in routed or []}
    for participant in facts.participants:
        entry: dict[str, Any] = {
            "id_type": participant.id_type,
            "id": participant.id,
            "authority": participant.identifier.authority if participant.identifier else None,
            "name": participant.name or None,
            "kind": participant.kind,
            "roles": list(participant.roles),
            "sources": list(participant.sources),
            "address": participant.address or None,
            "problems": list(participant.problems),
        }
        item = resolutions.get(id(participant))
        if item is not None:
            entry["directory"] = {
                "known": item.known,
                "key": item.resolution.recipient_key,
                "channels": list(item.resolution.channels),
                "reason": item.resolution.reason or None,
            }
        else:
            entry["directory"] = None
        out["recipients"].append(entry)
    return out


def describe(path: Path, result: ReadResult, routed: list[RoutedRecipient] | None) -> str:
    """The human form: one header line per message, one line per recipient."""
    facts = result.facts
    if result.error is not None or facts is None:
        error = result.error
        assert error is not None
        claimed = claimed_identity(result)[1].strip()
        control = f" control {claimed}" if claimed else ""
        return (
            f"{path} #{result.index}:{control} REJECTED {error.ack_code}"
            f" ({type(error).__name__}): {error}"
        )
    lines = [
        f"{path} #{result.index}: "
        + ("" if facts.format == "hl7v2" else f"{facts.format} ")
        + f"{facts.message_type} v{facts.version}"
        f"  control {facts.control_id}  from {facts.sender}"
        + (f" ({facts.sending_application})" if facts.sending_application else "")
        + f"  status {facts.result_status or 'unknown'}"
        + f"  {len(facts.orders)} order(s), {len(facts.documents)} document(s)"
    ]
    resolutions = {id(item.participant): item for item in routed or []}
    if not facts.participants:
        lines.append(
            "    no recipient named in ORC-12, OBR-16, OBR-28, PV1-8 or PRT"
            if facts.format == "hl7v2"
            else "    no recipient named (OBR-17, P-14, H-10; or header line 12)"
        )
    for participant in facts.participants:
        identity = (
            f"{participant.id_type} {participant.id}"
            if participant.identifier
            else "(no identifier)"
        )
        name = participant.name or "(no name)"
        line = f"    {identity:<24} {name:<22} {','.join(participant.roles):<19}"
        item = resolutions.get(id(participant))
        if item is not None:
            line += (
                f" directory: {item.resolution.recipient_key}"
                if item.known
                else f" NOT IN DIRECTORY ({item.resolution.reason})"
            )
        if participant.address:
            line += f"  <{participant.address}>"
        lines.append(line.rstrip())
        lines.extend(f"        ! {problem}" for problem in participant.problems)
    lines.extend(f"    warning: {warning}" for warning in facts.warnings)
    return "\n".join(lines)
