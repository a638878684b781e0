"""The HL7 files a command is given: one way to name them and to read them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: Exit status when a named file cannot be read at all.
EXIT_UNREADABLE = 2


def add_files_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", type=Path, metavar="FILE", help="HL7 files; - reads standard input"
    )


def read_file(path: Path) -> bytes | None:
    """The file's bytes (standard input for `-`), or None after saying on stderr why not."""
    try:
        return sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as error:
        print(f"{path}: cannot read: {error.strerror or error}", file=sys.stderr)
        return None
