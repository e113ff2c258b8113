"""Continuity with an earlier release: same key, same pseudonym generator, or an explicit break.

Tokens and pseudonyms join across files only when every release was made with the
same key, and pseudonyms also need the same Faker version, Faker locale and
derivation scheme (a newer Faker can hold other names at the same list positions,
so the same person would get another pseudonym; case C-A01). A run given the
manifest of an earlier release therefore checks, before reading any data:

* key: ``key_id`` must equal the earlier manifest's, unless the owner asks for a
  rotation (``rotate_key``); the new manifest then records ``rotated_from_key_id``.
* pseudonyms (only when the policy uses the ``pseudonym`` operator):
  ``faker_version``, ``faker_locale`` and ``pseudonym_scheme`` must equal the earlier
  manifest's, unless the owner accepts new pseudonyms (``remap``); the new manifest
  then records the earlier values under ``remapped_from``.
* pseudonym store (only with pseudonyms, under the same key): when the earlier
  manifest records ``pseudonym_store``, this run's store must be that store, holding
  that generation (:meth:`privtrain.anonymize.pseudonym_store.Store.holds`): a stale
  copy, a fork or a new store would give the earlier release's people new pseudonyms
  where their first draw had been taken. ``remap`` accepts it too, and records the
  earlier store under ``remapped_from``.

The earlier manifest's signature is verified first, so a forged or edited file
cannot vouch for continuity; and it must be signed with the public key of this run's
signing certificate (the owner's own key; a renewed certificate may carry a new date
but not a new key), or anyone could forge the earlier link of the chain. It must also
be an anonymized table's manifest, not an image dataset's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from privtrain.anonymize.errors import AnonymizationError, ManifestError
from privtrain.anonymize.manifest import verify_manifest
from privtrain.anonymize.pseudonym_store import Store
from privtrain.datasets.image_manifest import TABLE_KIND, manifest_kind
from privtrain.errors import NotFound

# Manifests written before ``pseudonym_scheme`` was recorded were all made with the
# first (and then only) derivation, so a missing field means that one.
FIRST_PSEUDONYM_SCHEME = "privtrain/pseudonym/v1"


@dataclass(frozen=True)
class RunIdentity:
    """What a run's tokens and pseudonyms depend on.

    Attributes
    ----------
    key_id : str
        Public id of the HMAC key (:func:`privtrain.anonymize.keys.key_id_of`).
    faker_version, faker_locale : str
        Faker's ``VERSION`` and the policy's ``locale``.
    pseudonym_scheme : str
        :data:`privtrain.anonymize.operators.pseudonym.SCHEME`.
    uses_pseudonyms : bool
        Whether the policy has a ``pseudonym`` column (Faker matters only then).
    pseudonym_store : Store | None
        The pseudonym store the run will claim in (None without pseudonyms).
    """

    key_id: str
    faker_version: str
    faker_locale: str
    pseudonym_scheme: str
    uses_pseudonyms: bool
    pseudonym_store: Store | None = None


def _public_key_der(certificate_pem: bytes, what: str) -> bytes:
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError as exc:
        raise ManifestError(f"cannot read {what} ({exc})") from None
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def continuity_fields(
    previous_manifest: Path,
    run: RunIdentity,
    signing_certificate_pem: bytes,
    *,
    rotate_key: bool,
    remap: bool,
) -> dict[str, Any]:
    """Check a run against an earlier release's signed manifest.

    Parameters
    ----------
    previous_manifest : Path
        The earlier ``OUTPUT.manifest.json``.
    run : RunIdentity
        This run's key id, Faker version and locale, pseudonym scheme.
    signing_certificate_pem : bytes
        This run's signing certificate (PEM); the earlier manifest's signer certificate
        must hold the same public key.
    rotate_key : bool
        Accept a different key (tokens and pseudonyms will not match the earlier file).
    remap : bool
        Accept a different Faker version, locale or pseudonym scheme (pseudonyms will not
        match the earlier file).

    Returns
    -------
    dict
        Fields for the new manifest: ``previous_manifest_sha256`` (hex SHA-256 of the
        earlier manifest file) and, when used, ``rotated_from_key_id`` and
        ``remapped_from`` (the earlier ``faker_version``, ``faker_locale``,
        ``pseudonym_scheme``).

    Raises
    ------
    NotFound
        The earlier manifest cannot be read.
    ManifestError
        It is malformed, its signature does not verify, it was signed with another
        public key than ``signing_certificate_pem``'s (names both certificates' SHA-256
        fingerprints), or it describes an image dataset rather than a table.
    AnonymizationError
        The key differs without ``rotate_key``, or the pseudonym generator differs
        without ``remap`` while the policy uses pseudonyms; names both values.
    """
    try:
        data = Path(previous_manifest).read_bytes()
    except OSError as exc:
        raise NotFound(
            f"{previous_manifest}: cannot read the earlier manifest ({exc.strerror})"
        ) from None
    try:
        verified = verify_manifest(data)
    except ManifestError as exc:
        raise ManifestError(f"{previous_manifest}: {exc}") from None
    earlier = verified.manifest
    kind = manifest_kind(earlier)
    if kind != TABLE_KIND:
        raise ManifestError(
            f"{previous_manifest}: is an {kind} manifest (an image dataset's), not an "
            "anonymized table's; pass the manifest of an earlier `anonymize run`"
        )
    ours = _public_key_der(signing_certificate_pem, "the signing certificate")
    if _public_key_der(verified.signer_certificate_pem, "its signer_certificate") != ours:
        mine = x509.load_pem_x509_certificate(signing_certificate_pem)
        theirs = verified.signer_fingerprint_sha256
        raise ManifestError(
            f"{previous_manifest}: signed by certificate {theirs} (SHA-256), whose key is not "
            f"the key of this run's signing certificate {mine.fingerprint(hashes.SHA256()).hex()}; "
            "only the owner's own earlier release can be continued (after moving to a new "
            "key, re-sign the earlier manifest with it), or omit --previous-manifest"
        )
    fields: dict[str, Any] = {"previous_manifest_sha256": hashlib.sha256(data).hexdigest()}
    if earlier["key_id"] != run.key_id:
        if not rotate_key:
            raise AnonymizationError(
                f"{previous_manifest}: made with key {earlier['key_id']}, this run's key is "
                f"{run.key_id}: tokens and pseudonyms would not match the earlier file; use "
                "the earlier key, or pass --rotate-key to re-key on purpose"
            )
        fields["rotated_from_key_id"] = earlier["key_id"]
    before = {
        "faker_version": earlier["faker_version"],
        "faker_locale": earlier["faker_locale"],
        "pseudonym_scheme": earlier.get("pseudonym_scheme", FIRST_PSEUDONYM_SCHEME),
    }
    now = {
        "faker_version": run.faker_version,
        "faker_locale": run.faker_locale,
        "pseudonym_scheme": run.pseudonym_scheme,
    }
    changed = [name for name in before if before[name] != now[name]]
    if run.uses_pseudonyms and changed:
        if not remap:
            diff = ", ".join(f"{n} {before[n]} -> {now[n]}" for n in changed)
            raise AnonymizationError(
                f"{previous_manifest}: pseudonyms would not match the earlier file ({diff}); "
                "run with the earlier Faker version and locale, or pass --remap to accept "
                "new pseudonyms"
            )
        fields["remapped_from"] = before
    record = earlier.get("pseudonym_store")
    store = run.pseudonym_store
    same_key = earlier["key_id"] == run.key_id
    checked = run.uses_pseudonyms and same_key and store is not None
    if checked and isinstance(record, dict) and store is not None and not store.holds(record):
        if not remap:
            state = store.state()
            now_desc = (
                "does not exist yet" if state is None
                else f"is store {state.store_id} at generation {state.generation}"
            )  # fmt: skip
            raise AnonymizationError(
                f"{previous_manifest}: its pseudonyms were claimed in pseudonym store "
                f"{record.get('id')} (generation {record.get('generation')}); "
                f"{store.name} {now_desc} and does not hold them, so pseudonyms would not "
                "match the earlier file; name the store kept with the key "
                "(--pseudonym-store), or pass --remap to accept new pseudonyms"
            )
        fields["remapped_from"] = before | {"pseudonym_store": record}
    return fields
