"""From the recipients a message names to the directory entries that can receive it.

This is the routing rule of the pipeline: every participant the message names is looked
up (national identifier, else the sending lab's local code); those the directory does not
know come back unresolved with the identifier that was looked for, so ops can fix the
directory and the result resumes instead of being lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from pipeline.hl7.facts import RoutingFacts
from pipeline.hl7.participants import Participant
from pipeline.recipients.identifiers import BlindIndex
from pipeline.recipients.resolve import Resolution, resolve_many


@dataclass(frozen=True)
class RoutedRecipient:
    participant: Participant
    resolution: Resolution

    @property
    def known(self) -> bool:
        return self.resolution.resolved


def route(
    session: Session, facts: RoutingFacts, *, blind_index: BlindIndex | None = None
) -> list[RoutedRecipient]:
    """Resolve every participant of a result against the directory, in message order
    (`blind_index`: how the directory keeps patients' identifiers, see `resolve_many`)."""
    return route_many(session, [facts], blind_index=blind_index)[0]


def route_many(
    session: Session, facts: Sequence[RoutingFacts], *, blind_index: BlindIndex | None = None
) -> list[list[RoutedRecipient]]:
    """`route` for a batch of results: one directory lookup per sending laboratory."""
    by_lab: dict[str, list[int]] = {}
    for index, one in enumerate(facts):
        by_lab.setdefault(one.sender, []).append(index)
    answers: list[list[RoutedRecipient]] = [[] for _ in facts]
    for lab, indexes in by_lab.items():
        participants = [(i, p) for i in indexes for p in facts[i].participants]
        resolutions = resolve_many(
            session, lab, [p.identifier for _, p in participants], index=blind_index
        )
        for (index, participant), resolution in zip(participants, resolutions, strict=True):
            answers[index].append(RoutedRecipient(participant, resolution))
    return answers
