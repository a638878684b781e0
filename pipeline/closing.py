"""One way to make "open once, use, close" objects usable in a `with` block."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """Leaving the `with` block calls `close`, whatever happened inside it; subclasses
    (transports, report sources, the delivery services) hold connections or files."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
