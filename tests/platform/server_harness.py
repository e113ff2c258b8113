"""Helpers for the platform tests: a real server on 127.0.0.1, real PKI, SQLite, Opacus workers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.pipeline import anonymize_file
from privtrain.datasets.adult import fetch_adult
from privtrain.platform.client import PrivtrainClient, job_spec
from privtrain.platform.config import ServerConfig
from privtrain.platform.db.budget import EntryRecord
from privtrain.platform.db.migrate import upgrade
from privtrain.platform.server import PrivtrainServer
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.secure_transport.pki import PkiLayout, init_pki

POLICY = Path(__file__).resolve().parents[2] / "examples" / "adult" / "policy.toml"


@dataclass(frozen=True)
class AnonymizedAdult:
    """The anonymized UCI Adult file, its manifest and the PKI that signed it."""

    parquet: Path
    manifest: Path
    pki: PkiLayout

    @property
    def manifest_dict(self) -> dict:
        return json.loads(self.manifest.read_text())["manifest"]

    @property
    def split(self) -> tuple[str, str, str] | None:
        """The split to declare at upload: none when the policy declared one, else Adult's own
        ``split`` column (adult.data rows train, adult.test rows test)."""
        return None if "split" in self.manifest_dict else ("split", "train", "test")


def make_adult(folder: Path) -> AnonymizedAdult:
    """UCI Adult anonymized with the demo policy, signed by the data owner of a fresh PKI."""
    layout = init_pki(folder / "pki")
    key = folder / "owner.hmac"
    generate_key(key)
    out = folder / "adult.anon.parquet"
    anonymize_file(fetch_adult(), POLICY, key, out, signing_key_path=layout.key("data-owner"),
                   signing_cert_path=layout.cert("data-owner"))
    return AnonymizedAdult(out, out.with_name(out.name + ".manifest.json"), layout)


@dataclass
class RunningServer:
    """A started server and how to reach it."""

    server: PrivtrainServer
    target: str
    pki: PkiLayout

    def client(self, role: str) -> PrivtrainClient:
        return PrivtrainClient(self.target, self.pki.directory, role, timeout_s=20)


def start_server(home: Path, pki: PkiLayout, **overrides: object) -> RunningServer:
    """Migrate a fresh SQLite file and start a server on a free port."""
    config = ServerConfig(home=home, pki_dir=pki.directory, **{"port": 0, **overrides})  # type: ignore[arg-type]
    home.mkdir(parents=True, exist_ok=True)
    upgrade(config.db_url)
    server = PrivtrainServer(config)
    server.start()
    return RunningServer(server, f"127.0.0.1:{server.port}", pki)


def upload_adult(rs: RunningServer, adult: AnonymizedAdult, *, epsilon: float = 5.0,
                 delta: float = 2e-5, name: str = "adult") -> pb.Dataset:
    """Upload the anonymized Adult file as the data owner."""
    with rs.client("data-owner") as owner:
        return owner.upload(adult.parquet, adult.manifest, name=name, epsilon_budget=epsilon,
                            delta_budget=delta, split=adult.split)


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
