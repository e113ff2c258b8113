"""The slow part of a submission, bounded: at most a few at once, each within a time limit.

``SubmitJob`` and ``SubmitAudit`` build the job's model and dry-run it on two samples
before anything is stored (a refusal then costs no ε). That takes from milliseconds (a
logistic regression) to seconds (a ResNet at the parameter cap), and a caller chooses
which. So the checks run on :class:`ModelChecks`' own threads, not on the handler's:

- at most ``workers`` at once; a submission that finds them all busy is refused
  RESOURCE_EXHAUSTED at once instead of queueing;
- the handler waits at most ``timeout_s`` seconds; a check that takes longer is refused
  RESOURCE_EXHAUSTED (it goes on on its thread until it ends, which keeps its place
  taken, so slow checks cannot pile up).

σ calibration, the other slow step, happens at admission on the scheduler thread
(:mod:`privtrain.platform.runner`), never in a handler.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from privtrain.errors import PrivtrainError, ResourceExhausted

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelChecks:
    """Runs submission checks on ``workers`` threads of their own, each within ``timeout_s``.

    Parameters
    ----------
    workers : int
        Checks at once.
    timeout_s : float
        Longest a caller waits for one check (seconds).
    """

    def __init__(self, workers: int = 2, timeout_s: float = 30.0) -> None:
        if workers < 1 or not timeout_s > 0:
            raise ValueError(f"workers must be >= 1 and timeout_s > 0, got {workers}, {timeout_s}")
        self._workers, self._timeout_s = workers, timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(workers,
                                                           thread_name_prefix="model-check")
        self._free = threading.BoundedSemaphore(workers)

    def run(self, check: Callable[[], T]) -> T:
        """``check()``'s result, or its error.

        Raises
        ------
        ResourceExhausted
            Every check thread is busy, or ``check`` took longer than ``timeout_s``.
        PrivtrainError
            Whatever ``check`` raised.
        """
        if not self._free.acquire(blocking=False):
            raise ResourceExhausted(
                f"the server is checking {self._workers} other submissions' models; submit again "
                "in a few seconds")
        started = time.monotonic()
        future = self._pool.submit(check)
        future.add_done_callback(lambda done: self._finished(done, started))
        try:
            return future.result(timeout=self._timeout_s)
        except concurrent.futures.TimeoutError:
            raise ResourceExhausted(
                f"checking the model took longer than {self._timeout_s:g} s, the server's limit; "
                "choose a smaller model") from None

    def _finished(self, done: concurrent.futures.Future[T], started: float) -> None:
        self._free.release()
        elapsed = time.monotonic() - started
        if elapsed > self._timeout_s:
            error = done.exception()
            outcome = "refused" if isinstance(error, PrivtrainError) else (
                "failed" if error is not None else "passed")
            log.warning("a model check ended %.1f s after it began (its submission was refused "
                        "after %g s); it %s", elapsed, self._timeout_s, outcome)
