"""The data owner's secret key for HMAC tokens and pseudonyms.

One 32-byte random secret per data owner. The same key gives the same token for
the same value across files and runs (case C-A01), so it must be kept, backed up
and never shared: whoever holds it can test guesses against the tokens. The key
file is JSON, readable by its owner only (mode 0600)::

    {"format": "privtrain-hmac-key", "version": 1, "key_id": "<16 hex>", "secret": "<base64>"}

``key_id`` names the key in manifests without revealing it: the first 16 hex
characters of SHA-256(b"privtrain-key-id" + secret).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from privtrain.anonymize.errors import KeyFileError, KeyFileExists

KEY_FORMAT = "privtrain-hmac-key"
KEY_VERSION = 1
SECRET_BYTES = 32


@dataclass(frozen=True)
class SecretKey:
    """An HMAC-SHA256 secret and its public identifier.

    Attributes
    ----------
    key_id : str
        16 lowercase hex characters; safe to publish.
    secret : bytes
        32 random bytes; ``repr`` hides them so logs never carry the key.
    """

    key_id: str
    secret: bytes = field(repr=False)


def key_id_of(secret: bytes) -> str:
    """Return the public identifier of ``secret`` (16 hex chars of a domain-separated SHA-256)."""
    return hashlib.sha256(b"privtrain-key-id" + secret).hexdigest()[:16]


def generate_key(path: Path) -> SecretKey:
    """Create a new random key file at ``path`` with mode 0600.

    Parameters
    ----------
    path : Path
        Destination; must not exist.

    Returns
    -------
    SecretKey
        The key just written.

    Raises
    ------
    KeyFileExists
        ``path`` already exists; overwriting would orphan every token made with the old key.
    """
    path = Path(path)
    secret = secrets.token_bytes(SECRET_BYTES)
    key = SecretKey(key_id=key_id_of(secret), secret=secret)
    body = {
        "format": KEY_FORMAT,
        "version": KEY_VERSION,
        "key_id": key.key_id,
        "secret": base64.b64encode(secret).decode("ascii"),
    }
    data = (json.dumps(body, indent=2) + "\n").encode("utf-8")
    # O_EXCL makes "refuse to overwrite" race-free, and creating with 0o600 means the
    # secret is never readable by others, not even between create and chmod.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileExists(
            f"{path}: key file already exists; refusing to overwrite it "
            "(tokens made with it could no longer be reproduced)"
        ) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # The umask may have narrowed 0o600 already; chmod pins exactly 0o600.
        os.chmod(path, 0o600)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return key


def load_key(path: Path) -> SecretKey:
    """Read and check a key file written by :func:`generate_key`.

    Parameters
    ----------
    path : Path
        The key file.

    Returns
    -------
    SecretKey

    Raises
    ------
    KeyFileError
        Missing file, group/other permission bits set, bad JSON, wrong format or
        version, bad base64, wrong length, or a ``key_id`` that does not match the secret.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: key file is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"{path}: not a privtrain key file ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != KEY_FORMAT:
        raise KeyFileError(f"{path}: 'format' must be {KEY_FORMAT!r}")
    if body.get("version") != KEY_VERSION:
        raise KeyFileError(f"{path}: unsupported key file 'version' {body.get('version')!r}")
    try:
        secret = base64.b64decode(str(body.get("secret", "")), validate=True)
    except binascii.Error:
        raise KeyFileError(f"{path}: 'secret' is not valid base64") from None
    if len(secret) != SECRET_BYTES:
        raise KeyFileError(f"{path}: 'secret' must be {SECRET_BYTES} bytes, got {len(secret)}")
    key_id = key_id_of(secret)
    if body.get("key_id") != key_id:
        raise KeyFileError(f"{path}: 'key_id' does not match the secret (file edited or corrupt)")
    return SecretKey(key_id=key_id, secret=secret)
