"""Message bytes at rest: AES-256-GCM under a storage key named in settings.

The ledger database may be backed up, replicated or read by a DBA; health data in it stays
sealed. Each message is encrypted with a fresh nonce and bound (as associated data) to its
ledger key, so a ciphertext copied onto another row does not decrypt there. The key file
holds one base64 key; its id (a hash prefix, never the key) is stored beside each row so a
rotated key can still open older rows when kept as a previous key.

Message bytes are compressed before they are encrypted (ciphertext does not compress):
HL7 text shrinks ~2.5 times, so the ledger writes (table and WAL) and reads less per
result. Whether a value was compressed is bound into its associated data, so it is
authenticated with the value, never guessed from its bytes; values written before
compression was introduced still read (the second context is tried on a mismatch).

A key is never made up over a ledger that already holds rows: `check_stored_keys` reads
the key ids of the oldest and newest encrypted rows of each table, and a process refuses to
start when one of them is not in the key file (a ledger copied without its key, a key file
replaced instead of rotated), naming the key id, before anything is written under a new one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, column, inspect, select, table

from pipeline.errors import ConfigurationError, LabdispatchError
from pipeline.ledger.files import make_private

NONCE_BYTES = 12
KEY_BYTES = 32

#: The tables holding data encrypted with the storage key, each with `id` and
#: `storage_key_id` columns.
ENCRYPTED_TABLES = ("messages", "rejections")
#: Appended to the associated data of a value compressed before its encryption.
_DEFLATED = b"\0deflate"
#: Above this size a result is mostly base64 documents, where LZ matching finds little and
#: costs three times the time of Huffman coding alone (which takes base64's 6 bits in 8).
_HUFFMAN_ONLY_ABOVE = 64 * 1024
#: What a value sealed by `StorageCipher.seal_text` starts with.
SEALED_PREFIX = "sealed:"


def is_sealed(value: str | None) -> bool:
    return bool(value) and str(value).startswith(SEALED_PREFIX)


class StoredMessageUnreadable(LabdispatchError):
    """A stored message cannot be decrypted (wrong key file, or the row was tampered with)."""


@dataclass(frozen=True)
class StorageCipher:
    keys: dict[str, bytes]  # key id -> key; the first one encrypts
    current: str

    @classmethod
    def from_key(cls, key: bytes, *previous: bytes) -> StorageCipher:
        keys = {_key_id(k): k for k in (key, *previous)}
        return cls(keys=keys, current=_key_id(key))

    @classmethod
    def from_file(cls, path: Path, *, create: bool = False) -> StorageCipher:
        """Read the key file (one base64 key per line, current first, older keys after);
        with `create`, write a new random key when the file does not exist yet."""
        if create and not path.exists():
            _write_new_key(path)
        make_private(path)  # a key file others can read is made 0600, with a warning
        try:
            lines = path.read_text(encoding="ascii").split()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigurationError(
                f"cannot read the storage key file {path}: {error.__class__.__name__}"
            ) from error
        try:
            keys = [base64.b64decode(line, validate=True) for line in lines]
        except (binascii.Error, ValueError) as error:
            raise ConfigurationError(
                f"the storage key file {path} must hold base64 keys, one per line"
            ) from error
        if not keys or any(len(k) != KEY_BYTES for k in keys):
            raise ConfigurationError(
                f"the storage key file {path} must hold {KEY_BYTES}-byte keys in base64 "
                "(create one with: head -c 32 /dev/urandom | base64)"
            )
        return cls.from_key(keys[0], *keys[1:])

    def blind_indexes(self, text: str) -> list[str]:
        """Keyed hashes of `text`, one per key (the current key's first): a value to store
        and look up by exact match that does not give `text` back to whoever reads the
        database without the key file. After a rotation, values stored under a previous
        key are still found as long as that key stays in the file."""
        return [
            "hmac:" + hmac.new(_index_key(key), text.encode(), hashlib.sha256).hexdigest()[:40]
            for key in (
                self.keys[self.current],
                *(k for i, k in self.keys.items() if i != self.current),
            )
        ]

    def seal_text(self, text: str, context: str) -> str:
        """`text` encrypted into a short token (`sealed:<key id>:<base64>`) that a text
        column holds: deterministic (the nonce is a keyed hash of context and text), so the
        same text sealed again under the same key gives the same token, and a directory
        file imported twice changes nothing; bound to `context` like stored messages."""
        key = self.keys[self.current]
        nonce = hmac.new(
            _index_key(key), context.encode() + b"\0" + text.encode(), hashlib.sha256
        ).digest()[:NONCE_BYTES]
        sealed = AESGCM(key).encrypt(nonce, text.encode(), context.encode())
        token = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{SEALED_PREFIX}{self.current}:{token}"

    def open_text(self, token: str, context: str) -> str:
        """The text `seal_text` sealed; StoredMessageUnreadable when the key is not in the
        key file or the token was altered or moved to another context."""
        key_id, _, data = token.removeprefix(SEALED_PREFIX).partition(":")
        try:
            blob = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError) as error:
            raise StoredMessageUnreadable("a sealed value is not in its stored form") from error
        return self._open(blob, key_id, context).decode()

    def encrypt(self, data: bytes, context: str) -> tuple[bytes, str]:
        """`data` compressed, then encrypted and bound to `context`."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keys[self.current]).encrypt(
            nonce, _deflate(data), context.encode() + _DEFLATED
        )
        return nonce + sealed, self.current

    def decrypt(self, blob: bytes, key_id: str, context: str) -> bytes:
        """The bytes `encrypt` was given (or, for a value stored before compression, the
        bytes stored); StoredMessageUnreadable when the key is missing or the value altered
        or moved to another context."""
        aead = AESGCM(self._key(key_id))
        nonce, sealed = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
        try:
            packed = aead.decrypt(nonce, sealed, context.encode() + _DEFLATED)
        except InvalidTag:
            return self._open(blob, key_id, context)  # stored before compression
        # Authenticated above: written by `encrypt` from a message bounded at intake.
        return zlib.decompress(packed, -zlib.MAX_WBITS)

    def _open(self, blob: bytes, key_id: str, context: str) -> bytes:
        """`blob` decrypted as it was encrypted, with `context` alone as associated data."""
        key = self._key(key_id)
        try:
            return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], context.encode())
        except InvalidTag as error:
            raise StoredMessageUnreadable(
                f"the stored message {context} does not decrypt: the row was altered"
            ) from error

    def _key(self, key_id: str) -> bytes:
        key = self.keys.get(key_id)
        if key is None:
            raise StoredMessageUnreadable(
                f"the message was stored under key {key_id}, which is not in the storage key "
                "file; add the previous key after the current one"
            )
        return key


class StorageKeyMissing(ConfigurationError):
    """The ledger holds rows encrypted under a key the key file does not hold."""


def stored_key_ids(connection: Connection) -> set[str]:
    """The key ids of the oldest and newest encrypted row of each table (two lookups on the
    primary key each, however large the ledger); empty for an empty or new ledger."""
    found: set[str] = set()
    present = set(inspect(connection).get_table_names())
    for name in ENCRYPTED_TABLES:
        if name not in present:
            continue
        rows = table(name, column("id"), column("storage_key_id"))
        for order in (rows.c.id.asc(), rows.c.id.desc()):
            key_id = connection.scalar(select(rows.c.storage_key_id).order_by(order).limit(1))
            if key_id:
                found.add(key_id)
    return found


def check_stored_keys(stored: set[str], cipher: StorageCipher | None, path: Path) -> None:
    """Raise StorageKeyMissing when rows were stored under a key `cipher` does not hold
    (`cipher` None: the key file does not exist and is about to be created)."""
    missing = sorted(stored - set(cipher.keys if cipher is not None else ()))
    if not missing:
        return
    ids = ", ".join(missing)
    if cipher is None:
        raise StorageKeyMissing(
            f"the ledger holds results encrypted under storage key id {ids}, but the key file "
            f"{path} does not exist: restore it from the backup it was saved with (a new key "
            "would leave those results unreadable); nothing was changed"
        )
    raise StorageKeyMissing(
        f"the ledger holds results encrypted under storage key id {ids}, which the key file "
        f"{path} does not hold (it holds {', '.join(cipher.keys)}): put the key back, or after "
        "a rotation keep the previous key on a line after the current one; nothing was changed"
    )


def _deflate(data: bytes) -> bytes:
    """Raw deflate at level 1: most of the saving for a fraction of the time of higher
    levels (a 3 KB result in ~35 µs)."""
    strategy = zlib.Z_HUFFMAN_ONLY if len(data) > _HUFFMAN_ONLY_ABOVE else zlib.Z_DEFAULT_STRATEGY
    compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS, 8, strategy)
    return compressor.compress(data) + compressor.flush()


def _index_key(key: bytes) -> bytes:
    """The blind-index key derived from a storage key (never the key itself)."""
    return hashlib.sha256(b"labdispatch blind index key\0" + key).digest()


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"labdispatch storage key\0" + key).hexdigest()[:16]


def _write_new_key(path: Path) -> None:
    """Create the key file readable by its owner only, without a window where it is not."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = base64.b64encode(os.urandom(KEY_BYTES)) + b"\n"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process created it first: use theirs
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
