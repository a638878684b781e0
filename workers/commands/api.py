"""`labdispatch api serve`: the HTTP API (results in, traces, replay, statistics, /metrics,
the dashboard), behind bearer tokens (`labdispatch tokens`)."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.settings import Settings


def register(commands: Any) -> None:
    api = commands.add_parser(
        "api",
        help="the HTTP API: results in, traces, replay, statistics, metrics, dashboard",
        description="The HTTP API. Every route but /healthz, /readyz and /openapi.json needs "
        "a bearer token (labdispatch tokens create).",
    )
    actions = api.add_subparsers(dest="api_command", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="serve until stopped (SIGTERM / Ctrl-C)",
        description="Serve the API. Results posted to /v1/results are committed to the ledger "
        "before the answer, as over MLLP. SIGTERM or SIGINT finishes the requests in flight "
        "and exits 0.",
    )
    serve.add_argument("--host", help="address to listen on (default LABDISPATCH_API_HOST)")
    serve.add_argument(
        "--port",
        type=int,
        help="port to listen on; 0 picks a free one (default LABDISPATCH_API_PORT)",
    )
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    # FastAPI and uvicorn load here, not with every `labdispatch` command.
    from workers.api.server import run_api_server

    def ready(host: str, port: int) -> None:
        print(f"labdispatch: HTTP API on http://{host}:{port}", flush=True)

    return run_api_server(Settings.from_env(), host=args.host, port=args.port, ready=ready)
