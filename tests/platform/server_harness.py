"""Helpers for the platform tests: a real server on 127.0.0.1, real PKI, SQLite, Opacus workers.

The PKI has three people, one per role, each with a bundle of their own: ``alice``
(data-owner), ``bob`` (trainer) and ``carol`` (admin); tests reach them by role.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.pipeline import anonymize_file
from privtrain.datasets.adult import fetch_adult
from privtrain.platform.client import PrivtrainClient, job_spec
from privtrain.platform.config import ServerConfig
from privtrain.platform.db.budget import EntryRecord
from privtrain.platform.db.migrate import upgrade
from privtrain.platform.db.repositories import Database
from privtrain.platform.server import PrivtrainServer
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.secure_transport.issuing import ClientBundle, issue_bundle
from privtrain.secure_transport.pki import PkiLayout, init_pki, load_certificate
from privtrain.secure_transport.roles import Role, serial_hex

POLICY = Path(__file__).resolve().parents[2] / "examples" / "adult" / "policy.toml"
PEOPLE = {"data-owner": "alice", "trainer": "bob", "admin": "carol"}
"""The harness's person for each role."""


@dataclass(frozen=True)
class AnonymizedAdult:
    """The anonymized UCI Adult file, its manifest, the PKI and the people's bundles
    (by role; the data owner's signed the manifest)."""

    parquet: Path
    manifest: Path
    pki: PkiLayout
    bundles: dict[str, ClientBundle]

    @property
    def manifest_dict(self) -> dict:
        return json.loads(self.manifest.read_text())["manifest"]

    @property
    def split(self) -> tuple[str, str, str] | None:
        """The split to declare at upload: none when the policy declared one, else Adult's own
        ``split`` column (adult.data rows train, adult.test rows test)."""
        return None if "split" in self.manifest_dict else ("split", "train", "test")


def make_people(folder: Path) -> tuple[PkiLayout, dict[str, ClientBundle]]:
    """A fresh PKI and one bundle per role (see :data:`PEOPLE`)."""
    layout = init_pki(folder / "pki")
    bundles = {}
    for role, name in PEOPLE.items():
        bundles[role] = ClientBundle(folder / "people" / name)
        issue_bundle(layout, role=Role(role), name=name, out=bundles[role].directory)
    return layout, bundles


def register_people(db: Database, bundles: dict[str, ClientBundle]) -> None:
    """Record bundles issued outside this database (as `certs issue` would have), so grants
    and revocations by name find them."""
    for role, bundle in bundles.items():
        cert = load_certificate(bundle.cert)
        if db.certificates.role_of(PEOPLE.get(role, role)) is not None:
            continue  # a restart on the same home
        db.certificates.record(
            serial=serial_hex(cert), common_name=PEOPLE.get(role, role), role=role,
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)


def make_adult(folder: Path) -> AnonymizedAdult:
    """UCI Adult anonymized with the demo policy, signed by the data owner of a fresh PKI."""
    layout, bundles = make_people(folder)
    key = folder / "owner.hmac"
    generate_key(key)
    out = folder / "adult.anon.parquet"
    anonymize_file(fetch_adult(), POLICY, key, out, signing_key_path=bundles["data-owner"].key,
                   signing_cert_path=bundles["data-owner"].cert)
    return AnonymizedAdult(out, out.with_name(out.name + ".manifest.json"), layout, bundles)


@dataclass
class RunningServer:
    """A started server and how to reach it."""

    server: PrivtrainServer
    target: str
    pki: PkiLayout
    bundles: dict[str, ClientBundle]

    def client(self, role: str) -> PrivtrainClient:
        """A client holding the harness person's bundle for ``role``."""
        return PrivtrainClient(self.target, self.bundles[role].directory, timeout_s=20)


def start_server(home: Path, pki: PkiLayout, bundles: dict[str, ClientBundle],
                 **overrides: object) -> RunningServer:
    """Migrate a fresh SQLite file, record the people, and start a server on a free port."""
    config = ServerConfig(home=home, pki_dir=pki.directory, **{"port": 0, **overrides})  # type: ignore[arg-type]
    home.mkdir(parents=True, exist_ok=True)
    upgrade(config.db_url)
    with Database(config.db_url) as db:
        register_people(db, bundles)
    server = PrivtrainServer(config)
    server.start()
    return RunningServer(server, f"127.0.0.1:{server.port}", pki, bundles)


def upload_adult(rs: RunningServer, adult: AnonymizedAdult, *, epsilon: float = 5.0,
                 delta: float = 2e-5, name: str = "adult", grant: bool = True) -> pb.Dataset:
    """Upload the anonymized Adult file as the data owner, and grant the harness trainer."""
    with rs.client("data-owner") as owner:
        ds = owner.upload(adult.parquet, adult.manifest, name=name, epsilon_budget=epsilon,
                          delta_budget=delta, split=adult.split)
        if grant:
            owner.grant(ds.id, PEOPLE["trainer"])
        return ds


def adult_spec(dataset_id: str, **overrides: object) -> pb.JobSpec:
    """A small, quick DP job on Adult."""
    fields: dict[str, object] = dict(
        dataset_id=dataset_id, model="logistic_regression", target_column="income",
        target_epsilon=1.0, target_delta=1e-5, epochs=1, batch_size=512,
        max_physical_batch_size=256, max_grad_norm=1.0, learning_rate=0.5, seed=0,
        accountant="rdp",
    )
    fields.update(overrides)
    return job_spec(**fields)


def wait_terminal(client: PrivtrainClient, job_id: str) -> list[pb.JobEvent]:
    """Watch a job to its end; returns every event."""
    return list(client.watch(job_id, timeout_s=300))


def ledger_entry(rs: RunningServer, job_id: str) -> EntryRecord | None:
    """The job's entry on its dataset's privacy ledger (None if it was never admitted)."""
    return rs.server.db.budget.entry_of_job(job_id)
