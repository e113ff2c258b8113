"""Data-owner tool: policy, operators, k-anonymity, signed manifest.

Runs on the data owner's machine; raw personal data never leaves it.
"""

from privtrain.anonymize.errors import (
    AnonymizationError,
    KeyFileError,
    KeyFileExists,
    ManifestError,
    PolicyError,
)
from privtrain.anonymize.keys import SecretKey, generate_key, load_key
from privtrain.anonymize.manifest import VerifiedManifest, sign_manifest, verify_manifest
from privtrain.anonymize.pipeline import AnonymizationReport, anonymize_file, verify_output
from privtrain.anonymize.policy import ColumnPolicy, Policy, load_policy
from privtrain.anonymize.risk import equivalence_classes, k_anonymity

__all__ = [
    "AnonymizationError",
    "AnonymizationReport",
    "ColumnPolicy",
    "KeyFileError",
    "KeyFileExists",
    "ManifestError",
    "Policy",
    "PolicyError",
    "SecretKey",
    "VerifiedManifest",
    "anonymize_file",
    "equivalence_classes",
    "generate_key",
    "k_anonymity",
    "load_key",
    "load_policy",
    "sign_manifest",
    "verify_manifest",
    "verify_output",
]
