"""What the directory import tests share: writing a CSV, reading back what was stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.recipients.directory_csv import ImportReport
from pipeline.recipients.models import Recipient

HEADER = "key,kind,name,specialty,identifiers,local_codes,channels,certificate\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def recipient(session: Session, key: str) -> Recipient:
    return session.scalars(select(Recipient).where(Recipient.key == key)).one()


def count(session: Session, model: Any) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def where(report: ImportReport) -> set[tuple[int, str]]:
    """(line, column) of every reported problem."""
    return {(error.line, error.column) for error in report.errors}
