"""The intake commit policy, in one place for MLLP, the HTTP API and the drop folder
(issue 12): commit, then answer, then the after-commit hook."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.delivery.intake import Inbound, Stored
from pipeline.delivery.services import DeliveryServices
from pipeline.ledger.models import Message
from workers.intake_commit import IntakeCommit

ROOT = Path(__file__).resolve().parents[2]
GOOD = (ROOT / "examples" / "results" / "cr_bio_labo_bio_centre.hl7").read_bytes()
#: Recording intake: only the commit policy calls these.
RECORDING = {"accept_batch", "store_batch"}
#: The policy itself: defined once.
POLICY = {"IntakeCommit", "GroupCommitter", "ledger_unreachable", "store_batch"}


def imported(tree: ast.Module) -> set[str]:
    return {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline")
        for alias in node.names
    }


def defined(tree: ast.Module) -> set[str]:
    kinds = ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef
    return {node.name for node in tree.body if isinstance(node, kinds)}


def test_the_commit_policy_lives_in_one_place_for_every_intake() -> None:
    """MLLP, the API and the watcher neither record on their own nor define what an outage
    is: they go through `workers.intake_commit`, which goes through `store_batch`."""
    trees = {
        str(path.relative_to(ROOT)): ast.parse(path.read_text(encoding="utf-8"))
        for folder in ("workers", "pipeline")
        for path in (ROOT / folder).rglob("*.py")
    }
    recording = sorted(
        name
        for name, tree in trees.items()
        if imported(tree) & RECORDING and name != "workers/intake_commit.py"
    )
    assert recording == []
    definitions = sorted(
        (kind, name) for name, tree in trees.items() for kind in defined(tree) & POLICY
    )
    assert definitions == [
        ("GroupCommitter", "workers/intake_commit.py"),
        ("IntakeCommit", "workers/intake_commit.py"),
        ("ledger_unreachable", "pipeline/delivery/intake.py"),
        ("store_batch", "pipeline/delivery/intake.py"),
    ]


def test_committed_messages_are_routed_even_when_answering_them_failed(
    ledger: sessionmaker[Session], services: DeliveryServices
) -> None:
    routed: list[int] = []
    seen: list[list[Stored]] = []

    def hook(ids: Sequence[int]) -> None:
        assert seen, "the hook ran before the answer"
        routed.extend(ids)

    def answer(stored: list[Stored]) -> None:
        seen.append(stored)
        raise ConnectionResetError("the laboratory went away")

    intake = IntakeCommit(ledger, services, after_commit=hook)
    inbound = [
        Inbound(GOOD.replace(b"|LBC-2026-000101|", f"|IC-{n}|".encode()), "mllp", "peer")
        for n in range(3)
    ]
    with pytest.raises(ConnectionResetError):
        intake.commit(inbound, answer)

    (stored,) = seen
    assert [item.committed for item in stored] == [True, True, True]
    with ledger() as session:
        ids = list(session.scalars(select(Message.id).order_by(Message.id)))
        assert session.scalar(select(func.count()).select_from(Message)) == 3
    assert routed == ids
