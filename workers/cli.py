"""The `labdispatch` command.

Every sub-command returns an exit status; errors the user can act on are `LabdispatchError`
and are printed as one line. Anything else is a bug: we still print one line (never a
traceback, which could carry patient data) and exit 70, unless LABDISPATCH_DEBUG=1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from pipeline.errors import LabdispatchError
from workers.commands import deliver, directory, inspect, pki, receipts, trace

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
    return parser


def _version() -> str:
    try:
        return metadata.version("labdispatch")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
