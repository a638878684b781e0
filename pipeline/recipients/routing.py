"""From the recipients a message names to the directory entries that can receive it.

This is the routing rule of the pipeline: every participant the message names is looked
up (national identifier, else the sending lab's local code); those the directory does not
know come back unresolved with the identifier that was looked for, so ops can fix the
directory and the result resumes instead of being lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from pipeline.hl7.facts import RoutingFacts
from pipeline.hl7.participants import Participant
from pipeline.recipients.resolve import Resolution, resolve_many


@dataclass(frozen=True)
class RoutedRecipient:
    participant: Participant
    resolution: Resolution

    @property
    def known(self) -> bool:
        return self.resolution.resolved


def route(session: Session, facts: RoutingFacts) -> list[RoutedRecipient]:
    """Resolve every participant of a result against the directory, in message order."""
    participants = facts.participants
    resolutions = resolve_many(
        session, facts.sender, [participant.identifier for participant in participants]
    )
    return [
        RoutedRecipient(participant, resolution)
        for participant, resolution in zip(participants, resolutions, strict=True)
    ]
