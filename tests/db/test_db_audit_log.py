"""The audit log's storage: chained appends under concurrent writers, signed heads, and
verification that names the first changed, removed or reordered entry."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from privtrain.platform.audit_chain import GENESIS, verify_chain
from privtrain.platform.audit_trail import Actor, AuditTrail
from privtrain.platform.db import Database
from privtrain.platform.db.engine import make_engine
from privtrain.secure_transport.pki import PkiLayout, init_pki, load_certificate, load_private_key

THREADS = 4
APPENDS_PER_THREAD = 50
WORK_INSIDE_TRANSACTION_S = 0.02


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    return init_pki(tmp_path_factory.mktemp("pki"))


def _signer(pki: PkiLayout) -> tuple[Ed25519PrivateKey, bytes]:
    key = load_private_key(pki.key("signing"))
    assert isinstance(key, Ed25519PrivateKey)
    return key, load_certificate(pki.cert("signing")).public_bytes(serialization.Encoding.PEM)


def _ca(pki: PkiLayout) -> x509.Certificate:
    return load_certificate(pki.ca_cert)


def _fill(db: Database, count: int) -> None:
    trail = AuditTrail(db)
    for i in range(count):
        trail.record(Actor("bob", f"{i:x}", "trainer"), "job.submit", f"job j{i} on dataset d",
                     "ok" if i % 3 else "PERMISSION_DENIED")


def _verify(db: Database, pki: PkiLayout):
    return verify_chain(db.audit_log.all_entries(), db.audit_log.signatures(), db.audit_log.head(),
                        _ca(pki))


def _tamper(db: Database, statement: str) -> None:
    """What someone holding the database file can do: drop the append-only guard, then write."""
    engine = make_engine(db.url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                connection.execute(text("DROP TRIGGER IF EXISTS audit_entries_no_update"))
                connection.execute(text("DROP TRIGGER IF EXISTS audit_entries_no_delete"))
            else:
                connection.execute(text("ALTER TABLE audit_entries DISABLE TRIGGER USER"))
            connection.execute(text(statement))
    finally:
        engine.dispose()


def test_entries_chain_from_the_genesis_hash_and_move_the_head(db: Database, pki: PkiLayout) -> None:
    _fill(db, 5)
    entries = list(db.audit_log.all_entries())
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert db.audit_log.head() == (5, entries[-1].hash)
    assert _verify(db, pki).ok


def test_concurrent_writers_each_own_engine_never_fork_the_chain(db_url: str, db: Database,
                                                                 pki: PkiLayout) -> None:
    """C-D02 for the audit log: 4 writers (each its own engine, as the server and an operator's
    command are) x 50 appends, each transaction holding 20 ms of work: 200 entries, seq 1..200,
    one unbroken chain, no "database is locked" reaching a caller."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def writer(worker: int) -> None:
        with Database(db_url) as own:
            trail = AuditTrail(own)
            barrier.wait()
            for i in range(APPENDS_PER_THREAD):
                try:
                    with own.transaction():
                        time.sleep(WORK_INSIDE_TRANSACTION_S)
                        trail.record(Actor(f"w{worker}", "", "admin"), "dataset.grant", f"{i}")
                except Exception as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    report = _verify(db, pki)
    assert report.ok, report.problem
    assert report.entries == report.last_seq == THREADS * APPENDS_PER_THREAD


def test_an_edited_entry_is_named(db: Database, pki: PkiLayout) -> None:
    _fill(db, 6)
    _tamper(db, "UPDATE audit_entries SET target = 'job j9 on dataset d' WHERE seq = 3")
    report = _verify(db, pki)
    assert (report.ok, report.first_bad) == (False, 3)
    assert "entry 3 does not match its hash" in report.problem


def test_a_removed_entry_is_named_in_the_middle_and_at_the_end(db: Database, pki: PkiLayout) -> None:
    _fill(db, 6)
    _tamper(db, "DELETE FROM audit_entries WHERE seq = 6")
    report = _verify(db, pki)
    assert (report.ok, report.first_bad) == (False, 6)
    assert "entry 6 is missing: the head names entry 6" in report.problem
    _tamper(db, "DELETE FROM audit_entries WHERE seq = 4")
    report = _verify(db, pki)
    assert (report.ok, report.first_bad) == (False, 4)
    assert "entry 4 is missing" in report.problem


def test_the_last_entry_removed_with_the_head_rolled_back_is_caught_by_a_signature(
    db: Database, pki: PkiLayout
) -> None:
    """Deleting the newest entry and rewinding the head row leaves a consistent chain; the head
    signed before then no longer matches it."""
    _fill(db, 4)
    AuditTrail(db).sign(*_signer(pki))
    third = next(e for e in db.audit_log.all_entries() if e.seq == 3)
    _tamper(db, "DELETE FROM audit_entries WHERE seq = 4")
    _tamper(db, f"UPDATE audit_head SET seq = 3, hash = '{third.hash}'")
    report = _verify(db, pki)
    assert (report.ok, report.first_bad) == (False, 4)
    assert "covers entries up to 4" in report.problem


def test_reordered_entries_are_named(db: Database, pki: PkiLayout) -> None:
    _fill(db, 5)
    _tamper(db, "UPDATE audit_entries SET seq = seq + 100 WHERE seq IN (2, 3)")
    _tamper(db, "UPDATE audit_entries SET seq = 3 WHERE seq = 102")
    _tamper(db, "UPDATE audit_entries SET seq = 2 WHERE seq = 103")
    report = _verify(db, pki)
    assert (report.ok, report.first_bad) == (False, 2)


def test_a_rewritten_chain_fails_the_signed_head(db: Database, pki: PkiLayout) -> None:
    """Someone who recomputes every hash after an edit still cannot sign the new head."""
    from privtrain.platform.audit_chain import entry_hash

    _fill(db, 3)
    AuditTrail(db).sign(*_signer(pki))
    prev = GENESIS
    for e in list(db.audit_log.all_entries()):
        target = "job forged" if e.seq == 2 else e.target
        digest = entry_hash(seq=e.seq, at=e.at, subject=e.subject, serial=e.serial, role=e.role,
                            action=e.action, target=target, outcome=e.outcome, detail=e.detail,
                            prev_hash=prev)
        _tamper(db, f"UPDATE audit_entries SET target = '{target}', prev_hash = '{prev}', "
                    f"hash = '{digest}' WHERE seq = {e.seq}")
        prev = digest
    _tamper(db, f"UPDATE audit_head SET hash = '{prev}'")
    report = _verify(db, pki)
    assert not report.ok and "no longer match the head signed" in report.problem


def test_a_forged_signature_is_refused(db: Database, pki: PkiLayout, tmp_path: Path) -> None:
    """A head signed by another CA's signing key does not count."""
    _fill(db, 2)
    AuditTrail(db).sign(*_signer(init_pki(tmp_path / "other")))
    report = _verify(db, pki)
    assert not report.ok and "untrusted signer" in report.problem


def test_signing_only_when_moved_and_the_application_cannot_change_entries(db: Database,
                                                                           pki: PkiLayout) -> None:
    trail = AuditTrail(db)
    _fill(db, 2)
    assert trail.sign(*_signer(pki), only_if_moved=True) is not None
    assert trail.sign(*_signer(pki), only_if_moved=True) is None
    _fill(db, 1)
    assert trail.sign(*_signer(pki), only_if_moved=True).seq == 3  # type: ignore[union-attr]
    report = _verify(db, pki)
    assert report.ok and (report.signatures, report.last_signed_seq) == (2, 3)
    with pytest.raises(Exception, match="append-only"), db.transaction() as session:
        session.execute(text("UPDATE audit_entries SET target = 'x' WHERE seq = 1"))
