"""The server's side of running jobs: admission, reconciliation, and its local worker host.

One scheduler thread

- admits PENDING jobs in order: calibrates σ on the dataset's published counts with
  the job's own accountant (within ``admission_timeout_s``), composes the plan with the
  ledger and reserves it, or fails the job with the reason. Admission runs here, not in
  the RPC handler, so a submission returns at once whatever the calibration costs;
- reconciles, every ``reconcile_interval_s``: a RUNNING job whose host stopped
  renewing its lease (or whose host process on this machine is gone, e.g. a server
  killed before this one started) goes back to the queue, to be resumed from its
  checkpoint by the first host that claims it, with a DEAD_WORKER alert; an unowned
  job whose cancel was asked for is settled CANCELLED; one whose workers died
  ``max_failed_attempts`` times is settled FAILED with a RESUMES_EXHAUSTED alert.
  What each is charged: :mod:`privtrain.platform.settlement`.

Training itself runs in worker processes of a
:class:`~privtrain.platform.worker_host.WorkerHost`: the server's own (``local_workers``
slots; the default with SQLite), and those of ``privtrain worker`` on other hosts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from datetime import UTC, datetime

from privtrain.errors import FailedPrecondition, PrivtrainError
from privtrain.monitoring.alerts import AlertKind
from privtrain.monitoring.monitor import JobMonitor
from privtrain.platform.alerting import AlertSink
from privtrain.platform.config import ServerConfig
from privtrain.platform.db.records import JobRecord
from privtrain.platform.db.repositories import Database
from privtrain.platform.events import EventHub
from privtrain.platform.job_states import JobState
from privtrain.platform.settlement import finish_job, spent_history
from privtrain.platform.worker_host import (
    RUN_ALERTS,
    STORAGE_ERRORS,
    HostSettings,
    WorkerHost,
    owner_gone,
)
from privtrain.trainer.accounting import time_limit
from privtrain.trainer.plan import plan_job
from privtrain.trainer.spec import TrainingSpec

log = logging.getLogger(__name__)


class JobRunner:
    """Admission, reconciliation and the local worker host of one server."""

    def __init__(self, config: ServerConfig, db: Database, hub: EventHub, monitor: JobMonitor,
                 alerts: AlertSink) -> None:
        self._config = config
        self._db = db
        self._hub = hub
        self._alerts = alerts
        self.host = WorkerHost(db, hub, monitor, alerts, HostSettings(
            storage=config.home, slots=config.local_workers, lease_s=config.lease_s,
            max_failed_attempts=config.max_failed_attempts, kill_grace_s=config.cancel_grace_s,
            checkpoint_every_s=config.checkpoint_every_s,
            monitor_interval_s=config.monitor_interval_s,
        )) if config.local_workers > 0 else None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._schedule_loop, name="job-scheduler", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Reconcile what a previous server left, then admit, reconcile and run jobs."""
        self._reconcile()
        self._thread.start()
        if self.host is not None:
            self.host.start()

    def wake(self) -> None:
        """A job was submitted: look for work now rather than at the next tick."""
        self._wake.set()
        if self.host is not None:
            self.host.wake()

    def stop(self, grace_s: float) -> None:
        """Stop admitting; suspend the local workers (their jobs resume at the next start)."""
        self._stopping.set()
        self._wake.set()
        if self.host is not None:
            self.host.stop(grace_s)
        self._thread.join(5)

    def worker_pid(self, job_id: str) -> int | None:
        """PID of the job's worker process (on its host) while it runs."""
        pid = self.host.worker_pid(job_id) if self.host is not None else None
        if pid is None:
            with contextlib.suppress(PrivtrainError, *STORAGE_ERRORS):
                pid = self._db.jobs.get(job_id).worker_pid
        return pid

    # ------------------------------------------------------------------ cancel
    def cancel(self, job_id: str) -> None:
        """Cancel a job: at once when PENDING or waiting for a resume, otherwise its worker
        stops between two steps (within a second or two)."""
        if finish_job(self._db, self._hub, job_id, JobState.PENDING, JobState.CANCELLED,
                      "cancelled before it started", spent=[]):
            return
        if not self._db.leases.request_cancel(job_id):
            return  # already finished, or already asked
        if self.host is not None and self.host.cancel(job_id):
            return
        job = self._db.jobs.get(job_id)
        if job.state is JobState.RUNNING and job.lease_owner is None:
            self._settle_unowned(job)

    # ------------------------------------------------------------------ scheduling
    def _schedule_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._config.reconcile_interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._admit_pending()
                self._reconcile()
            except Exception:  # noqa: BLE001 - keep scheduling; a DB hiccup must not stop the server
                log.exception("scheduler error")

    def _admit_pending(self) -> None:
        for job in self._db.jobs.list(state=JobState.PENDING):
            if self._stopping.is_set():
                return
            if job.plan_json is None and self._admit(job) and self.host is not None:
                self.host.wake()

    def _admit(self, job: JobRecord) -> bool:
        """Plan a job on its dataset's published counts and reserve the plan, or fail it.

        Planning and reservation use only public figures (spec, published counts,
        ledger histories), so their refusals reach the trainer as they are.
        """
        try:
            dataset = self._db.datasets.get(job.dataset_id)
            if dataset.withdrawn:
                raise FailedPrecondition(f"dataset {dataset.id} was withdrawn by its owner")
            spec = TrainingSpec.from_dict(job.spec)
            with time_limit(self._config.admission_timeout_s):
                plan = plan_job(spec, int(dataset.published_train_rows or 0),
                                int(dataset.published_test_rows or 0))
            audit = job.audit
            charges = audit is None or audit["mechanism"] == "dp"
            self._db.budget.admit(job.id, json.dumps(plan.to_dict(), sort_keys=True),
                                  plan.history() if charges else None)
        except PrivtrainError as exc:
            finish_job(self._db, self._hub, job.id, JobState.PENDING, JobState.FAILED,
                       f"not admitted: {exc}", spent=[])
            return False
        log.info("job %s admitted: σ=%.4g, %d steps, planned ε=%.4g", job.id, plan.noise.scale,
                 plan.total_steps, plan.epsilon)
        return True

    # ------------------------------------------------------------------ reconciliation
    def _reconcile(self) -> None:
        """Hand on jobs whose host is gone; settle the unowned ones that are cancelled or spent."""
        for job in self._db.leases.owned():
            gone = owner_gone(job.lease_owner or "")
            if not gone and not _lease_expired(job):
                continue
            if self._db.leases.reclaim(job):
                why = "is gone" if gone else "stopped renewing its lease"
                message = (f"job {job.id}: its worker host {job.lease_owner} {why} (after step "
                           f"{job.steps_done}); the job resumes from its last checkpoint")
                log.warning(message)
                self._alerts.fire(job.id, AlertKind.DEAD_WORKER, message,
                                  last_step=job.steps_done, attempt=job.attempts)
                if self.host is not None:
                    self.host.wake()
        for job in self._db.leases.unowned():
            if job.cancel_requested_at is not None or job.failed_attempts >= self._config.max_failed_attempts:
                self._settle_unowned(job)

    def _settle_unowned(self, job: JobRecord) -> None:
        if job.cancel_requested_at is not None:
            done = finish_job(self._db, self._hub, job.id, JobState.RUNNING, JobState.CANCELLED,
                              "cancelled while waiting to be resumed", spent=spent_history(job),
                              owner=None)
        else:
            reason = (f"the job's worker ended without a result {job.failed_attempts} times "
                      f"(limit {self._config.max_failed_attempts}); the operator can see why")
            done = finish_job(self._db, self._hub, job.id, JobState.RUNNING, JobState.FAILED, reason,
                              spent=spent_history(job), owner=None,
                              detail=f"{reason}: see worker.log in the job's folder")
            if done:
                self._alerts.fire(job.id, AlertKind.RESUMES_EXHAUSTED,
                                  f"job {job.id} FAILED: {reason}", attempts=job.attempts,
                                  last_step=job.steps_done)
        if done:
            self._alerts.resolve(job.id, RUN_ALERTS, f"job {job.id} settled")


def _lease_expired(job: JobRecord) -> bool:
    return job.lease_expires_at is not None and job.lease_expires_at < datetime.now(UTC)
