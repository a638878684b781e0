"""Errors of the recipient directory, worded for the operator who maintains it."""

from __future__ import annotations

from pipeline.errors import LabdispatchError


class DirectoryError(LabdispatchError):
    """Something about the recipient directory an operator must fix."""


class UnknownRecipient(DirectoryError):
    """A key, identifier or local code that names no one in the directory."""


class UnreadableDirectoryFile(DirectoryError):
    """A directory CSV that cannot be opened or decoded at all (row problems are reported
    per row instead, so one bad line never blocks the rest)."""
