"""Small helpers shared by tests of several packages."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

#: ../shared/corpus beside the checkout (as CI lays it), or LABDISPATCH_CORPUS_DIR.
CORPUS = Path(
    os.environ.get(
        "LABDISPATCH_CORPUS_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
    )
)


def set_msh(data: bytes, values: dict[int, str]) -> bytes:
    """The message with the given MSH fields (MSH-n: value) replaced."""
    head, _, rest = data.partition(b"\r")
    fields = head.split(b"|")  # fields[n - 1] is MSH-n
    fields += [b""] * (max(values) - len(fields))
    for number, value in values.items():
        fields[number - 1] = value.encode()
    return b"|".join(fields) + b"\r" + rest


def eventually(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    """Wait, bounded, for what another thread or process does after answering (an
    after-commit hook, a log line); polls, never sleeps a fixed time to pass."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds} s")
        time.sleep(0.01)
