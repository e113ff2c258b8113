"""A worker host: takes jobs from the database's queue and trains each in a worker process.

The server runs one for its local workers; ``privtrain worker`` runs one on any host
that reaches the database (PostgreSQL) and mounts the server's storage folder. For
each job it claims (:mod:`privtrain.platform.db.leases`) the host spawns a worker
(:func:`privtrain.platform.worker.worker_main`), resuming from the job's latest
checkpoint when it has one, and one supervising thread that

- relays the worker's messages into the database (events, step metrics, the furthest
  step and release reached, the ε spent so far) in one transaction per batch, and
  keeps them in memory while the database cannot be written;
- renews the job's lease, and polls for a cancel asked through any server;
- ends the job when the worker ends: settles it (succeeded, cancelled, failed), or
  gives it back to the queue to be resumed (the host stops, the storage failed, the
  worker died), retrying with backoff while the database is unavailable.

A host that cannot renew a lease for most of its length kills the worker (fencing): the
reconciler may already have handed the job to another host, and two workers must
never write into one job's folder.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import os
import queue as queue_module
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from privtrain.errors import PrivtrainError
from privtrain.monitoring.alerts import AlertKind, AlertTransition
from privtrain.monitoring.monitor import JobMonitor
from privtrain.platform import worker as worker_module
from privtrain.platform.alerting import AlertSink
from privtrain.platform.db.records import JobRecord, StepMetric
from privtrain.platform.db.repositories import Database
from privtrain.platform.events import EventHub
from privtrain.platform.job_states import JobState
from privtrain.platform.settlement import finish_job
from privtrain.trainer.checkpoints import latest_checkpoint, private_folder
from privtrain.trainer.plan import JobPlan

log = logging.getLogger(__name__)
_SPAWN = mp.get_context("spawn")

# What a trainer reads when its job fails inside the worker: the worker's own message may
# quote values of the private rows, so it goes to the operator (error_detail) instead.
WORKER_FAILED = "the job failed while training; the operator can see why (error_detail)"
# Errors of the database or the file system that pass: retried, never fatal to the host.
STORAGE_ERRORS = (SQLAlchemyError, OSError)
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0
# Alerts about the job's run that end when it is resumed or settled.
RUN_ALERTS = (AlertKind.DEAD_WORKER, AlertKind.STORAGE_ERROR, AlertKind.SETTLEMENT_FAILED)


def new_owner_id() -> str:
    """``host:pid:random``: names one host process in leases (the pid lets a restarted server
    on the same machine see that the previous one is gone)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_gone(owner: str) -> bool:
    """Whether ``owner`` (see :func:`new_owner_id`) is a process of this machine that no
    longer exists (its leases need not be waited out)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class HostSettings:
    """How a worker host runs jobs.

    Attributes
    ----------
    storage : Path
        The server's home folder as mounted here: ``datasets/`` and ``jobs/<id>/``.
    slots : int
        Jobs trained at once.
    lease_s : float
        Lease length (seconds); renewed every third of it.
    cancel_poll_s : float
        How often (seconds) the host reads a cancel asked through another server.
    max_failed_attempts : int
        Attempts whose worker process may die without an outcome before the job fails
        (a host that dies does not count: the job did not fail, its host did).
    kill_grace_s : float
        Seconds a worker asked to cancel or suspend may take before it is killed
        (it normally ends itself within a second; only a frozen one is killed).
    checkpoint_every_s : float
        Checkpoint cadence inside epochs (seconds).
    monitor_interval_s : float
        How often (seconds) the stall check runs.
    owner : str
        This host's name in leases.
    """

    storage: Path
    slots: int = 1
    lease_s: float = 10.0
    cancel_poll_s: float = 0.25
    max_failed_attempts: int = 5
    kill_grace_s: float = 10.0
    checkpoint_every_s: float = 30.0
    monitor_interval_s: float = 0.25
    owner: str = field(default_factory=new_owner_id)


@dataclass
class _Run:
    job: JobRecord
    plan: JobPlan
    cancel: Any
    suspend: Any
    steps: int
    releases: int
    process: Any = None
    last_epsilon: float = 0.0
    outcome: tuple[str, dict[str, Any]] | None = None
    cancel_at: float | None = None
    suspend_at: float | None = None
    # Set when the worker reports its training loop started (before its first step).
    loop_started: bool = False
    # Relayed to the database in the next successful write (kept while it fails).
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    metrics: list[StepMetric] = field(default_factory=list)
    progress_dirty: bool = False
    thread: threading.Thread | None = None


class WorkerHost:
    """Claims jobs from the queue and supervises one worker process per job."""

    def __init__(self, db: Database, hub: EventHub, monitor: JobMonitor, alerts: AlertSink,
                 settings: HostSettings) -> None:
        self._db = db
        self._hub = hub
        self._monitor = monitor
        self._alerts = alerts
        self.settings = settings
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._claimer = threading.Thread(target=self._claim_loop, name="host-claim", daemon=True)
        self._watcher = threading.Thread(target=self._monitor_loop, name="host-monitor", daemon=True)

    @property
    def owner(self) -> str:
        """This host's name in leases."""
        return self.settings.owner

    def start(self) -> None:
        """Start claiming jobs and checking them for stalls."""
        log.info("worker host %s: %d slot(s), storage %s", self.owner, self.settings.slots,
                 self.settings.storage)
        self._claimer.start()
        self._watcher.start()

    def wake(self) -> None:
        """A job may have become claimable: look now rather than at the next poll."""
        self._wake.set()

    def cancel(self, job_id: str) -> bool:
        """Tell the job's worker at once, when this host runs it (others see it on their poll)."""
        with self._lock:
            run = self._runs.get(job_id)
        if run is None:
            return False
        run.cancel_at = run.cancel_at or time.monotonic()
        run.cancel.set()
        return True

    def worker_pid(self, job_id: str) -> int | None:
        """PID of the job's worker process, when this host runs it."""
        with self._lock:
            run = self._runs.get(job_id)
        return None if run is None or run.process is None else run.process.pid

    def running(self) -> list[str]:
        """Ids of the jobs this host runs now."""
        with self._lock:
            return list(self._runs)

    def stop(self, grace_s: float) -> None:
        """Suspend every worker (each job goes back to the queue, to resume from its last
        checkpoint), wait up to ``grace_s`` seconds, then kill what is left."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.suspend_at = time.monotonic()
            run.suspend.set()
        deadline = time.monotonic() + grace_s
        for run in runs:
            if run.thread is not None:
                run.thread.join(max(0.0, deadline - time.monotonic()))
        for run in runs:
            if run.process is not None and run.process.is_alive():
                run.process.kill()
        for run in runs:
            if run.thread is not None:
                run.thread.join(5)
        self._claimer.join(5)
        self._watcher.join(5)

    # ------------------------------------------------------------------ claiming
    def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            while not self._stopping.is_set():
                try:
                    with self._lock:
                        if len(self._runs) >= self.settings.slots:
                            break
                        job = self._db.leases.claim(self.owner, self.settings.lease_s,
                                                    self.settings.max_failed_attempts)
                        if job is None:
                            break
                        try:
                            run = self._new_run(job)
                        except (KeyError, TypeError, ValueError) as exc:
                            # A job row whose plan cannot be read must not end this host's
                            # claiming: it goes back as a failed attempt, and after the
                            # allowed attempts the reconciler settles it.
                            log.error("job %s: its plan cannot be read (%s); not run",
                                      job.id, _one_line(exc))
                            self._db.leases.give_back(job.id, self.owner, died=True,
                                                      retry_after_s=RETRY_MAX_S)
                            continue
                        self._runs[job.id] = run
                except STORAGE_ERRORS as exc:
                    log.warning("worker host %s cannot claim jobs: %s", self.owner, _one_line(exc))
                    break
                # The worker is spawned from its supervising thread, which lives as long as the
                # worker: the kernel ends the worker when that thread ends (PR_SET_PDEATHSIG).
                run.thread = threading.Thread(target=self._supervise, args=(run,),
                                              name=f"job-{job.id[:8]}", daemon=True)
                run.thread.start()

    def _new_run(self, job: JobRecord) -> _Run:
        log.info("job %s claimed by %s (attempt %d)", job.id, self.owner, job.attempts)
        if job.plan is None:
            raise ValueError("the job has no plan")
        return _Run(job=job, plan=JobPlan.from_dict(job.plan), cancel=_SPAWN.Event(),
                    suspend=_SPAWN.Event(), steps=job.steps_done, releases=job.releases_done)

    def _monitor_loop(self) -> None:
        while not self._stopping.wait(self.settings.monitor_interval_s):
            try:
                self._alerts.apply(self._monitor.check())
            except Exception:  # noqa: BLE001 - a database hiccup must not end monitoring
                log.exception("monitor check failed")

    # ------------------------------------------------------------------ one job
    def _supervise(self, run: _Run) -> None:
        job_id = run.job.id
        try:
            ended = self._watch_worker(run)
            if ended:
                self._conclude(run)
        except Exception:  # noqa: BLE001 - the job goes back to the queue, the host stays up
            log.exception("supervising job %s failed", job_id)
            if run.process is not None and run.process.is_alive():
                run.process.kill()
                run.process.join(10)
            self._retry(run, lambda: self._db.leases.give_back(job_id, self.owner, died=True,
                                                               retry_after_s=1.0))
        finally:
            with self._lock:
                self._runs.pop(job_id, None)
            with contextlib.suppress(*STORAGE_ERRORS):
                self._alerts.apply(self._monitor.job_finished(job_id))
            self._wake.set()

    def _watch_worker(self, run: _Run) -> bool:
        """Run the worker to its end; False when the lease was lost (nothing left to do)."""
        job = run.job
        dataset = self._db.datasets.get(job.dataset_id)
        if dataset.withdrawn:
            # Withdrawn while the job waited or started: the withdrawal may have missed it.
            self._ask_cancel(run)
        try:
            out_dir = private_folder(self.settings.storage / "jobs" / job.id)
            resume = latest_checkpoint(out_dir / "checkpoints") is not None
        except OSError as exc:  # the storage is full, read-only or gone: retried later
            run.outcome = (worker_module.MESSAGE_STORAGE_ERROR, {"error": _one_line(exc)})
            return True
        work = {"spec": job.spec, "plan": job.plan, "split": dataset.split, "audit": job.audit,
                "resume": resume, "checkpoint_every_s": self.settings.checkpoint_every_s}
        path = self.settings.storage / "datasets" / Path(dataset.storage_path).name
        q = _SPAWN.Queue()
        run.process = _SPAWN.Process(
            target=worker_module.worker_main,
            args=(work, str(path), dataset.sha256, dataset.manifest, str(out_dir), q, run.cancel,
                  run.suspend),
            name=f"privtrain-worker-{job.id}", daemon=True,
        )
        run.process.start()
        if job.attempts == 1:
            run.events.append((job.id, "state", {"state": JobState.RUNNING.value, "error": ""}))
        else:
            run.events.append((job.id, "resumed", {"attempt": job.attempts, "from_checkpoint": resume}))
        self._flush(run)
        log.info("job %s RUNNING in worker pid %s%s", job.id, run.process.pid,
                 " (resumed from its checkpoint)" if resume else "")
        renew_every = self.settings.lease_s / 3
        last_renewed = last_beat = last_poll = time.monotonic()
        beat_pid: int | None = run.process.pid
        while True:
            for kind, payload in _drain(q, timeout_s=0.1):
                self._take(run, kind, payload)
            self._flush(run)
            now = time.monotonic()
            if now - last_beat >= renew_every or beat_pid is not None:
                last_beat = now
                try:
                    beat = self._db.leases.heartbeat(job.id, self.owner, self.settings.lease_s,
                                                     worker_pid=beat_pid)
                    last_renewed, beat_pid = now, None
                    if not beat.held:
                        log.warning("job %s: lease lost; stopping its worker here", job.id)
                        _kill(run.process)
                        return False
                    if beat.cancel_requested:
                        self._ask_cancel(run)
                except STORAGE_ERRORS as exc:
                    log.warning("job %s: lease not renewed: %s", job.id, _one_line(exc))
                    if now - last_renewed > 0.8 * self.settings.lease_s:
                        # Fencing: the job may be handed to another host once the lease runs out.
                        log.error("job %s: lease about to expire; stopping its worker", job.id)
                        _kill(run.process)
                        self._retry(run, lambda: self._db.leases.give_back(
                            job.id, self.owner, died=False, retry_after_s=1.0))
                        return False
            elif now - last_poll >= self.settings.cancel_poll_s and run.cancel_at is None:
                last_poll = now
                with contextlib.suppress(*STORAGE_ERRORS):
                    if self._db.jobs.get(job.id).cancel_requested_at is not None:
                        self._ask_cancel(run)
            if run.cancel_at is not None and not run.loop_started and run.process.is_alive():
                # Still starting (interpreter, imports, data, model): no step was taken, and
                # the worker cannot see the cancel before its imports end, seconds later on a
                # busy host. Nothing of it can leave, so it is stopped now and charged 0.
                log.info("job %s: cancelled before its training loop started; worker stopped",
                         job.id)
                run.process.kill()
                run.process.join(5)
            asked = run.cancel_at or run.suspend_at
            if asked is not None and now - asked > self.settings.kill_grace_s and run.process.is_alive():
                log.warning("job %s: worker did not stop within %.0f s; killing it", job.id,
                            self.settings.kill_grace_s)
                run.process.kill()
            if not run.process.is_alive():
                for kind, payload in _drain(q, timeout_s=0.2):
                    self._take(run, kind, payload)
                run.process.join()
                return True

    def _ask_cancel(self, run: _Run) -> None:
        if run.cancel_at is None:
            run.cancel_at = time.monotonic()
            run.cancel.set()

    def _take(self, run: _Run, kind: str, payload: dict[str, Any]) -> None:
        """Fold one worker message into the run (what to write, the monitor, the outcome)."""
        job_id = run.job.id
        transitions: list[AlertTransition] = []
        if kind == worker_module.MESSAGE_STARTED:
            run.loop_started = True
            resumed_at = int(payload.get("resumed_at_step") or 0)
            run.steps = max(run.steps, resumed_at)
            run.releases = max(run.releases, run.plan.releases_by(resumed_at))
            run.progress_dirty = True
            self._monitor.job_started(job_id)
            run.events.append((job_id, "started", payload))
            with contextlib.suppress(*STORAGE_ERRORS):
                self._alerts.resolve(job_id, RUN_ALERTS, f"job {job_id} resumed")
        elif kind == worker_module.MESSAGE_STEP:
            step = int(payload["step"])
            transitions += self._monitor.observe_step(
                job_id, step=step, loss=payload["loss"], batch_size=payload["batch_size"],
                samples_per_s=payload["samples_per_s"])
            if step > run.steps:  # a step replayed after a resume was relayed the first time
                run.steps = step
                run.progress_dirty = True
                run.last_epsilon = payload["epsilon"]
                run.metrics.append(StepMetric(
                    step=step, epoch=payload["epoch"], loss=payload["loss"],
                    batch_size=payload["batch_size"], samples_per_s=payload["samples_per_s"],
                    epsilon=payload["epsilon"]))
                run.events.append((job_id, "step", json_safe_step(payload)))
        elif kind == worker_module.MESSAGE_EPOCH:
            if payload["test_accuracy"] is not None and payload["epoch"] in run.plan.release_epochs:
                run.releases = max(run.releases, run.plan.release_epochs.index(payload["epoch"]) + 1)
                run.progress_dirty = True
            run.events.append((job_id, "epoch", json_safe(payload)))
        elif kind == worker_module.MESSAGE_EVALUATION:
            transitions += self._monitor.observe_evaluation(job_id)
        else:
            run.outcome = (kind, payload)
        if transitions:
            with contextlib.suppress(*STORAGE_ERRORS):
                self._alerts.apply(transitions)

    def _flush(self, run: _Run) -> bool:
        """Write what the run has relayed since the last write; False when the database refused."""
        if not (run.events or run.metrics or run.progress_dirty):
            return True
        job_id = run.job.id
        try:
            with self._db.transaction():
                self._db.events.append_many(run.events)
                self._db.metrics.add_steps(job_id, run.metrics)
                self._db.leases.progress(job_id, run.steps, run.releases)
                if run.metrics and run.job.plan is not None and math.isfinite(run.last_epsilon):
                    with contextlib.suppress(PrivtrainError):  # an audit without DP holds none
                        self._db.budget.record_spend(job_id, run.last_epsilon)
        except STORAGE_ERRORS as exc:
            log.warning("job %s: progress not stored yet (%s); kept to retry", job_id, _one_line(exc))
            return False
        run.events, run.metrics, run.progress_dirty = [], [], False
        self._hub.notify()
        return True

    def _conclude(self, run: _Run) -> None:
        """Settle the job or give it back to the queue, as its worker's end says."""
        job_id = run.job.id
        kind, payload = run.outcome or ("", {})
        self._retry(run, lambda: self._flush(run) or _raise_retry())
        spent = run.plan.history(run.steps, run.releases) if run.job.plan is not None else []
        if kind == worker_module.MESSAGE_SUCCEEDED:
            charged = run.job.audit is None or run.job.audit.get("mechanism") == "dp"

            def succeed() -> bool:
                return finish_job(self._db, self._hub, job_id, JobState.RUNNING, JobState.SUCCEEDED,
                                  None, spent=run.plan.history(), owner=self.owner,
                                  epsilon=payload["epsilon"] if charged else None,
                                  result=json_safe(payload))
            self._settle(run, succeed)
        elif kind == worker_module.MESSAGE_CANCELLED or (not kind and run.cancel_at is not None):
            reason = payload.get("error") or "cancelled; the worker was stopped"
            self._settle(run, lambda: finish_job(self._db, self._hub, job_id, JobState.RUNNING,
                                                 JobState.CANCELLED, reason, spent=spent,
                                                 owner=self.owner))
        elif kind == worker_module.MESSAGE_FAILED:
            # Whatever failed in the worker may depend on the rows: the message is the operator's.
            self._settle(run, lambda: finish_job(self._db, self._hub, job_id, JobState.RUNNING,
                                                 JobState.FAILED, WORKER_FAILED, spent=spent,
                                                 detail=payload["error"], owner=self.owner))
        elif kind == worker_module.MESSAGE_STORAGE_ERROR:
            retry_s = min(RETRY_MAX_S * 2, 5.0 * run.job.attempts)
            log.error("job %s: storage error (%s); resuming in %.0f s", job_id, payload["error"],
                      retry_s)
            with contextlib.suppress(*STORAGE_ERRORS):
                self._alerts.fire(job_id, AlertKind.STORAGE_ERROR,
                                  f"job {job_id}: its files could not be written ({payload['error']}); "
                                  "it resumes from its last checkpoint when storage works again",
                                  attempt=run.job.attempts)
            self._retry(run, lambda: self._db.leases.give_back(job_id, self.owner, died=False,
                                                               retry_after_s=retry_s))
        elif kind == worker_module.MESSAGE_SUSPENDED or self._stopping.is_set():
            self._retry(run, lambda: self._db.leases.give_back(job_id, self.owner, died=False))
        else:
            code = run.process.exitcode
            message = (f"job {job_id}: worker process exited with code {code} before reporting "
                       f"a result (after step {run.steps}); it resumes from its last checkpoint")
            log.error(message)
            with contextlib.suppress(*STORAGE_ERRORS):
                self._alerts.fire(job_id, AlertKind.DEAD_WORKER, message, exit_code=code,
                                  last_step=run.steps, attempt=run.job.attempts)
            self._retry(run, lambda: self._db.leases.give_back(job_id, self.owner, died=True,
                                                               retry_after_s=1.0))

    def _settle(self, run: _Run, finish: Any) -> None:
        """Run ``finish`` until it succeeds or the job is no longer this host's; raise
        SETTLEMENT_FAILED while it keeps failing and resolve the run's alerts once done."""
        job_id = run.job.id
        if self._retry(run, finish, alert=True):
            with contextlib.suppress(*STORAGE_ERRORS):
                self._alerts.resolve(job_id, RUN_ALERTS, f"job {job_id} settled")

    def _retry(self, run: _Run, action: Any, *, alert: bool = False) -> bool:
        """Call ``action`` until it returns without a storage error, backing off from
        0.5 s to 30 s, renewing the lease in between; False when the lease was lost."""
        job_id = run.job.id
        wait, failures = RETRY_FIRST_S, 0
        while True:
            try:
                action()
                return True
            except STORAGE_ERRORS + (_RetryLater,) as exc:
                failures += 1
                log.warning("job %s: cannot write its end yet (%s); retrying in %.1f s", job_id,
                            _one_line(exc), wait)
                if alert and failures == 3:
                    with contextlib.suppress(*STORAGE_ERRORS):
                        self._alerts.fire(job_id, AlertKind.SETTLEMENT_FAILED,
                                          f"job {job_id} ended but cannot be settled yet: "
                                          f"{_one_line(exc)}")
            time.sleep(wait)
            wait = min(RETRY_MAX_S, wait * 2)
            try:
                if not self._db.leases.heartbeat(job_id, self.owner, self.settings.lease_s).held:
                    log.warning("job %s: lease lost while its end was being written", job_id)
                    return False
            except STORAGE_ERRORS:
                pass


class _RetryLater(Exception):
    """A write that did not go through and is to be retried."""


def _raise_retry() -> bool:
    raise _RetryLater("progress not stored")


def _kill(process: Any) -> None:
    if process is not None and process.is_alive():
        process.kill()
        process.join(10)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) replaced by None, so JSON stores it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def json_safe_step(payload: dict[str, Any]) -> dict[str, Any]:
    """A step payload JSON can store: a NaN/inf loss moves to ``loss_nonfinite`` as text, and
    the ε of an audit run without DP (infinite) becomes None."""
    loss = payload.get("loss")
    if loss is not None and not math.isfinite(loss):
        payload = {**payload, "loss": None, "loss_nonfinite": str(loss)}
    return json_safe(payload)


def _drain(q: Any, timeout_s: float) -> list[tuple[str, dict[str, Any]]]:
    """Everything in the queue now; waits up to ``timeout_s`` for the first message."""
    try:
        items = [q.get(timeout=timeout_s)]
    except (queue_module.Empty, EOFError, OSError, ValueError):
        return []
    while True:
        try:
            items.append(q.get_nowait())
        except (queue_module.Empty, EOFError, OSError, ValueError):
            return items
