"""Issue 12: `privtrain worker` hosts take jobs from the PostgreSQL queue.

The server keeps serving gRPC with no local workers; two worker host processes share
its home folder as storage and claim the queued jobs (SKIP LOCKED); kill -9 of one host
mid-job hands its job to the other, which resumes it from its checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import (
    AnonymizedAdult,
    RunningServer,
    adult_spec,
    ledger_entry,
    start_server,
    upload_adult,
)
from sqlalchemy import create_engine, text

from privtrain.platform.job_states import TERMINAL_STATES
from privtrain.trainer.plan import JobPlan

POSTGRES_URL = os.environ.get(
    "PRIVTRAIN_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
JOBS = 20

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema of the test database, dropped afterwards."""
    schema = f"privtrain_hosts_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any failure means: skip, saying why
        admin.dispose()
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} unreachable: {exc}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _worker(url: str, storage: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "privtrain.platform.cli", "worker", "--db-url", url,
         "--storage", str(storage), "--slots", "2", "--checkpoint-every-s", "0.5"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)


def test_two_worker_hosts_run_twenty_jobs_once_each_and_one_resumes_the_others_job(
    tmp_path: Path, adult: AnonymizedAdult, postgres_url: str,
) -> None:
    home = tmp_path / "home"
    rs: RunningServer = start_server(home, adult.pki, adult.bundles, database_url=postgres_url,
                                     local_workers=0)
    hosts: list[subprocess.Popen[bytes]] = []
    try:
        ds = upload_adult(rs, adult, epsilon=20.0)
        with rs.client("trainer") as trainer:
            jobs = [trainer.submit(adult_spec(ds.id, target_epsilon=0.3, epochs=1, batch_size=1024),
                                   request_id=f"job-{i}").id for i in range(JOBS)]
        hosts = [_worker(postgres_url, home, tmp_path / f"host-{i}.log") for i in range(2)]
        db = rs.server.db

        # kill -9 the first host while it trains a job past a checkpoint; every job it held
        # then (two slots) must resume on the other host.
        victim, deadline = hosts[0], time.monotonic() + 240
        killed_job = None
        while killed_job is None:
            assert time.monotonic() < deadline, (tmp_path / "host-0.log").read_text()[-3000:]
            held = [j for j in db.leases.owned() if f":{victim.pid}:" in (j.lease_owner or "")]
            killed_job = next((j.id for j in held if j.steps_done >= 5
                               and list((home / "jobs" / j.id / "checkpoints").glob("*.json"))),
                              None)
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        killed_jobs = {j.id for j in held} | {killed_job}

        deadline = time.monotonic() + 1800
        while not all(db.jobs.get(j).state in TERMINAL_STATES for j in jobs):
            assert time.monotonic() < deadline, (tmp_path / "host-1.log").read_text()[-3000:]
            time.sleep(0.5)

        finals = {j: db.jobs.get(j) for j in jobs}
        assert {f.state.value for f in finals.values()} == {"SUCCEEDED"}
        for job_id, final in finals.items():
            events = db.events.since(job_id, 0, limit=10_000)
            starts = [e for e in events if e.kind == "state" and e.payload["state"] == "RUNNING"]
            resumed = [e for e in events if e.kind == "resumed"]
            assert len(starts) == 1, job_id  # claimed once from PENDING
            if job_id in killed_jobs:
                assert (final.attempts, len(resumed)) == (2, 1)
                if job_id == killed_job:
                    assert resumed[0].payload["from_checkpoint"]
            else:
                assert (final.attempts, len(resumed)) == (1, 0)
            steps = [e.payload["step"] for e in events if e.kind == "step"]
            assert steps == list(range(1, JobPlan.from_dict(final.plan or {}).total_steps + 1))
            entry = ledger_entry(rs, job_id)
            assert entry is not None and entry.settled and entry.charged == entry.planned
        assert f"job {killed_job} claimed by" in (tmp_path / "host-1.log").read_text()
    finally:
        for host in hosts:
            if host.poll() is None:
                host.send_signal(signal.SIGTERM)
                try:
                    host.wait(30)
                except subprocess.TimeoutExpired:
                    host.kill()
        rs.server.stop(1.0)
