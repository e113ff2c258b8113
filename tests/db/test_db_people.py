"""People's certificates, revocations and dataset grants, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from privtrain.errors import FailedPrecondition, NotFound
from privtrain.platform.db import AlreadyExists, Database, DatasetRecord

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def _record(db: Database, serial: str, name: str, role: str = "trainer", *,
            renewal: bool = False) -> None:
    db.certificates.record(serial=serial, common_name=name, role=role, fingerprint_sha256="f" * 64,
                           not_before=NOW, not_after=NOW + timedelta(days=30), renewal=renewal)


def test_a_name_is_one_person_with_one_role_across_renewals(db: Database) -> None:
    _record(db, "a1", "bob")
    with pytest.raises(AlreadyExists, match="certs renew"):
        _record(db, "a2", "bob")
    with pytest.raises(NotFound, match="certs issue"):
        _record(db, "b1", "alice", renewal=True)
    with pytest.raises(FailedPrecondition, match="has role trainer, not admin"):
        _record(db, "a3", "bob", "admin", renewal=True)
    _record(db, "a2", "bob", renewal=True)
    assert [c.serial for c in db.certificates.of_person("bob")] == ["a1", "a2"]
    assert db.certificates.role_of("bob") == "trainer" and db.certificates.role_of("eve") is None


def test_revocation_is_recorded_once_and_listed(db: Database) -> None:
    _record(db, "a1", "bob")
    _record(db, "c1", "carol", "admin")
    revoked, changed = db.certificates.revoke("a1", by="carol", reason="laptop stolen")
    assert changed and revoked.revoked_by == "carol" and revoked.status(NOW) == "revoked"
    again, changed = db.certificates.revoke("a1", by="dave")
    assert not changed and again.revoked_by == "carol"
    assert [c.serial for c in db.certificates.revoked()] == ["a1"]
    assert db.certificates.get("c1").status(NOW + timedelta(days=31)) == "expired"
    with pytest.raises(NotFound):
        db.certificates.revoke("ffff", by="carol")


def test_grants_per_dataset(db: Database, make_dataset: Callable[..., DatasetRecord]) -> None:
    census, other = make_dataset(db), make_dataset(db, name="other")
    assert db.grants.grant(census.id, "bob", by="alice")
    assert not db.grants.grant(census.id, "bob", by="alice")
    assert db.grants.grant(other.id, "erin", by="alice")
    assert db.grants.is_granted(census.id, "bob") and not db.grants.is_granted(other.id, "bob")
    assert db.grants.datasets_of("bob") == {census.id}
    assert db.grants.revoke(census.id, "bob") and not db.grants.revoke(census.id, "bob")
    assert db.grants.trainers(census.id) == []
    with pytest.raises(NotFound):
        db.grants.grant("no-such-dataset", "bob", by="alice")


def test_withdrawal_happens_once_and_keeps_the_ledger(
    db: Database, make_dataset: Callable[..., DatasetRecord]
) -> None:
    census = make_dataset(db)
    withdrawn = db.datasets.withdraw(census.id)
    assert withdrawn.withdrawn and db.datasets.get(census.id).withdrawn
    assert db.budget.of_dataset(census.id).epsilon_budget == 3.0
    with pytest.raises(FailedPrecondition, match="already withdrawn"):
        db.datasets.withdraw(census.id)
