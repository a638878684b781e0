"""The `labdispatch` command.

Every sub-command returns an exit status; errors the user can act on are `LabdispatchError`
and are printed as one line. Anything else is a bug: we still print one line (never a
traceback, which could carry patient data) and exit 70, unless LABDISPATCH_DEBUG=1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from pipeline.errors import LabdispatchError
from pipeline.logsafe import traceback_without_values
from workers.commands import api as api_commands
from workers.commands import bench as bench_commands
from workers.commands import broker, deliver, directory, inspect, pki, receipts, trace, watch
from workers.commands import demo as demo_commands
from workers.commands import mllp as mllp_commands
from workers.commands import stats as stats_commands
from workers.commands import tokens as token_commands
from workers.commands import worker as worker_commands

EXIT_USAGE = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a pipeline cut short


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labdispatch",
        description="Deliver laboratory results (HL7 v2 ORU^R01) to the clinicians who read them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    inspect.register(commands)
    directory.register(commands)
    pki.register(commands)
    deliver.register(commands)
    receipts.register(commands)
    trace.register(commands)
    stats_commands.register(commands)
    broker.register(commands)
    watch.register(commands)
    mllp_commands.register(commands)
    api_commands.register(commands)
    token_commands.register(commands)
    worker_commands.register(commands)
    demo_commands.register(commands)
    bench_commands.register(commands)
    return parser


def _version() -> str:
    try:
        return metadata.version("labdispatch")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


class _NoTraceback(logging.Formatter):
    """Log lines for an operator's terminal: the message only. A traceback (and an
    exception's text) may quote a result; LABDISPATCH_DEBUG=1 shows them."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.exc_info = record.exc_text = record.stack_info = None
        return super().format(record)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time (tests swap it), not the one at start."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _Debug(logging.Formatter):
    """Everything, tracebacks included: for a developer who asked for it. A traceback's
    last line is the exception's types, not its text (which may quote a result): every
    `exc_info` of every process is safe under LABDISPATCH_DEBUG too."""

    def formatException(self, ei: Any) -> str:
        error = ei[1]
        if isinstance(error, BaseException):
            return traceback_without_values(error)
        return super().formatException(ei)


def _configure_logging() -> None:
    """Warnings and errors to stderr, one line each; called once per process."""
    root = logging.getLogger()
    if any(isinstance(h, _Stderr) for h in root.handlers):
        return
    handler = _Stderr()
    if os.environ.get("LABDISPATCH_DEBUG") == "1":
        handler.setFormatter(_Debug("labdispatch: %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_NoTraceback("labdispatch: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        status: int = args.handler(args)
    except LabdispatchError as error:
        print(f"labdispatch: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`labdispatch inspect ... | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as error:
        if os.environ.get("LABDISPATCH_DEBUG") == "1":
            raise
        print(
            f"labdispatch: internal error ({type(error).__name__}); "
            "rerun with LABDISPATCH_DEBUG=1 for details and report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return status


if __name__ == "__main__":
    sys.exit(main())
