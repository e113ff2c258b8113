"""``privtrain worker``: a worker host that takes jobs from the server's database queue.

Run it on any machine that reaches the server's PostgreSQL database and mounts the
server's home folder (its ``datasets/`` and ``jobs/``) at ``--storage``. It claims
admitted jobs (``SELECT ... FOR UPDATE SKIP LOCKED``), trains each in its own worker
process, renews its leases by heartbeat, and on SIGTERM/SIGINT suspends its jobs so
another host resumes them from their last checkpoint. See ``docs/architecture.md``.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from privtrain.platform.cli_args import POSITIVE, int_at_least, positive_float


def add_host_arguments(parser: argparse.ArgumentParser) -> None:
    """The options a worker host shares with the server's local workers."""
    parser.add_argument("--lease-s", type=positive_float, default=10.0,
                        help="seconds a host's lease on a job lasts (renewed every third); a job "
                             "whose host died resumes elsewhere after this long")
    parser.add_argument("--max-failed-attempts", type=POSITIVE, default=5,
                        help="times a job's worker may die without a result before the job fails")
    parser.add_argument("--checkpoint-every-s", type=positive_float, default=30.0,
                        help="seconds of training between checkpoints inside an epoch")


def add_worker_command(sub: Any) -> None:
    """Register ``privtrain worker``."""
    worker = sub.add_parser("worker", help="take jobs from the database queue (any host)")
    worker.add_argument("--db-url", required=True,
                        help="the server's database, e.g. postgresql+psycopg2://host/privtrain")
    worker.add_argument("--storage", type=Path, required=True,
                        help="the server's home folder as mounted on this host")
    worker.add_argument("--slots", type=int_at_least(1, 64), default=1, help="jobs at once")
    add_host_arguments(worker)
    worker.add_argument("--grace-s", type=positive_float, default=10.0,
                        help="seconds the workers get to stop at shutdown")
    worker.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    worker.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="text lines, or one JSON object per line")
    worker.set_defaults(func=_worker)


def _worker(args: argparse.Namespace) -> int:
    from privtrain.errors import FailedPrecondition
    from privtrain.monitoring.monitor import JobMonitor
    from privtrain.platform.alerting import AlertSink
    from privtrain.platform.db.repositories import Database
    from privtrain.platform.events import EventHub
    from privtrain.platform.log_setup import configure_logging
    from privtrain.platform.db.migrate import check_migrated
    from privtrain.platform.worker_host import HostSettings, WorkerHost

    configure_logging(args.log_level, args.log_format)
    storage = args.storage.resolve()
    if not (storage / "datasets").is_dir():
        raise FailedPrecondition(f"{storage} has no datasets/ folder: give --storage the server's "
                                 "home folder as mounted on this host")
    check_migrated(args.db_url)
    db = Database(args.db_url)
    hub = EventHub(db)
    host = WorkerHost(db, hub, JobMonitor(), AlertSink(db, hub), HostSettings(
        storage=storage, slots=args.slots, lease_s=args.lease_s,
        max_failed_attempts=args.max_failed_attempts, checkpoint_every_s=args.checkpoint_every_s,
    ))
    host.start()
    print(f"privtrain worker {host.owner} taking jobs ({args.slots} slot(s))", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    host.stop(args.grace_s)
    db.close()
    return 0
