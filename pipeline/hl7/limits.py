"""How long the header fields that key a message may be: as long as the ledger keeps them.

A message is keyed by (sending facility, MSH-10). Those columns have a length, and a value
past it is refused at intake, naming the field and its limit: PostgreSQL would refuse the
row (an error the LIS would take for "send it again later", forever) and SQLite would keep
it whole, so the two engines would answer differently. The limits are read from the
ledger's columns: one place says how long a key may be.
"""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import InstrumentedAttribute

from pipeline.ledger.models import Message


def column_length(attribute: InstrumentedAttribute[str]) -> int:
    """The declared length of a string column of the ledger."""
    kind = attribute.property.columns[0].type
    assert isinstance(kind, String) and kind.length is not None, attribute
    return kind.length


#: MSH-4 (or MSH-3 when MSH-4 is empty): the laboratory in the message's key.
SENDER_MAX_CHARACTERS = column_length(Message.laboratory)
#: MSH-10: the control ID in the message's key.
CONTROL_ID_MAX_CHARACTERS = column_length(Message.control_id)
