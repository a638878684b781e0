"""Logging an unexpected exception without what it may quote.

An exception's text (and so the last line of a traceback) may hold a value of the message
being handled: a transport or a library error quoting a patient's name or a result. A log
line names the exception by its type only. With `LABDISPATCH_DEBUG=1` it also carries the
traceback's frames (file, line, function, source line: code, never runtime values), and
the types of the exceptions it was chained from, still without their text.
"""

from __future__ import annotations

import logging
import traceback

from pipeline.settings import debug_enabled


def exception_summary(error: BaseException) -> str:
    """The exception's type, and the types it was raised from: never its text."""
    names = [type(error).__name__]
    seen = {id(error)}
    cause = error.__cause__ or error.__context__
    while cause is not None and id(cause) not in seen and len(names) < 10:
        seen.add(id(cause))
        names.append(type(cause).__name__)
        cause = cause.__cause__ or cause.__context__
    return " <- ".join(names)


def frames_only(error: BaseException) -> str:
    """The traceback of `error` without any exception's message."""
    return "".join(traceback.format_tb(error.__traceback__)).rstrip()


def traceback_without_values(error: BaseException) -> str:
    """A traceback as Python prints it, but ending with the exception types, not the text."""
    return (
        "Traceback (most recent call last):\n"
        + frames_only(error)
        + f"\n{exception_summary(error)} (its text is not logged: it may quote a result)"
    )


def log_failure(
    logger: logging.Logger, what: str, error: BaseException, level: int = logging.ERROR
) -> None:
    """Log `what failed (Type)`; under LABDISPATCH_DEBUG the frames follow, no text."""
    line = f"{what} failed ({exception_summary(error)})"
    if debug_enabled():
        line += "; traceback without values (LABDISPATCH_DEBUG):\n" + frames_only(error)
    logger.log(level, "%s", line)
