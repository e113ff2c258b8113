"""Secret key files: created 0600, never overwritten, refused when others can read them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from privtrain.anonymize.errors import KeyFileError, KeyFileExists
from privtrain.anonymize.keys import generate_key, key_id_of, load_key


def test_keygen_writes_mode_0600_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    key = generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_key(path)
    assert loaded == key
    assert len(key.secret) == 32
    assert key.key_id == key_id_of(key.secret) and len(key.key_id) == 16
    assert key.secret.hex()[:16] != key.key_id
    assert key.secret.hex() not in repr(key)


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    first = generate_key(path)
    with pytest.raises(KeyFileExists, match="already exists"):
        generate_key(path)
    assert load_key(path) == first


def test_load_refuses_group_readable_key(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    generate_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600") as info:
        load_key(path)
    assert str(path) in str(info.value)


def test_load_refuses_edited_key_id(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    generate_key(path)
    body = json.loads(path.read_text())
    body["key_id"] = "0" * 16
    path.write_text(json.dumps(body))
    with pytest.raises(KeyFileError, match="'key_id' does not match"):
        load_key(path)
