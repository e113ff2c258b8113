"""``privtrain server``: the training service (mTLS gRPC), its runner and monitor.

The options say where the server keeps its state, how its local workers and monitor
behave, and how much of it one caller may hold (see ``docs/architecture.md``,
"Bounded calls").
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from privtrain.platform.cli_args import DEFAULT_PKI, PORT, POSITIVE, int_at_least, positive_float
from privtrain.platform.cli_worker import add_host_arguments


def add_server_command(sub: Any) -> None:
    """Register ``privtrain server``."""
    srv = sub.add_parser("server", help="run the training service (mTLS gRPC)")
    srv.add_argument("--home", type=Path, default=Path("privtrain-home"),
                     help="state folder: database, datasets, job outputs")
    srv.add_argument("--pki", type=Path, default=DEFAULT_PKI,
                     help="the operator's folder made by `certs init`")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to bind; must be one of the server certificate's names")
    srv.add_argument("--port", type=PORT, default=50051, help="0 picks a free port")
    srv.add_argument("--port-file", type=Path, default=None, help="write the bound port here")
    srv.add_argument("--db-url", default=None, help="SQLAlchemy URL (default: SQLite in --home)")
    srv.add_argument("--local-workers", type=int_at_least(0), default=1,
                     help="jobs trained at once in the server's own worker processes; 0 leaves "
                          "them to `privtrain worker` hosts (PostgreSQL)")
    add_host_arguments(srv)
    srv.add_argument("--stall-factor", type=positive_float, default=10.0,
                     help="NO_PROGRESS after this many median step intervals without a step")
    srv.add_argument("--stall-floor-s", type=positive_float, default=60.0,
                     help="smallest NO_PROGRESS threshold in seconds")
    srv.add_argument("--stall-first-step-s", type=positive_float, default=600.0,
                     help="NO_PROGRESS threshold before a job's first step, in seconds")
    srv.add_argument("--grace-s", type=positive_float, default=5.0,
                     help="seconds in-flight calls and workers get at shutdown")
    srv.add_argument("--row-count-noise", type=positive_float, default=20.0,
                     help="std (rows) of the noise on the row counts published at upload")
    srv.add_argument("--ledger-accountant", default="prv", choices=["prv", "rdp"],
                     help="accountant composing a new dataset's privacy ledger")
    srv.add_argument("--audit-sign-interval-s", type=positive_float, default=60.0,
                     help="how often the audit log's head is signed (when it moved)")
    add_call_limit_arguments(srv)
    srv.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    srv.add_argument("--log-format", default="text", choices=["text", "json"],
                     help="text lines, or one JSON object per line")
    srv.set_defaults(func=_server)


def add_call_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """How much of the server one caller, and all callers together, may hold at once."""
    parser.add_argument("--handler-threads", type=POSITIVE, default=16,
                        help="threads serving unary calls (streams and health checks have "
                             "their own)")
    parser.add_argument("--max-calls-per-identity", type=POSITIVE, default=8,
                        help="unary calls one person (certificate name) may have in progress; "
                             "more are refused RESOURCE_EXHAUSTED")
    parser.add_argument("--max-streams-per-identity", type=POSITIVE, default=64,
                        help="streams (watch, upload, download) one person may have open; more "
                             "are refused RESOURCE_EXHAUSTED")
    parser.add_argument("--max-streams", type=POSITIVE, default=256,
                        help="streams open at once, all callers together (one thread each)")
    parser.add_argument("--model-checks", type=POSITIVE, default=2,
                        help="submissions whose model is built and dry-run at once")
    parser.add_argument("--model-check-timeout-s", type=positive_float, default=30.0,
                        help="seconds a submission's model checks may take before it is refused")
    parser.add_argument("--admission-timeout-s", type=positive_float, default=120.0,
                        help="seconds the calibration of a job's noise may take at admission "
                             "before the job fails")


def _server(args: argparse.Namespace) -> int:
    from privtrain.monitoring.detectors.stall import StallConfig
    from privtrain.platform.config import ServerConfig
    from privtrain.platform.log_setup import configure_logging
    from privtrain.platform.server import PrivtrainServer
    from privtrain.secure_transport.call_limits import CallLimits
    from privtrain.secure_transport.channels import TransportLimits

    configure_logging(args.log_level, args.log_format)
    config = ServerConfig(
        home=args.home.resolve(), pki_dir=args.pki.resolve(), host=args.host, port=args.port,
        database_url=args.db_url, local_workers=args.local_workers, lease_s=args.lease_s,
        max_failed_attempts=args.max_failed_attempts, checkpoint_every_s=args.checkpoint_every_s,
        stall=StallConfig(factor=args.stall_factor, floor_s=args.stall_floor_s,
                          first_step_s=args.stall_first_step_s),
        row_count_noise=args.row_count_noise, ledger_accountant=args.ledger_accountant,
        audit_sign_interval_s=args.audit_sign_interval_s,
        limits=TransportLimits(max_workers=args.handler_threads),
        call_limits=CallLimits(calls_per_identity=args.max_calls_per_identity,
                               streams_per_identity=args.max_streams_per_identity,
                               max_streams=args.max_streams),
        model_checks=args.model_checks, model_check_timeout_s=args.model_check_timeout_s,
        admission_timeout_s=args.admission_timeout_s,
    )
    server = PrivtrainServer(config)
    server.start()
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(server.port))
        tmp.replace(args.port_file)
    print(f"privtrain server listening on {args.host}:{server.port}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(args.grace_s)
    return 0
