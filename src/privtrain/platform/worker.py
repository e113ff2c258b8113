"""Worker process entry point: one spawned process trains one job.

Training never runs inside an RPC handler or the server process: a crash, a
CUDA fault or a SIGSTOP of the worker leaves the server answering. The worker
talks to its host only through its own queue of ``(kind, payload)`` messages, and
listens to two events: ``cancel`` (stop for good) and ``suspend`` (the host shuts
down; the job resumes elsewhere from its last checkpoint).

Whatever the worker computed reaches anyone only through that queue, so a job is
charged for the steps and releases whose messages its host relayed. That is why the
worker may end itself at any moment: a watcher thread answers ``cancel`` at once
while the job is still starting (importing torch, reading the file: no step can have
been taken), or after :data:`CANCEL_GRACE_S` if the training loop has not stopped by
itself by then, and answers ``suspend`` at once. Ending itself, the worker first
sends its last message under the lock every message is sent under, and flushes it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import threading
import traceback
from dataclasses import asdict
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from privtrain.parent_watchdog import exit_with_parent

MESSAGE_STARTED = "started"
MESSAGE_STEP = "step"
MESSAGE_EPOCH = "epoch"
MESSAGE_EVALUATION = "evaluation"
MESSAGE_SUCCEEDED = "succeeded"
MESSAGE_FAILED = "failed"
MESSAGE_CANCELLED = "cancelled"
# The host asked the worker to stop because it shuts down: the job resumes elsewhere.
MESSAGE_SUSPENDED = "suspended"
# A file or folder of the job could not be written (disk full, quota, read-only): the
# job resumes from its last checkpoint once a retry succeeds.
MESSAGE_STORAGE_ERROR = "storage_error"

# How long the training loop may take to stop on its own after a cancel, once it runs.
CANCEL_GRACE_S = 1.0
WATCH_S = 0.05
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


class QueueReporter:
    """Forwards the engine's progress to the host's queue, one message at a time under a lock
    (so the watcher's last message never interleaves with one of the loop's)."""

    def __init__(self, queue: Queue[tuple[str, dict[str, Any]]]) -> None:
        self._queue = queue
        self.lock = threading.Lock()
        self.loop_started = False
        self.closed = False

    def send(self, kind: str, payload: dict[str, Any]) -> None:
        with self.lock:
            if not self.closed:
                self._queue.put((kind, payload))

    def send_last(self, kind: str, payload: dict[str, Any]) -> None:
        """Send the final message, flush the queue, and refuse any later one."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self._queue.put((kind, payload))
            self._queue.close()
            self._queue.join_thread()

    def on_start(self, info: dict[str, Any]) -> None:
        with self.lock:
            self.loop_started = True
        self.send(MESSAGE_STARTED, info)

    def on_step(self, report: Any) -> None:
        self.send(MESSAGE_STEP, asdict(report))

    def on_evaluation(self, rows_done: int, rows_total: int) -> None:
        self.send(MESSAGE_EVALUATION, {"rows_done": rows_done, "rows_total": rows_total})

    def on_epoch(self, epoch: int, released_accuracy: float | None, exact_accuracy: float,
                 epsilon: float) -> None:
        self.send(MESSAGE_EPOCH, {"epoch": epoch, "test_accuracy": released_accuracy,
                                  "exact_test_accuracy": exact_accuracy, "epsilon": epsilon})


def _watch(reporter: QueueReporter, cancel: Event, suspend: Event) -> None:
    """End the worker on ``suspend`` at once, and on ``cancel`` unless the loop stops first."""
    import time

    cancelled_at: float | None = None
    while True:
        time.sleep(WATCH_S)
        if suspend.is_set():
            reporter.send_last(MESSAGE_SUSPENDED, {"error": "the worker host stopped"})
            os._exit(0)
        if cancel.is_set():
            with reporter.lock:
                started = reporter.loop_started
            if not started:
                reporter.send_last(MESSAGE_CANCELLED, {"error": "cancelled before the first step"})
                os._exit(0)
            cancelled_at = cancelled_at or time.monotonic()
            if time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                reporter.send_last(MESSAGE_CANCELLED, {"error": "cancelled during training"})
                os._exit(0)


def _check_digest(path: str, actual: str, expected: str) -> None:
    """Refuse to train on a stored file that no longer matches its verified upload."""
    from privtrain.errors import FailedPrecondition

    if actual != expected:
        raise FailedPrecondition(
            f"the stored dataset file {path} changed since its verified upload "
            f"(sha256 {actual}, expected {expected})"
        )


def _check_dataset(path: str, expected_sha256: str) -> None:
    """Hash a stored table file block by block and compare it with its verified upload."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    _check_digest(path, digest.hexdigest(), expected_sha256)


def _read_checked(path: str, expected_sha256: str) -> bytes:
    """The stored file's bytes, after checking that these very bytes match the verified upload."""
    data = Path(path).read_bytes()
    _check_digest(path, hashlib.sha256(data).hexdigest(), expected_sha256)
    return data


def worker_main(
    work: dict[str, Any],
    dataset_path: str,
    dataset_sha256: str,
    manifest: dict[str, Any],
    out_dir: str,
    queue: Queue[tuple[str, dict[str, Any]]],
    cancel: Event,
    suspend: Event,
) -> None:
    """Train one admitted job, or resume it from its latest checkpoint; runs in a spawned process.

    ``work`` holds the job's ``spec``, its admitted ``plan``, the dataset's ``split``
    declaration, for a privacy audit its ``audit`` settings, ``resume`` (continue from
    the latest checkpoint in ``out_dir``) and ``checkpoint_every_s``. Sends
    ``started``, ``step``, ``epoch`` messages, then exactly one of ``succeeded`` (the
    :class:`TrainingResult` dict), ``failed``, ``cancelled``, ``suspended`` or
    ``storage_error`` (``{"error": message}``). The worker's stderr goes to
    ``<out_dir>/worker.log``. The stored file is checked against ``dataset_sha256``
    first, and the process ends with its parent (see
    :func:`privtrain.parent_watchdog.exit_with_parent`). ``manifest`` is the dataset's
    verified manifest: a table's ``columns`` fix the feature encoding, an image array's
    shape and label values fix the model's inputs and outputs.
    """
    exit_with_parent()
    reporter = QueueReporter(queue)
    threading.Thread(target=_watch, args=(reporter, cancel, suspend), name="cancel-watch",
                     daemon=True).start()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # 0600: the log may quote values of the rows (errors are the operator's to read).
        log = os.fdopen(os.open(out / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                        "a", buffering=1)
    except OSError as exc:
        _end(reporter, exc)
        return
    os.dup2(log.fileno(), sys.stderr.fileno())
    sys.stderr = log
    try:
        result = _train(work, dataset_path, dataset_sha256, manifest, out, reporter, cancel)
        reporter.send_last(MESSAGE_SUCCEEDED, result)
    except BaseException as exc:  # noqa: BLE001 - every end is reported, none is a traceback
        _end(reporter, exc)


def _train(work: dict[str, Any], dataset_path: str, dataset_sha256: str, manifest: dict[str, Any],
           out: Path, reporter: QueueReporter, cancel: Event) -> dict[str, Any]:
    # Imported here so the parent pays nothing for torch until a job runs.
    import pyarrow.parquet as pq

    from privtrain.datasets.image_manifest import IMAGE_KIND, manifest_kind
    from privtrain.trainer.audit import AuditSettings
    from privtrain.trainer.dp_sgd import CheckpointCadence
    from privtrain.trainer.engine import TableSplit, train, train_images
    from privtrain.trainer.plan import JobPlan
    from privtrain.trainer.spec import TrainingSpec

    job_spec = TrainingSpec.from_dict(work["spec"])
    plan = JobPlan.from_dict(work["plan"])
    audit = None if work.get("audit") is None else AuditSettings(**work["audit"])
    options: dict[str, Any] = {
        "plan": plan, "should_stop": cancel.is_set, "on_evaluation": reporter.on_evaluation,
        "audit": audit, "resume": bool(work.get("resume")),
        "checkpoint_every": CheckpointCadence(every_s=float(work.get("checkpoint_every_s", 30.0))),
    }
    if manifest_kind(manifest) == IMAGE_KIND:
        result = train_images(job_spec, _read_checked(dataset_path, dataset_sha256), manifest, out,
                              reporter, **options)
    else:
        _check_dataset(dataset_path, dataset_sha256)
        table = pq.read_table(dataset_path).to_pandas()
        split = work["split"]
        result = train(job_spec, table, manifest["columns"],
                       TableSplit(split["column"], split["train"], split["test"]), out, reporter,
                       **options)
    return result.to_dict()


def _end(reporter: QueueReporter, exc: BaseException) -> None:
    """Report how the job ended: cancelled, a storage error (resumable), or failed."""
    from privtrain.errors import PrivtrainError
    from privtrain.trainer.engine import JobCancelled

    if isinstance(exc, JobCancelled):
        reporter.send_last(MESSAGE_CANCELLED, {"error": str(exc)})
    elif isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        reporter.send_last(MESSAGE_STORAGE_ERROR, {"error": f"{exc.strerror} ({exc.filename})"})
    elif isinstance(exc, PrivtrainError):
        reporter.send_last(MESSAGE_FAILED, {"error": str(exc)})
    else:  # the job fails, the host stays up; details go to the log
        traceback.print_exception(exc)
        reporter.send_last(MESSAGE_FAILED,
                           {"error": f"internal error in worker: {type(exc).__name__}: {exc}"})
