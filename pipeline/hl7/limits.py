"""How long the header fields that key a message may be: as long as the ledger keeps them.

A message is keyed by (sending facility, MSH-10). Those columns have a length, and a value
past it is refused at intake, naming the field and its limit: PostgreSQL would refuse the
row (an error the LIS would take for "send it again later", forever) and SQLite would keep
it whole, so the two engines would answer differently. One place says how long a key may
be: here, and the ledger's columns are declared with these (`pipeline.ledger.models`), so
intake reads no ledger module (the reader sits below the ledger).
"""

from __future__ import annotations

#: MSH-4 (or MSH-3 when MSH-4 is empty): the laboratory in the message's key.
SENDER_MAX_CHARACTERS = 64
#: MSH-10: the control ID in the message's key.
CONTROL_ID_MAX_CHARACTERS = 199
