"""Migrations shipped in the package: upgrade, downgrade, and agreement with the ORM."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from privtrain.platform.db import Database, DatasetRecord, downgrade, upgrade
from privtrain.platform.db.engine import make_engine
from privtrain.platform.db.migrate import (
    ALEMBIC_DIR,
    alembic_config,
    current_revision,
    head_revision,
)
from privtrain.platform.db.models import metadata

TABLES = {"datasets", "jobs", "privacy_ledgers", "ledger_entries", "job_events", "job_metrics", "alerts",
          "dataset_grants", "certificates", "audit_entries", "audit_head", "audit_signatures"}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_head_on_empty_database_creates_tables(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No alembic.ini anywhere near: the config is built in code.
    monkeypatch.chdir(tmp_path)
    assert _tables(db_url) == set()
    upgrade(db_url)
    assert _tables(db_url) == TABLES
    assert current_revision(db_url) == head_revision() == "0004"


def test_upgrade_downgrade_upgrade_is_green(db_url: str) -> None:
    """C-D01: upgrade -> downgrade base -> upgrade on SQLite and PostgreSQL."""
    upgrade(db_url)
    downgrade(db_url, "base")
    assert _tables(db_url) == set()
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert _tables(db_url) == TABLES


def test_orm_metadata_matches_migrated_schema(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_migrations_are_shipped_inside_the_package() -> None:
    assert ALEMBIC_DIR.parent.name == "privtrain"
    assert (ALEMBIC_DIR / "env.py").is_file()
    assert (ALEMBIC_DIR / "script.py.mako").is_file()
    assert (ALEMBIC_DIR / "versions" / "0001_initial.py").is_file()
    assert (ALEMBIC_DIR / "versions" / "0002_privacy_ledgers.py").is_file()
    assert (ALEMBIC_DIR / "versions" / "0004_job_leases.py").is_file()
    assert (ALEMBIC_DIR / "versions" / "0003_people_and_audit_log.py").is_file()


def test_people_and_audit_log_revision_keeps_datasets_up_and_down(
    db_url: str, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str],
) -> None:
    """C-D01 for 0003: datasets and jobs survive 0003 -> 0002 -> 0003; the audit log starts
    again from an empty chain (head seq 0), and its table refuses changes at every step up."""
    from privtrain.platform.db.audit_log import NewAuditEntry

    upgrade(db_url)
    with Database(db_url) as db:
        dataset = make_dataset(db)
        job = submit(db, dataset.id)
        db.grants.grant(dataset.id, "bob", by="owner.example.test")
        db.audit_log.append(NewAuditEntry("bob", "ab12", "trainer", "job.submit", f"job {job}", "ok"))
        db.datasets.withdraw(dataset.id)
    downgrade(db_url, "0002")
    assert _tables(db_url) == TABLES - {"dataset_grants", "certificates", "audit_entries",
                                        "audit_head", "audit_signatures"}
    upgrade(db_url)
    with Database(db_url) as db:
        kept = db.datasets.get(dataset.id)
        assert kept.name == dataset.name and not kept.withdrawn
        assert [j.id for j in db.jobs.list()] == [job]
        assert db.audit_log.head() == (0, "0" * 64)
        appended = db.audit_log.append(NewAuditEntry("bob", "ab12", "trainer", "job.cancel", "x", "ok"))
        assert appended.seq == 1
    engine = make_engine(db_url)
    try:
        with pytest.raises(Exception, match="append-only"), engine.begin() as connection:
            connection.execute(text("DELETE FROM audit_entries"))
    finally:
        engine.dispose()


def test_summing_ledger_rows_become_fixed_entries_and_come_back(db_url: str) -> None:
    """C-D01 for 0002: a dataset and its reservations made under basic composition keep their
    budget and their charges (as ``fixed`` entries), up and down again."""
    upgrade(db_url, "0001")
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO datasets (id, name, owner_common_name, storage_path, sha256, size_bytes, "
                "rows, manifest_json, epsilon_budget, delta_budget, created_at) VALUES ('d1', 'adult', "
                "'owner', '/x', :sha, 10, 20, '{}', 5.0, 1e-4, CURRENT_TIMESTAMP)"), {"sha": "ab" * 32})
            for job, reserved, spent, settled in (("j1", 1.0, 0.8, True), ("j2", 2.0, 0.5, False)):
                connection.execute(text(
                    "INSERT INTO jobs (id, dataset_id, submitter_common_name, spec_json, state, "
                    "created_at) VALUES (:id, 'd1', 't', '{}', 'PENDING', CURRENT_TIMESTAMP)"),
                    {"id": job})
                connection.execute(text(
                    "INSERT INTO privacy_spend (job_id, dataset_id, epsilon_reserved, delta_reserved, "
                    "epsilon_spent, settled) VALUES (:id, 'd1', :r, 1e-6, :s, :settled)"),
                    {"id": job, "r": reserved, "s": spent, "settled": settled})
    finally:
        engine.dispose()
    upgrade(db_url)
    with Database(db_url) as db:
        ledger = db.budget.of_dataset("d1")
        assert (ledger.epsilon_budget, ledger.delta_budget) == (5.0, 1e-4)
        # Charged as before: the spend once settled (0.8), the reservation before (2.0).
        assert ledger.epsilon_committed == pytest.approx(2.8)
        assert db.budget.refresh(ledger.id) == pytest.approx(2.8)
        assert {e.kind for e in db.budget.entries(ledger.id)} == {"fixed"}
    downgrade(db_url, "0001")
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            rows = connection.execute(text(
                "SELECT job_id, epsilon_reserved, epsilon_spent, settled FROM privacy_spend "
                "ORDER BY job_id")).all()
            budget = connection.execute(text("SELECT epsilon_budget FROM datasets")).scalar_one()
    finally:
        engine.dispose()
    assert [(r[0], r[1], r[2], bool(r[3])) for r in rows] == [("j1", 0.8, 0.8, True),
                                                                ("j2", 2.0, 0.5, False)]
    assert budget == 5.0


_LATER_REVISION = '''
"""Test revision: NOT NULL, dropped unique constraint, new job state."""
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{head}"
branch_labels = None
depends_on = None

_OLD = "state IN ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')"
_NEW = "state IN ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED', 'PAUSED')"


def upgrade():
    op.execute("UPDATE jobs SET request_id = id WHERE request_id IS NULL")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("uq_jobs_submitter_common_name_request_id"), type_="unique")
        batch.alter_column("request_id", existing_type=sa.String(255), nullable=False)
        batch.drop_constraint(op.f("ck_jobs_state"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_state"), sa.text(_NEW))


def downgrade():
    op.execute("UPDATE jobs SET state = 'PENDING' WHERE state = 'PAUSED'")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_state"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_state"), sa.text(_OLD))
        batch.alter_column("request_id", existing_type=sa.String(255), nullable=True)
        batch.create_unique_constraint(op.f("uq_jobs_submitter_common_name_request_id"),
                                       ["submitter_common_name", "request_id"])
'''


def _migrate(url: str, script_dir: Path, action: str, revision: str) -> None:
    engine = make_engine(url, foreign_keys=False)
    try:
        with engine.begin() as connection:
            config = alembic_config(url, connection)
            config.set_main_option("script_location", str(script_dir))
            getattr(command, action)(config, revision)
    finally:
        engine.dispose()


def test_batch_migration_keeps_rows_and_foreign_keys(
    db_url: str,
    tmp_path: Path,
    make_dataset: Callable[..., DatasetRecord],
    submit: Callable[..., str],
) -> None:
    """C-D01: a later revision that makes a column NOT NULL, drops a unique constraint and
    adds a job state runs up, down and up again with every existing row kept."""
    script_dir = tmp_path / "alembic"
    shutil.copytree(ALEMBIC_DIR, script_dir, ignore=shutil.ignore_patterns("__pycache__"))
    (script_dir / "versions" / "9999_test.py").write_text(
        _LATER_REVISION.replace("{head}", head_revision()))

    upgrade(db_url)
    with Database(db_url) as db:
        dataset = make_dataset(db)
        first = submit(db, dataset.id, request_id=None)
        second = submit(db, dataset.id, request_id="retry-key")
        db.events.append(first, "queued", {"position": 1})

    _migrate(db_url, script_dir, "upgrade", "head")
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            # The new state is accepted, and request_id is no longer unique.
            connection.execute(text("UPDATE jobs SET state = 'PAUSED', request_id = 'same'"))
            assert connection.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 2
            connection.execute(text("UPDATE jobs SET request_id = id"))
            connection.execute(
                text("UPDATE jobs SET request_id = 'retry-key' WHERE id = :id"), {"id": second}
            )
    finally:
        engine.dispose()

    _migrate(db_url, script_dir, "downgrade", head_revision())
    _migrate(db_url, script_dir, "upgrade", "head")
    _migrate(db_url, script_dir, "downgrade", head_revision())
    with Database(db_url) as db:
        assert {job.id for job in db.jobs.list()} == {first, second}
        assert db.jobs.get(second).request_id == "retry-key"
        assert [event.kind for event in db.events.since(first, 0)] == ["queued"]
        assert db.budget.remaining(dataset.id)[0] == pytest.approx(3.0)
    # Foreign keys still point at the recreated jobs table.
    engine = make_engine(db_url)
    try:
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO job_events (job_id, kind, payload_json, created_at) "
                    "VALUES ('no-such-job', 'queued', '{}', CURRENT_TIMESTAMP)"
                )
            )
    finally:
        engine.dispose()
