"""Child processes that end themselves when the process that spawned them dies.

A worker or a distributed rank whose parent was killed (even by SIGKILL) would
otherwise train on for a job nobody accounts for, then hang flushing a queue
nobody reads.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 1.0


def exit_with_parent(exit_code: int = 3) -> None:
    """Start a daemon thread that calls ``os._exit(exit_code)`` once the parent is gone.

    The parent is the process that spawned this one when the call is made; a
    change of ``os.getppid()`` (re-parenting to init) means it died. Polls every
    :data:`POLL_S` seconds.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(POLL_S)
            if os.getppid() != parent:
                os._exit(exit_code)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
