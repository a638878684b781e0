"""`labdispatch mllp serve` (the listener LIS connect to) and `labdispatch submit FILE...`
(a client for labs and ops testing a connection)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.hl7.ack import ERROR_ONLY, NEVER, SUCCESS_ONLY, AckContext
from pipeline.hl7.decode import split_messages
from pipeline.settings import Settings
from workers.commands.hl7_files import EXIT_UNREADABLE, add_files_argument, read_file
from workers.hooks import route_after_commit
from workers.mllp.client import (
    DEFAULT_TIMEOUT,
    AckReply,
    AckTimeout,
    MllpClient,
    MllpError,
    parse_address,
)
from workers.mllp.server import run_mllp_server

SUBMIT_DESCRIPTION = """\
Send each message of the files as its own MLLP frame, wait for its ACK, and print one line
per message: FILE #N: CONTROL-ID: CODE, with the receiver's reason when the message was not
accepted. Exit status: 0 when every message was accepted (AA, or CA in enhanced mode), 1
when one was not (or its ACK never came), 2 when the listener cannot be reached or drops
the connection, or a file cannot be read."""

EXIT_OK = 0
EXIT_NOT_ACCEPTED = 1
EXIT_CONNECTION = 2


def register(commands: Any) -> None:
    mllp = commands.add_parser(
        "mllp",
        help="the MLLP listener laboratories' LIS send results to",
        description="The MLLP listener: each message is committed to the ledger, then ACKed.",
    )
    actions = mllp.add_subparsers(dest="mllp_command", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="listen for LIS connections until stopped (SIGTERM / Ctrl-C)",
        description=(
            "Listen for MLLP connections. Each message is committed to the ledger before its "
            "ACK is sent; malformed ones get AE / AR with the reason and are quarantined. "
            "SIGTERM or SIGINT stops accepting, answers what was received, and exits 0."
        ),
    )
    serve.add_argument("--host", help="address to listen on (default LABDISPATCH_MLLP_HOST)")
    serve.add_argument(
        "--port",
        type=int,
        help="port to listen on; 0 picks a free one (default LABDISPATCH_MLLP_PORT)",
    )
    serve.set_defaults(handler=run_serve)

    submit = commands.add_parser(
        "submit",
        help="send HL7 files to an MLLP listener and print each message's ACK",
        description=SUBMIT_DESCRIPTION,
    )
    add_files_argument(submit)
    submit.add_argument(
        "--to",
        metavar="mllp://HOST:PORT",
        help="the listener (default: LABDISPATCH_MLLP_HOST and LABDISPATCH_MLLP_PORT)",
    )
    submit.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for each ACK (default {DEFAULT_TIMEOUT:g})",
    )
    submit.set_defaults(handler=run_submit)


def run_serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env()

    def ready(host: str, port: int) -> None:
        print(f"labdispatch: MLLP listener on {host}:{port}", flush=True)

    return run_mllp_server(
        settings,
        route_after_commit(),
        host=args.host,
        port=args.port,
        ready=ready,
    )


def run_submit(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        print("labdispatch: --timeout must be a positive number of seconds", file=sys.stderr)
        return EXIT_CONNECTION
    if args.to:
        target = args.to
    else:
        service = Settings.from_env().service
        target = f"mllp://{service.mllp_host}:{service.mllp_port}"
    try:
        host, port = parse_address(target)
    except MllpError as error:
        print(f"labdispatch: {error}", file=sys.stderr)
        return EXIT_CONNECTION
    status = EXIT_OK
    client: MllpClient | None = None
    try:
        for path in args.files:
            data = read_file(path)
            if data is None:
                status = max(status, EXIT_UNREADABLE)
                continue
            messages = list(split_messages(data))
            if not messages:
                print(f"{path}: no HL7 message in it; nothing sent", file=sys.stderr)
                status = max(status, EXIT_NOT_ACCEPTED)
            for raw in messages:
                if client is None:
                    client = MllpClient(host, port, timeout=args.timeout)
                line, accepted, keep = _submit_one(client, path, raw.index, raw.data)
                print(line, flush=True)
                if not accepted:
                    status = max(status, EXIT_NOT_ACCEPTED)
                if not keep:
                    # An ACK may still come: on a new connection, it cannot be taken for
                    # the next message's.
                    client.close()
                    client = None
    except MllpError as error:
        print(f"labdispatch: {error}", file=sys.stderr)
        return EXIT_CONNECTION
    finally:
        if client is not None:
            client.close()
    return status


def _submit_one(
    client: MllpClient, path: Path, index: int, message: bytes
) -> tuple[str, bool, bool]:
    """(line to print, accepted, connection still usable) for one message."""
    context = AckContext.from_raw(message)
    where = f"{path} #{index}: {context.control_id or '(no control ID)'}"
    wanted = context.accept_ack_type if context.enhanced else ""
    client.send(message)
    if wanted == NEVER:
        return f"{where}: sent; no ACK asked for (MSH-15 NE)", True, True
    try:
        reply = AckReply.parse(client.receive())
    except AckTimeout:
        if wanted == ERROR_ONLY:
            return (
                f"{where}: no ACK within {client.timeout:g} s, as MSH-15 ER asks when the "
                "message is accepted",
                True,
                False,
            )
        if wanted == SUCCESS_ONLY:
            return (
                f"{where}: no ACK within {client.timeout:g} s: with MSH-15 SU that means it "
                "was not accepted",
                False,
                False,
            )
        return f"{where}: no ACK within {client.timeout:g} s", False, False
    line = f"{where}: {reply.code or '?'}"
    if not reply.accepted and reply.reasons:
        line += ": " + "; ".join(reply.reasons)
    return line, reply.accepted, True
