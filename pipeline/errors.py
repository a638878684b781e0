"""The root of every error labdispatch raises on purpose.

Callers catch `LabdispatchError` at the edge (CLI, MLLP listener, API) and show its
message; anything else escaping is a bug, never a user-facing answer.
"""

from __future__ import annotations


class LabdispatchError(Exception):
    """An error whose message is written for the laboratory or operator who will read it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigurationError(LabdispatchError):
    """A `LABDISPATCH_*` setting is missing or unusable."""
