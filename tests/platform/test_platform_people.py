"""People, not roles (issue 11's must-show): a real server on 127.0.0.1 and certificates made by
the CLI. Two trainers each see only their own jobs; a trainer without a grant cannot submit; a
revoked certificate is refused on an open channel within a second, the server still running;
the audit log verifies, and names the entry edited or deleted with sqlite3; a bundle holds no
CA key; after a full job every file under the server's home is 0600 in 0700 folders."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from server_harness import AnonymizedAdult, adult_spec, wait_terminal

from privtrain.anonymize.manifest import sign_manifest
from privtrain.platform.cli import main
from privtrain.platform.client import PrivtrainClient
from privtrain.platform.config import ServerConfig
from privtrain.platform.log_setup import LOGGER_NAME, configure_logging
from privtrain.platform.server import PrivtrainServer
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.secure_transport.issuing import ClientBundle

PEOPLE = {"alice": "data-owner", "ann": "trainer", "ben": "trainer", "carol": "admin"}


@dataclass
class Deployment:
    """A server set up as an operator would, with one finished job of ann's."""

    home: Path
    pki: Path
    people: Path
    server: PrivtrainServer
    target: str
    dataset: pb.Dataset
    job: pb.Job
    log: io.StringIO

    def bundle(self, name: str) -> ClientBundle:
        return ClientBundle(self.people / name)

    def client(self, name: str) -> PrivtrainClient:
        return PrivtrainClient(self.target, self.people / name, timeout_s=20)

    def cli(self, *argv: str | Path) -> int:
        return main([str(a) for a in argv])

    def issue(self, name: str, role: str) -> None:
        assert self.cli("certs", "issue", "--role", role, "--name", name, "--out",
                        self.people / name, "--pki", self.pki, "--home", self.home) == 0


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, adult: AnonymizedAdult) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("operator")
    home, pki, people = work / "home", work / "pki", work / "people"
    assert main(["certs", "init", "--dir", str(pki)]) == 0
    assert main(["db", "upgrade", "--home", str(home)]) == 0
    log = io.StringIO()
    logger = logging.getLogger(LOGGER_NAME)
    saved = list(logger.handlers), logger.level, logger.propagate
    configure_logging("INFO", "json", stream=log)  # as `privtrain server --log-format json`
    server = PrivtrainServer(ServerConfig(home=home, pki_dir=pki, port=0))
    server.start()
    d = Deployment(home, pki, people, server, f"127.0.0.1:{server.port}", pb.Dataset(), pb.Job(),
                   log)
    try:
        for name, role in PEOPLE.items():
            d.issue(name, role)
        # alice signs the release with her own key (the fixture's file is anyone's anonymized Adult).
        manifest = work / "adult.manifest.json"
        manifest.write_bytes(sign_manifest(adult.manifest_dict, d.bundle("alice").key.read_bytes(),
                                           d.bundle("alice").cert.read_bytes()))
        with d.client("alice") as alice:
            d.dataset = alice.upload(adult.parquet, manifest, name="adult", epsilon_budget=8.0,
                                     delta_budget=2e-5, split=adult.split)
        assert d.cli("dataset", "grant", d.dataset.id, "--trainer", "ann", "--server", d.target,
                     "--bundle", people / "alice") == 0
        with d.client("ann") as ann:
            d.job = ann.submit(adult_spec(d.dataset.id))
            wait_terminal(ann, d.job.id)
            d.job = ann.get_job(d.job.id)
            assert d.job.state == "SUCCEEDED", d.job.error
        yield d
    finally:
        server.stop(1.0)
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_another_trainer_cannot_get_watch_cancel_or_download_a_job(deployment: Deployment) -> None:
    """ben holds a grant too, but ann's job is ann's: NOT_FOUND, as a job that does not exist;
    ann and the admin see it."""
    d = deployment
    assert d.cli("dataset", "grant", d.dataset.id, "--trainer", "ben", "--server", d.target,
                 "--bundle", d.people / "alice") == 0
    with d.client("ben") as ben:
        assert _code(lambda: ben.get_job(d.job.id)) is grpc.StatusCode.NOT_FOUND
        assert _code(lambda: list(ben.watch(d.job.id, timeout_s=10))) is grpc.StatusCode.NOT_FOUND
        assert _code(lambda: ben.cancel(d.job.id)) is grpc.StatusCode.NOT_FOUND
        assert _code(lambda: ben.download_parameters(d.job.id)) is grpc.StatusCode.NOT_FOUND
        assert ben.list_jobs() == []
    with d.client("ann") as ann, d.client("carol") as carol:
        assert [j.id for j in ann.list_jobs()] == [d.job.id]
        assert ann.download_parameters(d.job.id).plaintext
        assert carol.get_job(d.job.id).submitter == "ann"


def test_a_trainer_without_a_grant_cannot_submit_or_see_the_dataset(deployment: Deployment) -> None:
    d = deployment
    d.issue("gus", "trainer")
    with d.client("gus") as gus:
        assert gus.list_datasets() == []
        with pytest.raises(grpc.RpcError) as err:
            gus.submit(adult_spec(d.dataset.id))
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "not granted to you (gus)" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            gus.submit_audit(pb.JobSpec(dataset_id=d.dataset.id, target_epsilon=1.0),
                             pb.AuditSettings(canaries=10))
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with d.client("ben") as ben:  # only the owner grants
        with pytest.raises(grpc.RpcError) as err:
            ben.grant(d.dataset.id, "gus")
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_the_owner_sees_who_spent_what_and_trainers_see_no_names(deployment: Deployment) -> None:
    d = deployment
    with d.client("alice") as alice:
        ledger = alice.ledger(d.dataset.id)
        (listed,) = alice.list_datasets()
    jobs = [e for e in ledger.entries if e.kind == "job"]
    assert [(e.job_id, e.submitter, e.settled) for e in jobs] == [(d.job.id, "ann", True)]
    assert jobs[0].planned_epsilon == pytest.approx(d.job.plan.epsilon)
    assert jobs[0].epsilon_spent == pytest.approx(d.job.result.epsilon)
    assert [e.kind for e in ledger.entries if e.kind != "job"] == ["row_counts"]
    assert "ann" in listed.trainers
    with d.client("ann") as ann:
        (seen,) = ann.list_datasets()
        assert list(seen.trainers) == [] and seen.rows == 0
        assert _code(lambda: ann.ledger(d.dataset.id)) is grpc.StatusCode.PERMISSION_DENIED


def test_revocation_refuses_the_next_call_on_an_open_channel_within_a_second(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the admin call (`certs revoke --server`) and through the server's home (`certs
    revoke --home`, another process's write): the already-open channel's next call is
    UNAUTHENTICATED within a second; the server goes on serving everyone else."""
    d = deployment
    d.issue("rita", "trainer")
    d.issue("sam", "trainer")
    with d.client("rita") as rita, d.client("sam") as sam, d.client("carol") as carol:
        assert rita.list_jobs() == [] and sam.list_jobs() == []  # both channels are open
        assert d.cli("certs", "revoke", "--name", "rita", "--server", d.target,
                     "--bundle", d.people / "carol") == 0
        revoked_at = time.monotonic()
        assert _code(rita.list_jobs) is grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() - revoked_at < 1.0
        assert d.cli("certs", "revoke", "--name", "sam", "--reason", "left the team",
                     "--home", d.home, "--pki", d.pki) == 0
        revoked_at = time.monotonic()
        while time.monotonic() - revoked_at < 1.0:
            try:
                sam.list_jobs()
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAUTHENTICATED
                assert "was revoked" in exc.details()
                break
            time.sleep(0.05)
        else:
            pytest.fail("sam's revoked certificate was still accepted a second later")
        assert carol.list_jobs()  # the server is still running, for everyone else
        statuses = {c.name: c.status for c in carol.list_certificates()}
    assert statuses["rita"] == statuses["sam"] == "revoked" and statuses["ann"] == "valid"
    capsys.readouterr()
    assert d.cli("certs", "list", "--home", d.home) == 0
    assert "rita" in capsys.readouterr().out
    from cryptography import x509

    crl = x509.load_pem_x509_crl((d.pki / "crl.pem").read_bytes())
    assert len(list(crl)) == 2


def _copy_database(d: Deployment, to: Path) -> str:
    """A consistent copy of the live SQLite file (the server keeps it open in WAL mode)."""
    with sqlite3.connect(d.home / "privtrain.db") as source, sqlite3.connect(to) as copy:
        source.backup(copy)
    return f"sqlite:///{to}"


def _tamper(path: Path, statement: str) -> None:
    """Edit the stored log with sqlite3, as someone holding the file would."""
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TRIGGER IF EXISTS audit_entries_no_update")
        connection.execute("DROP TRIGGER IF EXISTS audit_entries_no_delete")
        connection.execute(statement)


def test_audit_log_records_who_did_what_and_verify_names_the_bad_entry(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = deployment
    with d.client("carol") as carol:
        carol.sign_audit_log()
        entries, _, _ = carol.audit_log()
    actions = {(e.subject, e.action, e.outcome) for e in entries}
    assert {("alice", "dataset.upload", "ok"), ("alice", "dataset.grant", "ok"),
            ("ann", "job.submit", "ok"), ("ann", "job.download", "ok")} <= actions
    assert any(e.action == "certificate.issue" and e.subject.startswith("local:") for e in entries)
    submit = next(e for e in entries if e.action == "job.submit" and e.subject == "ann")
    assert submit.serial and submit.target == f"job {d.job.id} on dataset {d.dataset.id}"
    capsys.readouterr()
    assert d.cli("audit-log", "verify", "--server", d.target, "--bundle", d.people / "carol") == 0
    assert d.cli("audit-log", "verify", "--home", d.home, "--pki", d.pki) == 0
    assert "audit log verified" in capsys.readouterr().out

    copy = tmp_path / "copy.db"
    url = _copy_database(d, copy)
    assert d.cli("audit-log", "verify", "--db-url", url, "--pki", d.pki) == 0
    _tamper(copy, "UPDATE audit_entries SET subject = 'mallory' WHERE seq = 3")
    assert d.cli("audit-log", "verify", "--db-url", url, "--pki", d.pki) == 1
    assert "entry 3 does not match its hash" in capsys.readouterr().err

    copy = tmp_path / "copy2.db"
    url = _copy_database(d, copy)
    _tamper(copy, "DELETE FROM audit_entries WHERE seq = 5")
    assert d.cli("audit-log", "verify", "--db-url", url, "--pki", d.pki, "--json") == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["first_bad"] == 5 and "entry 5 is missing" in err


def test_a_bundle_holds_no_ca_key(deployment: Deployment) -> None:
    d = deployment
    ca_key = (d.pki / "ca" / "ca.key").read_bytes()
    for name in PEOPLE:
        bundle = d.bundle(name)
        assert sorted(p.name for p in bundle.directory.iterdir()) == ["ca.pem", "client.key",
                                                                      "client.pem"]
        assert all(p.read_bytes() != ca_key and b"ca.key" not in p.name.encode()
                   for p in bundle.files)
        assert stat.S_IMODE(bundle.key.stat().st_mode) == 0o600


def test_every_file_under_the_home_is_private_after_a_full_job(deployment: Deployment) -> None:
    """Datasets, parameters, checkpoints, the DP randomness key, worker logs, the database and
    its -wal/-shm: 0600, in 0700 folders (the home included)."""
    d = deployment
    job_dir = d.home / "jobs" / d.job.id
    assert any(job_dir.glob("*.safetensors")) and (job_dir / "worker.log").is_file()
    assert (d.home / "privtrain.db-wal").exists()
    loose = []
    for folder, _, files in os.walk(d.home):
        if stat.S_IMODE(os.stat(folder).st_mode) != 0o700:
            loose.append((folder, oct(stat.S_IMODE(os.stat(folder).st_mode))))
        for name in files:
            mode = stat.S_IMODE(os.stat(Path(folder) / name).st_mode)
            if mode != 0o600:
                loose.append((f"{folder}/{name}", oct(mode)))
    assert loose == []


def test_the_server_log_tells_state_changes_and_refusals_but_no_private_figures(
    deployment: Deployment,
) -> None:
    d = deployment
    with d.client("ben") as ben:  # one refusal, whatever ran before
        assert _code(lambda: ben.get_job(d.job.id)) is grpc.StatusCode.NOT_FOUND
    records = [json.loads(line) for line in d.log.getvalue().splitlines()]
    messages = [r["message"] for r in records]
    assert any(m.startswith(f"job {d.job.id} admitted: ") for m in messages)
    assert f"job {d.job.id} SUCCEEDED" in messages
    assert any(m.startswith("refused GetJob for ben (serial ") and "NOT_FOUND" in m
               for m in messages)
    text = d.log.getvalue()
    assert "loss" not in text and not re.search(rf"\b{d.dataset.rows}\b", text)
