"""Certificates for people: one client bundle per person, from the operator's CA.

A bundle is a folder (0700) holding exactly three files:

* ``client.key``: the person's ECDSA P-256 private key, PKCS #8 PEM, mode 0600;
* ``client.pem``: their certificate (subject CN = their name, OU and URI SAN =
  their role, EKU clientAuth), 30 days by default;
* ``ca.pem``: the CA certificate, to check the server with.

Nothing else: no CA key, no other person's key, no server key. The name is the
person's identity on the server (jobs, datasets, grants, the audit log); the
serial tells one of their certificates from another (a renewal keeps the name
and changes the serial).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from privtrain.errors import FailedPrecondition, InvalidInput
from privtrain.secure_transport.pem_files import (
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
)
from privtrain.secure_transport.pki import (
    CLIENT_ROLES,
    LEAF_VALIDITY,
    PRIVATE_FOLDER_MODE,
    PkiLayout,
    issue_certificate,
)
from privtrain.secure_transport.roles import Role

DEFAULT_DAYS = 30
"""Default lifetime of a person's certificate (days): short, renewed with ``certs renew``."""
MAX_DAYS = LEAF_VALIDITY.days

PERSON_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""A person's name: 1-63 lower-case letters, digits, '.', '_' or '-', starting with a letter
or digit (it is also the certificate's dNSName, and a name in every listing)."""

RESERVED_NAMES = frozenset({"privtrain-parameter-signer", "localhost"})


@dataclass(frozen=True)
class ClientBundle:
    """Where one person's bundle lives.

    Attributes
    ----------
    directory : Path
        The bundle folder (0700) with ``client.key``, ``client.pem`` and ``ca.pem``.
    """

    directory: Path

    @property
    def key(self) -> Path:
        """The person's private key (PKCS #8 PEM, mode 0600)."""
        return self.directory / "client.key"

    @property
    def cert(self) -> Path:
        """The person's certificate (PEM)."""
        return self.directory / "client.pem"

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (PEM), to verify the server and sealed parameters with."""
        return self.directory / "ca.pem"

    @property
    def files(self) -> tuple[Path, Path, Path]:
        """Every file a bundle holds."""
        return self.key, self.cert, self.ca_cert


def check_person_name(name: str) -> str:
    """Return ``name`` if it can name a person, else raise.

    Raises
    ------
    InvalidInput
        ``name`` does not match :data:`PERSON_NAME` or is reserved.
    """
    if not PERSON_NAME.fullmatch(name):
        raise InvalidInput(
            f"name {name[:70]!r} must be 1-63 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. alice, bob.smith)"
        )
    if name in RESERVED_NAMES:
        raise InvalidInput(f"name {name!r} is reserved; choose another")
    return name


def load_ca(layout: PkiLayout) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key from the operator's folder.

    Raises
    ------
    InvalidInput
        The CA key is missing or unreadable (the message says where it is kept), or
        it is not an ECDSA key.
    """
    if not layout.ca_key.is_file():
        raise InvalidInput(
            f"no CA key at {layout.ca_key}: issue certificates in the operator's folder made by "
            "`privtrain certs init` (--pki), where the CA key is kept"
        )
    key = load_private_key(layout.ca_key)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInput(f"{layout.ca_key} is not an ECDSA CA key")
    return load_certificate(layout.ca_cert), key


def issue_bundle(layout: PkiLayout, *, role: Role, name: str, out: Path,
                 days: int = DEFAULT_DAYS, overwrite: bool = False) -> x509.Certificate:
    """Issue a client certificate for one person and write their bundle to ``out``.

    Parameters
    ----------
    layout : PkiLayout
        The operator's folder holding the CA (``certs init``).
    role : Role
        ``data-owner``, ``trainer`` or ``admin``.
    name : str
        The person (:func:`check_person_name`): the certificate's CN and dNSName.
    out : Path
        The bundle folder, created 0700; never inside ``layout.directory``.
    days : int
        Lifetime in days, 1 to 397.
    overwrite : bool
        Replace a bundle already in ``out``.

    Returns
    -------
    x509.Certificate
        The new certificate (its serial identifies it, e.g. for revocation).

    Raises
    ------
    InvalidInput
        Another role, a bad name, days out of range, ``out`` inside the operator's
        folder, or a missing CA key.
    FailedPrecondition
        ``out`` already holds files and ``overwrite`` is False.
    """
    if role not in CLIENT_ROLES:
        known = ", ".join(r.value for r in CLIENT_ROLES)
        raise InvalidInput(f"people get one of the roles {known}, not {role.value}")
    check_person_name(name)
    if not 1 <= days <= MAX_DAYS:
        raise InvalidInput(f"days must be between 1 and {MAX_DAYS}, not {days}")
    bundle = ClientBundle(Path(out))
    operator = layout.directory.resolve()
    target = bundle.directory.resolve()
    if target == operator or operator in target.parents:
        raise InvalidInput(
            f"{bundle.directory} is inside the operator's folder {layout.directory}: write the "
            "bundle elsewhere (it is handed to the person; the CA key must not travel with it)"
        )
    if bundle.directory.is_dir() and any(bundle.directory.iterdir()) and not overwrite:
        raise FailedPrecondition(
            f"{bundle.directory} is not empty; choose another --out or pass --force to replace "
            "the bundle in it"
        )
    ca_cert, ca_key = load_ca(layout)
    cert, key = issue_certificate(ca_cert, ca_key, common_name=name, role=role,
                                  validity=dt.timedelta(days=days))
    try:
        bundle.directory.mkdir(parents=True, exist_ok=True)
        bundle.directory.chmod(PRIVATE_FOLDER_MODE)
    except OSError as exc:
        raise InvalidInput(f"cannot create {bundle.directory}: {exc.strerror}") from None
    write_private_key(bundle.key, key)
    write_certificate(bundle.cert, cert)
    write_certificate(bundle.ca_cert, ca_cert)
    return cert
