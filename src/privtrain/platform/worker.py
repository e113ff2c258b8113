"""Worker process entry point: one spawned process trains one job.

Training never runs inside an RPC handler or the server process: a crash, a
CUDA fault or a SIGSTOP of the worker leaves the server answering. The worker
talks to the server only through its own queue of ``(kind, payload)`` messages.
"""

from __future__ import annotations

import hashlib
import os
import sys
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


class QueueReporter:
    """Forwards the engine's progress to the server's queue."""

    def __init__(self, queue: Queue[tuple[str, dict[str, Any]]]) -> None:
        self._queue = queue

    def on_start(self, info: dict[str, Any]) -> None:
        self._queue.put((MESSAGE_STARTED, info))

    def on_step(self, report: Any) -> None:
        self._queue.put((MESSAGE_STEP, asdict(report)))

    def on_evaluation(self, rows_done: int, rows_total: int) -> None:
        self._queue.put((MESSAGE_EVALUATION, {"rows_done": rows_done, "rows_total": rows_total}))

    def on_epoch(self, epoch: int, released_accuracy: float | None, exact_accuracy: float,
                 epsilon: float) -> None:
        self._queue.put((MESSAGE_EPOCH, {"epoch": epoch, "test_accuracy": released_accuracy,
                                         "exact_test_accuracy": exact_accuracy, "epsilon": epsilon}))


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
) -> None:
    """Train one admitted job; runs in a spawned process.

    ``work`` holds the job's ``spec``, its admitted ``plan``, the dataset's ``split``
    declaration and, for a privacy audit, its ``audit`` settings. Sends ``started``,
    ``step``, ``epoch`` messages, then exactly one of ``succeeded`` (the
    :class:`TrainingResult` dict), ``failed`` or ``cancelled`` (``{"error": message}``).
    The worker's stderr goes to ``<out_dir>/worker.log``. The stored file is checked
    against ``dataset_sha256`` first, and the process ends itself if the server dies.
    ``manifest`` is the dataset's verified manifest: a table's ``columns`` fix the
    feature encoding, an image array's shape and label values fix the model's inputs
    and outputs.
    """
    exit_with_parent()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # 0600: the log may quote values of the rows (errors are the operator's to read).
    log = os.fdopen(os.open(out / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a",
                    buffering=1)
    os.dup2(log.fileno(), sys.stderr.fileno())
    sys.stderr = log
    # Imported here so the parent pays nothing for torch until a job runs.
    import pyarrow.parquet as pq

    from privtrain.datasets.image_manifest import IMAGE_KIND, manifest_kind
    from privtrain.errors import PrivtrainError
    from privtrain.trainer.audit import AuditSettings
    from privtrain.trainer.engine import JobCancelled, TableSplit, train, train_images
    from privtrain.trainer.plan import JobPlan
    from privtrain.trainer.spec import TrainingSpec

    try:
        job_spec = TrainingSpec.from_dict(work["spec"])
        plan = JobPlan.from_dict(work["plan"])
        audit = None if work.get("audit") is None else AuditSettings(**work["audit"])
        reporter = QueueReporter(queue)
        options: dict[str, Any] = {"plan": plan, "should_stop": cancel.is_set,
                                   "on_evaluation": reporter.on_evaluation, "audit": audit}
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
        queue.put((MESSAGE_SUCCEEDED, result.to_dict()))
    except JobCancelled as exc:
        queue.put((MESSAGE_CANCELLED, {"error": str(exc)}))
    except PrivtrainError as exc:
        queue.put((MESSAGE_FAILED, {"error": str(exc)}))
    except Exception as exc:  # the job fails, the server stays up; details go to the log
        traceback.print_exc()
        queue.put((MESSAGE_FAILED, {"error": f"internal error in worker: {type(exc).__name__}: {exc}"}))
    finally:
        queue.close()
        queue.join_thread()
