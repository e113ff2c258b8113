"""Admits PENDING jobs, runs them in spawned worker processes and relays what they report.

One scheduler thread admits jobs in order (calibrates σ on the dataset's published
counts with the job's own accountant, composes the plan with the ledger and
reserves it, or fails the job with the reason) and starts workers for admitted
ones (up to ``max_running_jobs``); one pump thread per worker drains its queue into
the event log, the metrics table, the privacy ledger and the monitor, and settles
the job when the worker ends. Admission runs here, not in the RPC handler, so a
submission returns at once whatever the calibration costs.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import queue as queue_module
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from privtrain.errors import FailedPrecondition, PrivtrainError
from privtrain.monitoring.alerts import AlertKind, AlertState, AlertTransition
from privtrain.monitoring.monitor import JobMonitor
from privtrain.platform import worker as worker_module
from privtrain.platform.alerting import AlertSink
from privtrain.platform.config import ServerConfig
from privtrain.platform.db.records import JobRecord, StepMetric
from privtrain.platform.db.repositories import Database
from privtrain.platform.events import EventHub
from privtrain.platform.job_states import JobState
from privtrain.trainer.accounting import History
from privtrain.trainer.checkpoints import private_folder
from privtrain.trainer.plan import JobPlan, plan_job
from privtrain.trainer.spec import TrainingSpec

log = logging.getLogger(__name__)
_SPAWN = mp.get_context("spawn")


# What a trainer reads when its job fails inside the worker: the worker's own message may
# quote values of the private rows, so it goes to the operator (error_detail) instead.
WORKER_FAILED = "the job failed while training; the operator can see why (error_detail)"


@dataclass
class _Running:
    job: JobRecord
    plan: JobPlan
    process: BaseProcess
    queue: Any
    cancel: Any
    charged: bool
    steps: int = 0
    releases: int = 0
    last_epsilon: float = 0.0
    outcome: tuple[str, dict[str, Any]] | None = None
    cancel_requested_at: float | None = None
    pump: threading.Thread | None = field(default=None, repr=False)


class JobRunner:
    """Scheduler of worker processes for one server."""

    def __init__(self, config: ServerConfig, db: Database, hub: EventHub, monitor: JobMonitor,
                 alerts: AlertSink) -> None:
        self._config = config
        self._db = db
        self._hub = hub
        self._monitor = monitor
        self._alerts = alerts
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._schedule_loop, name="job-scheduler", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Recover jobs a previous server left RUNNING (charged their whole plan), then schedule."""
        for job in self._db.jobs.unfinished():
            if job.state is JobState.RUNNING:
                self._finish(job.id, JobState.RUNNING, JobState.FAILED,
                             "the server stopped while this job was running", spent=None)
        self._thread.start()

    def wake(self) -> None:
        """A job was submitted: look for work now rather than at the next tick."""
        self._wake.set()

    def stop(self, grace_s: float) -> None:
        """Ask every worker to stop, wait up to ``grace_s`` seconds, then terminate the rest."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            running = list(self._running.values())
        for run in running:
            run.cancel.set()
        deadline = time.monotonic() + grace_s
        for run in running:
            run.process.join(max(0.0, deadline - time.monotonic()))
        for run in running:
            if run.process.is_alive():
                run.process.kill()
                run.process.join(5)
        for run in running:
            if run.pump is not None:
                run.pump.join(5)
        self._thread.join(5)

    def worker_pid(self, job_id: str) -> int | None:
        """PID of the job's worker process while it runs."""
        with self._lock:
            run = self._running.get(job_id)
        return run.process.pid if run else None

    # ------------------------------------------------------------------ cancel
    def cancel(self, job_id: str) -> None:
        """Cancel a PENDING job at once, or ask a RUNNING job's worker to stop after its step."""
        if self._db.jobs.transition(job_id, JobState.PENDING, JobState.CANCELLED,
                                    error="cancelled before it started"):
            ledger = self._db.budget.settle(job_id, spent=[], epsilon_spent=0.0)
            if ledger is not None:
                self._db.budget.refresh(ledger)
            self._hub.publish(job_id, "state", {"state": JobState.CANCELLED.value,
                                                "error": "cancelled before it started"})
            return
        with self._lock:
            run = self._running.get(job_id)
        if run is not None:
            run.cancel.set()
            run.cancel_requested_at = time.monotonic()

    # ------------------------------------------------------------------ scheduling
    def _schedule_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._start_pending()
            except Exception:  # keep scheduling; a DB hiccup must not stop the server
                log.exception("scheduler error")

    def _start_pending(self) -> None:
        for job in self._db.jobs.list(state=JobState.PENDING):
            if self._stopping.is_set():
                return
            if job.plan_json is None:
                job = self._admit(job)
                if job is None:
                    continue
            with self._lock:
                if len(self._running) >= self._config.max_running_jobs:
                    continue  # admit the rest in order; start them when a slot frees
            self._launch(job)

    def _admit(self, job: JobRecord) -> JobRecord | None:
        """Plan a job on its dataset's published counts and reserve the plan, or fail it.

        Planning and reservation use only public figures (spec, published counts,
        ledger histories), so their refusals reach the trainer as they are.
        """
        try:
            dataset = self._db.datasets.get(job.dataset_id)
            if dataset.withdrawn:
                raise FailedPrecondition(f"dataset {dataset.id} was withdrawn by its owner")
            spec = TrainingSpec.from_dict(job.spec)
            plan = plan_job(spec, int(dataset.published_train_rows or 0),
                            int(dataset.published_test_rows or 0))
            audit = job.audit
            charges = audit is None or audit["mechanism"] == "dp"
            self._db.budget.admit(job.id, json.dumps(plan.to_dict(), sort_keys=True),
                                  plan.history() if charges else None)
        except PrivtrainError as exc:
            self._finish(job.id, JobState.PENDING, JobState.FAILED, f"not admitted: {exc}", spent=[])
            return None
        log.info("job %s admitted: σ=%.4g, %d steps, planned ε=%.4g", job.id, plan.noise.scale,
                 plan.total_steps, plan.epsilon)
        return self._db.jobs.get(job.id)

    def _launch(self, job: JobRecord) -> None:
        dataset = self._db.datasets.get(job.dataset_id)
        out_dir = private_folder(self._config.jobs_dir / job.id)
        q = _SPAWN.Queue()
        cancel = _SPAWN.Event()
        plan = JobPlan.from_dict(job.plan or {})
        work = {"spec": job.spec, "plan": job.plan, "split": dataset.split, "audit": job.audit}
        process = _SPAWN.Process(
            target=worker_module.worker_main,
            args=(work, dataset.storage_path, dataset.sha256, dataset.manifest, str(out_dir), q, cancel),
            name=f"privtrain-worker-{job.id}",
            daemon=True,
        )
        process.start()
        if not self._db.jobs.transition(job.id, JobState.PENDING, JobState.RUNNING,
                                        worker_pid=process.pid):
            # Cancelled between listing and starting: the CAS lost, so the worker must not run.
            process.kill()
            process.join()
            return
        run = _Running(job=job, plan=plan, process=process, queue=q, cancel=cancel,
                       charged=self._db.budget.entry_of_job(job.id) is not None)
        run.pump = threading.Thread(target=self._pump, args=(run,), name=f"pump-{job.id}", daemon=True)
        with self._lock:
            self._running[job.id] = run
        if self._db.datasets.get(job.dataset_id).withdrawn:
            # Withdrawn while starting: the withdrawal may have missed this job; stop it here.
            run.cancel.set()
            run.cancel_requested_at = time.monotonic()
        self._hub.publish(job.id, "state", {"state": JobState.RUNNING.value, "error": ""})
        log.info("job %s RUNNING in worker pid %s", job.id, process.pid)
        run.pump.start()

    # ------------------------------------------------------------------ relaying
    def _pump(self, run: _Running) -> None:
        try:
            while True:
                messages = _drain(run.queue, timeout_s=0.2)
                if messages:
                    self._relay(run, messages)
                    continue
                if not run.process.is_alive():
                    self._relay(run, _drain(run.queue, timeout_s=0.2))
                    break
                if (run.cancel_requested_at is not None
                        and time.monotonic() - run.cancel_requested_at > self._config.cancel_grace_s):
                    run.process.kill()
            run.process.join()
            # Alerts of the job resolve before its terminal state is published, so the
            # terminal event is the last one a watcher sees.
            self._alerts.apply(self._monitor.job_finished(run.job.id))
            self._settle(run)
        except Exception:
            log.exception("pump for job %s failed", run.job.id)
            # Never leave a worker training with nobody relaying or accounting for it.
            run.process.kill()
            run.process.join(10)
            self._finish(run.job.id, JobState.RUNNING, JobState.FAILED,
                         "internal error while relaying worker output", spent=None)
        finally:
            with self._lock:
                self._running.pop(run.job.id, None)
            self._alerts.apply(self._monitor.job_finished(run.job.id))
            self._wake.set()

    def _relay(self, run: _Running, messages: list[tuple[str, dict[str, Any]]]) -> None:
        job_id = run.job.id
        events: list[tuple[str, str, dict[str, Any]]] = []
        metrics: list[StepMetric] = []
        transitions: list[AlertTransition] = []
        for kind, payload in messages:
            if kind == worker_module.MESSAGE_STARTED:
                self._monitor.job_started(job_id)
                events.append((job_id, "started", payload))
            elif kind == worker_module.MESSAGE_STEP:
                run.steps = payload["step"]
                run.last_epsilon = payload["epsilon"]
                metrics.append(StepMetric(
                    step=payload["step"], epoch=payload["epoch"], loss=payload["loss"],
                    batch_size=payload["batch_size"], samples_per_s=payload["samples_per_s"],
                    epsilon=payload["epsilon"],
                ))
                events.append((job_id, "step", json_safe_step(payload)))
                transitions += self._monitor.observe_step(
                    job_id, step=payload["step"], loss=payload["loss"],
                    batch_size=payload["batch_size"], samples_per_s=payload["samples_per_s"],
                )
            elif kind == worker_module.MESSAGE_EPOCH:
                if payload["test_accuracy"] is not None:
                    run.releases += 1
                events.append((job_id, "epoch", json_safe(payload)))
            elif kind == worker_module.MESSAGE_EVALUATION:
                transitions += self._monitor.observe_evaluation(job_id)
            else:
                run.outcome = (kind, payload)
        if metrics:
            self._db.metrics.add_steps(job_id, metrics)
            if run.charged:
                self._db.budget.record_spend(job_id, run.last_epsilon)
        self._hub.publish_many(events)
        self._alerts.apply(transitions)

    def _settle(self, run: _Running) -> None:
        job_id = run.job.id
        kind, payload = run.outcome or ("", {})
        taken = run.plan.history(run.steps, run.releases)
        if kind == worker_module.MESSAGE_SUCCEEDED:
            self._db.jobs.set_result(job_id, json_safe(payload))
            self._finish(job_id, JobState.RUNNING, JobState.SUCCEEDED, None, spent=taken,
                         epsilon=payload["epsilon"] if run.charged else None)
        elif kind == worker_module.MESSAGE_CANCELLED:
            # The worker stopped between steps and every step it took was relayed.
            if self._stopping.is_set() and run.cancel_requested_at is None:
                self._finish(job_id, JobState.RUNNING, JobState.FAILED,
                             f"the server shut down during training (after step {run.steps})",
                             spent=taken)
            else:
                self._finish(job_id, JobState.RUNNING, JobState.CANCELLED, payload["error"], spent=taken)
        elif kind == worker_module.MESSAGE_FAILED:
            # Whatever failed in the worker may depend on the rows: the message is the operator's.
            self._finish(job_id, JobState.RUNNING, JobState.FAILED, WORKER_FAILED,
                         detail=payload["error"], spent=[] if run.steps == 0 else None)
        elif run.cancel_requested_at is not None or self._stopping.is_set():
            # Killed after the grace period: steps after the last one relayed cannot be ruled out.
            reason = "cancelled" if run.cancel_requested_at is not None else "the server shut down"
            self._finish(job_id, JobState.RUNNING,
                         JobState.CANCELLED if run.cancel_requested_at is not None else JobState.FAILED,
                         f"{reason}; the worker did not stop within the grace period and was killed",
                         spent=None)
        else:
            code = run.process.exitcode
            message = f"worker process exited with code {code} before reporting a result"
            self._alerts.apply([AlertTransition(
                job_id=job_id, kind=AlertKind.DEAD_WORKER, state=AlertState.FIRING,
                message=f"job {job_id}: {message}", at=time.monotonic(),
                details={"exit_code": code, "last_step": run.steps},
            )])
            # Steps may have run after the last one relayed: charge the whole plan.
            self._finish(job_id, JobState.RUNNING, JobState.FAILED, message, spent=None)

    def _finish(self, job_id: str, expected: JobState, new: JobState, error: str | None, *,
                spent: History | None, detail: str | None = None,
                epsilon: float | None = None) -> None:
        """Move the job to ``new`` and settle its reservation at ``spent`` (None: its whole plan)."""
        ledger = None
        with self._db.transaction():
            changed = self._db.jobs.transition(job_id, expected, new, error=error, error_detail=detail)
            if changed:
                ledger = self._db.budget.settle(job_id, spent=spent, epsilon_spent=epsilon)
        if ledger is not None:
            self._db.budget.refresh(ledger)
        if changed:
            self._hub.publish(job_id, "state", {"state": new.value, "error": error or ""})
            # The trainer's message only: the worker's own (error_detail) may quote private rows.
            log.info("job %s %s%s", job_id, new.value, f": {error}" if error else "")


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
    except queue_module.Empty:
        return []
    except (EOFError, OSError):
        return []
    while True:
        try:
            items.append(q.get_nowait())
        except (queue_module.Empty, EOFError, OSError):
            return items
