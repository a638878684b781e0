"""`labdispatch broker start|stop|status`: the embedded broker, for ops running the
processes separately.

Any process that needs the broker starts the embedded one itself, so `start` is only needed
to have it up before anything else (or to check that it can start); `stop` shuts it down
after Redis has written its append-only file, keeping the queued work for the next start.
`status` never starts anything: it says which broker the processes use (the URL with its
password masked) and whether it answers. With LABDISPATCH_BROKER_URL set, the broker is
someone else's to start and stop; `status` still checks it.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings
from workers.broker import (
    BrokerUnavailable,
    check,
    embedded_broker,
    is_embedded,
    redact,
    start_embedded,
    stop_embedded,
)

EXIT_OK = 0
EXIT_NOT_ANSWERING = 1  # status: the broker does not answer


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "broker",
        help="start, stop or check the broker (the embedded Redis server by default)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="broker_action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start the embedded broker if it is not running")
    start.set_defaults(handler=run_start)
    stop = actions.add_parser("stop", help="stop the embedded broker, keeping its queued work")
    stop.set_defaults(handler=run_stop)
    status = actions.add_parser(
        "status", help="which broker the processes use, and whether it answers (exit 1 if not)"
    )
    status.set_defaults(handler=run_status)


def run_start(args: argparse.Namespace) -> int:
    settings = _embedded_settings("start")
    broker = start_embedded(settings)
    print(f"broker: {broker.url} (embedded, pid {broker.pid() or '?'}) answers")
    return EXIT_OK


def run_stop(args: argparse.Namespace) -> int:
    settings = _embedded_settings("stop")
    url = embedded_broker(settings).url
    if stop_embedded(settings):
        print(f"broker: {url} (embedded) stopped; its queued work is kept for the next start")
    else:
        print(f"broker: {url} (embedded) was not running")
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    embedded = embedded_broker(settings) if is_embedded(settings) else None
    if embedded is not None:
        url, kind = embedded.url, "embedded"
    else:
        url, kind = settings.service.broker_url, "LABDISPATCH_BROKER_URL"
    print(f"broker: {redact(url)} ({kind})")
    try:
        check(url)
    except BrokerUnavailable as error:
        print(f"status: NOT ANSWERING: {error}")
        return EXIT_NOT_ANSWERING
    pid = embedded.pid() if embedded is not None else None
    print("status: answers" + (f" (pid {pid})" if pid else ""))
    return EXIT_OK


def _embedded_settings(action: str) -> Settings:
    settings = Settings.from_env()
    if not is_embedded(settings):
        raise ConfigurationError(
            f"LABDISPATCH_BROKER_URL names the broker ({redact(settings.service.broker_url)}); "
            f"labdispatch can only {action} its embedded one: {action} that server where it runs"
        )
    return settings
