"""What the directory adds to identifiers (`pipeline.identifiers`): private ones (the INS)
kept as a keyed hash, and a patient's channel address sealed.
"""

from __future__ import annotations

from typing import Protocol

from pipeline.identifiers import PRIVATE_TYPES, Identifier


class BlindIndex(Protocol):
    """What stores and finds a private identifier without keeping it in clear: the at-rest
    cipher (`pipeline.ledger.storage.StorageCipher`), keyed by the storage key."""

    def blind_indexes(self, text: str) -> list[str]:
        """Keyed hashes of `text`, the one to store first, every one to look up by."""
        ...


class DirectoryKey(BlindIndex, Protocol):
    """The blind index, and sealing of a patient's channel addresses (which may carry the
    INS, as MSSanté patient addresses do): the at-rest cipher."""

    def seal_text(self, text: str, context: str) -> str:
        """`text` sealed into a token a text column holds (deterministic per key)."""
        ...


def address_context(recipient_key: str, kind: str) -> str:
    """What a patient's sealed channel address is bound to: it opens for that recipient
    and channel kind only (in the directory, and in the ledger's deliveries)."""
    return f"patient address\0{recipient_key}\0{kind}"


def blind_forms(identifier: Identifier, index: BlindIndex) -> list[str]:
    """The values a private identifier is stored under (first) or found by (all)."""
    return index.blind_indexes(f"{identifier.id_type}\0{identifier.value}")


def stored_form(identifier: Identifier, index: BlindIndex | None) -> Identifier:
    """The identifier as the directory keeps it: a private one as its keyed hash."""
    if index is None or identifier.id_type not in PRIVATE_TYPES:
        return identifier
    return Identifier(identifier.id_type, blind_forms(identifier, index)[0], "")
