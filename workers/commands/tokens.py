"""`labdispatch tokens create|list|revoke`: who may call the HTTP API.

A token's secret is printed once, at creation, on standard output alone (so a script can
capture it); the ledger keeps only its SHA-256, so a lost secret is replaced, never
recovered. `list` shows what identifies a token (number, role, laboratory, label, dates),
never a secret or a hash.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.access.models import ROLES
from pipeline.access.tokens import create_token, list_tokens, revoke_token
from pipeline.db import begin_write, open_database, utcnow
from pipeline.settings import Settings

#: Roles given with --role; a laboratory's token is made with --lab.
WIDE_ROLES = tuple(role for role in ROLES if role != "lab")


def register(commands: Any) -> None:
    tokens = commands.add_parser(
        "tokens",
        help="create, list and revoke the HTTP API's bearer tokens",
        description="Bearer tokens for the HTTP API. A laboratory's token (--lab) submits and "
        "reads that laboratory's results and figures only; ops reads traces, replays and "
        "watches the dashboard; billing reads every laboratory's figures; admin does all.",
    )
    actions = tokens.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        help="make a token and print its secret (once)",
        description="Make a token. Its secret is printed once, on standard output; only its "
        "hash is stored.",
    )
    scope = create.add_mutually_exclusive_group(required=True)
    scope.add_argument("--lab", metavar="LAB", help="a laboratory's token (its MSH-4 code)")
    scope.add_argument("--role", choices=WIDE_ROLES, help="a token for every laboratory")
    create.add_argument("--label", default="", help="words to recognise it by in `tokens list`")
    create.set_defaults(handler=run_create)

    listing = actions.add_parser("list", help="every token: number, role, lab, label, dates")
    listing.set_defaults(handler=run_list)

    revoke = actions.add_parser("revoke", help="refuse a token from now on")
    revoke.add_argument("token_id", type=int, metavar="ID", help="the number `tokens list` shows")
    revoke.set_defaults(handler=run_revoke)


def run_create(args: argparse.Namespace) -> int:
    sessions = open_database(Settings.from_env())
    with sessions() as session:
        begin_write(session)
        token, secret = create_token(
            session,
            role="lab" if args.lab else args.role,
            laboratory=args.lab,
            label=args.label,
            now=utcnow(),
        )
        session.commit()
        scope = f"lab {token.laboratory}" if token.laboratory else token.role
        number = token.id
    print(secret, flush=True)
    print(
        f"labdispatch: token #{number} ({scope}) created. Keep the secret above now: it is not "
        "stored (only its hash is) and cannot be shown again.",
        file=sys.stderr,
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    sessions = open_database(Settings.from_env())
    with sessions() as session:
        tokens = list_tokens(session)
    rows = [("ID", "ROLE", "LAB", "LABEL", "CREATED", "REVOKED")]
    rows += [
        (
            str(token.id),
            token.role,
            token.laboratory or "-",
            token.label or "-",
            token.created_at.strftime("%Y-%m-%d %H:%M"),
            token.revoked_at.strftime("%Y-%m-%d %H:%M") if token.revoked_at else "-",
        )
        for token in tokens
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    sessions = open_database(Settings.from_env())
    with sessions() as session:
        begin_write(session)
        revoke_token(session, args.token_id, now=utcnow())
        session.commit()
    print(f"labdispatch: token #{args.token_id} revoked; calls with it are refused from now on")
    return 0
