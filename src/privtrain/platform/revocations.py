"""The server's view of the revocation list, fresh to within a fraction of a second.

Every call asks :meth:`RevocationCache.reason`; the list is read from the database at
most every ``max_age_s`` seconds (a revocation made by another process, such as an
operator's ``certs revoke --home``, is seen that fast) and at once after this server
revoked something itself (:meth:`invalidate`).
"""

from __future__ import annotations

import threading
import time

from cryptography import x509

from privtrain.errors import Unauthenticated
from privtrain.platform.db.repositories import Database
from privtrain.secure_transport.revocation import refusal
from privtrain.secure_transport.roles import PeerIdentity

MAX_AGE_S = 0.5
"""Longest a revocation made elsewhere goes unseen (seconds); the promise is one second."""


class RevocationCache:
    """Revoked serials, reloaded when older than ``max_age_s`` seconds.

    Parameters
    ----------
    db : Database
    max_age_s : float
        Seconds a loaded list is trusted.
    """

    def __init__(self, db: Database, max_age_s: float = MAX_AGE_S) -> None:
        self._db = db
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._loaded_at = -float("inf")
        self._revoked: dict[str, str] = {}

    def invalidate(self) -> None:
        """Reload on the next question (after this process revoked a certificate)."""
        with self._lock:
            self._loaded_at = -float("inf")

    def reason(self, serial: str) -> str | None:
        """When and by whom ``serial`` (hex) was revoked (``at <time> UTC by <who>``), or None."""
        with self._lock:
            if time.monotonic() - self._loaded_at > self._max_age_s:
                self._revoked = {
                    c.serial: f"at {c.revoked_at:%Y-%m-%d %H:%M:%S} UTC by {c.revoked_by}"
                    for c in self._db.certificates.revoked()
                }
                self._loaded_at = time.monotonic()
            return self._revoked.get(serial)

    def check(self, identity: PeerIdentity) -> None:
        """Raise unless the caller's certificate is still good (for long-running streams).

        Raises
        ------
        Unauthenticated
            The certificate was revoked since the call began.
        """
        reason = self.reason(identity.serial)
        if reason is not None:
            raise Unauthenticated(refusal(x509.load_pem_x509_certificate(identity.certificate_pem),
                                          reason))
