"""Message bytes at rest: sealed, bound to their row, readable after a key rotation."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.errors import ConfigurationError
from pipeline.ledger.storage import StorageCipher, StoredMessageUnreadable

MESSAGE = b"MSH|^~\\&|LIS|LAB|||20261128||ORU^R01|C1|P|2.5\rPID|||1||DUPONT^Jeanne\r"


def test_a_message_round_trips_and_the_ciphertext_hides_it() -> None:
    cipher = StorageCipher.from_key(b"a" * 32)
    blob, key_id = cipher.encrypt(MESSAGE, "LAB\0C1\x001")

    assert b"DUPONT" not in blob
    assert cipher.decrypt(blob, key_id, "LAB\0C1\x001") == MESSAGE


def test_a_message_is_stored_compressed() -> None:
    cipher = StorageCipher.from_key(b"a" * 32)
    result = MESSAGE + b"OBX|1|NM|GLU^Glucose||5.2|mmol/L|3.9-5.8|N|||F\r" * 40

    blob, key_id = cipher.encrypt(result, "ctx")

    assert len(blob) < len(result) / 3
    assert cipher.decrypt(blob, key_id, "ctx") == result


def test_a_value_stored_before_compression_still_reads() -> None:
    key = b"a" * 32
    nonce = b"n" * 12
    legacy = nonce + AESGCM(key).encrypt(nonce, MESSAGE, b"LAB\0C1\x001")

    cipher = StorageCipher.from_key(key)

    assert cipher.decrypt(legacy, cipher.current, "LAB\0C1\x001") == MESSAGE
    with pytest.raises(StoredMessageUnreadable, match="altered"):
        cipher.decrypt(legacy, cipher.current, "LAB\0C2\x001")


def test_a_ciphertext_moved_to_another_row_does_not_decrypt() -> None:
    cipher = StorageCipher.from_key(b"a" * 32)
    blob, key_id = cipher.encrypt(MESSAGE, "LAB\0C1\x001")

    with pytest.raises(StoredMessageUnreadable, match="altered"):
        cipher.decrypt(blob, key_id, "LAB\0C2\x001")


def test_an_altered_ciphertext_is_refused() -> None:
    cipher = StorageCipher.from_key(b"a" * 32)
    blob, key_id = cipher.encrypt(MESSAGE, "ctx")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])

    with pytest.raises(StoredMessageUnreadable):
        cipher.decrypt(tampered, key_id, "ctx")


def test_rows_under_a_previous_key_still_read_after_rotation(tmp_path: Path) -> None:
    old, new = b"o" * 32, b"n" * 32
    blob, old_id = StorageCipher.from_key(old).encrypt(MESSAGE, "ctx")
    key_file = tmp_path / "storage.key"
    key_file.write_text(f"{base64.b64encode(new).decode()}\n{base64.b64encode(old).decode()}\n")

    rotated = StorageCipher.from_file(key_file)

    assert rotated.decrypt(blob, old_id, "ctx") == MESSAGE
    assert rotated.encrypt(MESSAGE, "ctx")[1] != old_id


def test_a_row_under_an_unknown_key_says_which_key_is_missing() -> None:
    blob, key_id = StorageCipher.from_key(b"o" * 32).encrypt(MESSAGE, "ctx")

    with pytest.raises(StoredMessageUnreadable, match=key_id):
        StorageCipher.from_key(b"n" * 32).decrypt(blob, key_id, "ctx")


def test_the_embedded_key_file_is_created_once_and_owner_only(tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "storage.key"
    first = StorageCipher.from_file(key_file, create=True)
    second = StorageCipher.from_file(key_file, create=True)

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.current == second.current
    assert first.current not in key_file.read_text()  # the id is not the key


@pytest.mark.parametrize("content", ["", "not base64!\n", base64.b64encode(b"short").decode()])
def test_an_unusable_key_file_is_a_configuration_error(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "storage.key"
    key_file.write_text(content)

    with pytest.raises(ConfigurationError, match=str(key_file)):
        StorageCipher.from_file(key_file)


def test_a_missing_key_file_is_not_created_unless_asked(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        StorageCipher.from_file(tmp_path / "absent.key")
    assert not (tmp_path / "absent.key").exists()
