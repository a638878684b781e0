"""One progress line on a terminal, rewritten in place; nothing at all when not a terminal
(a piped or logged run gets only the figures)."""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._width = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def end(self) -> None:
        """Leave the last line on screen; what is printed next starts on a line of its own."""
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def progress_line(sent: int, results: int, delivered: int, envelopes: int, elapsed: float) -> str:
    """`sent 1200/3000 · delivered 2100/5956 envelopes · 88/s · ~44 s left`"""
    rate = delivered / elapsed if elapsed > 0 else 0.0
    left = f"~{max(0, envelopes - delivered) / rate:.0f} s left" if rate > 0 else "~? s left"
    return (
        f"sent {sent}/{results} · delivered {delivered}/{envelopes} envelopes · "
        f"{rate:.0f}/s · {left}"
    )
