"""Errors specific to transport security.

Both derive from :class:`privtrain.errors.InvalidInput`: each one means that
something a peer or an operator handed us (a certificate, a sealed blob) is
not acceptable, and the gRPC interceptor answers ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

from privtrain.errors import InvalidInput


class CertificateNameMismatch(InvalidInput):
    """A server certificate's subject alternative names do not cover the host dialed.

    RFC 6125 (section 6.4) and RFC 5280 (section 4.2.1.6): a client checks the
    host against the SAN extension only, an IP literal against ``iPAddress``
    entries and a host name against ``dNSName`` entries; the subject CN is
    never consulted.
    """


class TamperedEnvelope(InvalidInput):
    """A sealed parameter blob failed one of its integrity or authenticity checks."""
