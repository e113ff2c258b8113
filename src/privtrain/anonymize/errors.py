"""Exceptions of the anonymizer, mapped to gRPC codes and CLI lines by ``privtrain.errors``."""

from __future__ import annotations

from privtrain.errors import FailedPrecondition, InvalidInput


class PolicyError(InvalidInput):
    """The policy file, or the data measured against it, is invalid."""


class KeyFileError(InvalidInput):
    """A secret key file is malformed or has unsafe permissions."""


class KeyFileExists(FailedPrecondition):
    """``generate_key`` refuses to overwrite an existing key file."""


class AnonymizationError(InvalidInput):
    """The data cannot be anonymized as the policy asks (k unreachable, no free pseudonym)."""


class ManifestError(InvalidInput):
    """A manifest is malformed, its signature does not verify, or it does not match the data."""
