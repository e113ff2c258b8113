"""Child processes that end themselves when the process that spawned them dies.

A worker or a distributed rank whose parent was killed (even by SIGKILL) would
otherwise train on for a job nobody accounts for, then hang flushing a queue
nobody reads.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

POLL_S = 1.0
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def exit_with_parent(exit_code: int = 3) -> None:
    """End this process as soon as its parent is gone.

    On Linux the kernel sends SIGKILL the moment the parent dies
    (``prctl(PR_SET_PDEATHSIG)``), so a worker of a killed server never writes into
    a job another host has resumed. Elsewhere, and as a fallback, a daemon thread
    calls ``os._exit(exit_code)`` when ``os.getppid()`` changes (re-parenting to
    init), polling every :data:`POLL_S` seconds.
    """
    parent = os.getppid()
    _kill_with_parent()
    if os.getppid() != parent:  # the parent died before the kernel was told
        os._exit(exit_code)

    def watch() -> None:
        while True:
            time.sleep(POLL_S)
            if os.getppid() != parent:
                os._exit(exit_code)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _kill_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the polling thread still ends the process
