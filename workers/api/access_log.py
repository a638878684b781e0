"""One log line per API call, and no traceback ever leaving the process.

The line says what an operator needs to follow the traffic and nothing a log must not hold
(ARCHITECTURE rule 5): the method, the route's template (`/v1/messages/{message_id}`)
with the path IDs, the query values that are codes and dates (`lab`, `from`, `to`,
`group_by`, `control_id`), the status, the time taken and who called (token number and
role, or "anonymous"). Never a body, never the Authorization header or a cookie, never
another query value, never the raw path of a request no route matched.

An exception no handler took is answered here with 500 {"error": "internal error"} and
logged by its type only: its text, or a traceback, may quote the result being handled.
LABDISPATCH_DEBUG=1 logs the traceback, for a developer who asked for it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.access.tokens import Caller

log = logging.getLogger("labdispatch.api")

#: Query parameters whose values are logged: codes and dates, never patient data.
LOGGED_QUERY = ("lab", "from", "to", "group_by", "control_id")
INTERNAL_ERROR = {"error": "internal error"}
#: How `_one_line` writes what must not reach a log as it is.
_ESCAPES = {
    code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
} | {ord("\\"): "\\\\"}


class AccessLog:
    """Pure ASGI middleware (it must see the status of every answer, streamed or not)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as error:
            log.error(
                "internal error answering %s (%s)",
                describe_call(scope),
                type(error).__name__,
                exc_info=os.environ.get("LABDISPATCH_DEBUG") == "1",
            )
            if status:
                raise  # the answer had begun: the server can only cut the connection
            status = 500
            await _send_internal_error(send)
        finally:
            took = (time.perf_counter() - started) * 1000
            log.info("%s %d %.1f ms %s", describe_call(scope), status, took, caller_of(scope))


def describe_call(scope: Scope) -> str:
    """`GET /v1/messages/{message_id} message_id=12 lab=LAB-A`: the route, not the path."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if template is None:
        return f"{scope.get('method', '?')} (no route)"
    parts = [scope.get("method", "?"), template]
    parts += [
        f"{name}={_one_line(str(value))}" for name, value in scope.get("path_params", {}).items()
    ]
    parts += [f"{name}={_one_line(value)}" for name, value in _logged_query(scope)]
    return " ".join(parts)


def caller_of(scope: Scope) -> str:
    caller = scope.get("state", {}).get("caller")
    return caller.describe() if isinstance(caller, Caller) else "anonymous"


def _logged_query(scope: Scope) -> list[tuple[str, str]]:

    query = scope.get("query_string", b"").decode("latin-1")
    return [
        (name, value)
        for name, value in parse_qsl(query, keep_blank_values=True)
        if name in LOGGED_QUERY
    ]


def _one_line(value: str) -> str:
    """A query value as a log shows it: one line, bounded, no control character.

    Bounded first, then escaped (the escapes never cut in two): a control character (C0,
    DEL, C1, and Unicode's line and paragraph separators) is written as `\\xNN` or
    `\\uNNNN`, and a backslash doubled, so a NUL, an escape sequence or a line break sent
    in a query never reaches the log raw and nothing written can pass for an escape."""
    text = value if len(value) <= 80 else value[:77] + "..."
    return text.translate(_ESCAPES)


async def _send_internal_error(send: Send) -> None:
    body = json.dumps(INTERNAL_ERROR).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    start: dict[str, Any] = {"type": "http.response.start", "status": 500, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
