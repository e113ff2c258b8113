"""``privtrain`` command line: one entry point for every role.

A user mistake prints one line on stderr (``error: ...``) and exits 2; a
refused or failed call exits 1 with the gRPC status and its message. Never a
traceback for a user mistake.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

# gRPC's C core would print its own handshake log lines on stderr; the CLI
# prints one line per error (and a diagnosis) instead. A user may still set it.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402 - after GRPC_VERBOSITY on purpose
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from privtrain.errors import InvalidInput, PrivtrainError  # noqa: E402
from privtrain.platform.cli_args import (  # noqa: E402
    POSITIVE,
    add_connection_args,
    connect,
    emit,
    int_at_least,
    message_dict,
    parse_target,
    positive_float,
)
from privtrain.platform.cli_audit import add_audit_commands  # noqa: E402
from privtrain.platform.cli_audit_log import add_audit_log_commands  # noqa: E402
from privtrain.platform.cli_certs import add_certs_commands  # noqa: E402
from privtrain.platform.cli_datasets import add_dataset_commands  # noqa: E402
from privtrain.platform.cli_server import add_server_command  # noqa: E402
from privtrain.platform.cli_worker import add_worker_command  # noqa: E402


# ---------------------------------------------------------------- db
def _db_upgrade(args: argparse.Namespace) -> int:
    from privtrain.platform.config import default_database_url
    from privtrain.platform.db.migrate import upgrade
    from privtrain.trainer.checkpoints import private_folder

    url = args.url or default_database_url(args.home)
    private_folder(args.home)
    upgrade(url)
    print(f"database at head: {url}")
    return 0


# ---------------------------------------------------------------- jobs
def _job_submit(args: argparse.Namespace) -> int:
    from privtrain.platform.client import job_spec

    spec = job_spec(
        dataset_id=args.dataset, model=args.model, hidden_sizes=args.hidden or [],
        target_column=args.target, feature_columns=args.features or [],
        release_test_accuracy=args.release_test_accuracy,
        test_accuracy_noise=args.test_accuracy_noise,
        target_epsilon=args.epsilon, target_delta=args.delta, epochs=args.epochs,
        batch_size=args.batch_size, max_physical_batch_size=args.max_physical_batch_size,
        max_grad_norm=args.max_grad_norm, learning_rate=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, seed=args.seed, device=args.device,
        accountant=args.accountant, noise_multiplier=args.noise_multiplier,
        optimizer=args.optimizer, nesterov=args.nesterov, lr_schedule=args.lr_schedule,
        model_options_json=args.model_options or "", fix_model=args.fix_model,
        freeze_unused=args.freeze_unused, world_size=args.world_size, clipping=args.clipping,
        target_unclipped_quantile=args.target_unclipped_quantile,
        clipbound_learning_rate=args.clipbound_learning_rate, min_clipbound=args.min_clipbound,
        max_clipbound=args.max_clipbound, unclipped_num_std=args.unclipped_num_std,
        noise_schedule=args.noise_schedule, noise_gamma=args.noise_gamma,
        noise_step_epochs=args.noise_step_epochs, precision=args.precision, compile=args.compile,
    )
    with connect(args) as client:
        job = client.submit(spec, request_id=args.request_id)
        if not args.watch:
            emit(args, message_dict(job), f"job {job.id} {job.state}")
            return 0
        if not args.json:
            print(f"job {job.id} {job.state}")
        return _watch_to_end(args, client, job.id)


def _watch_to_end(args: argparse.Namespace, client: Any, job_id: str) -> int:
    """Follow the job with a progress bar; then print its final record. Exit 0 only on SUCCEEDED."""
    from privtrain.platform.progress import watch_with_progress

    code = watch_with_progress(client, job_id, quiet=args.json)
    job = client.get_job(job_id)
    emit(args, message_dict(job), _job_line(job))
    return code


def _job_watch(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.get_job(args.job_id)  # NOT_FOUND / PERMISSION_DENIED before any progress bar
        return _watch_to_end(args, client, args.job_id)


def _job_get(args: argparse.Namespace) -> int:
    with connect(args) as client:
        job = client.get_job(args.job_id)
    emit(args, message_dict(job), _job_line(job))
    return 0


def _job_line(job: Any) -> str:
    line = f"{job.id}  {job.state:<9} ε spent {job.epsilon_spent:.4g}"
    if job.HasField("result") and job.result.parameters_sha256:
        if job.result.HasField("test_accuracy"):
            line += f"  test accuracy {job.result.test_accuracy:.4f} (DP release)"
        line += f"  (ε={job.result.epsilon:.4g})"
    if job.HasField("monitoring") and job.HasField("result") and job.result.parameters_sha256:
        line += f"  exact test accuracy {job.monitoring.test_accuracy:.4f}"
    if job.error:
        line += f"  error: {job.error}"
    return line


def _job_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        jobs = client.list_jobs(args.state or "")
    emit(args, [message_dict(j) for j in jobs], "\n".join(_job_line(j) for j in jobs) or "no jobs")
    return 0


def _job_cancel(args: argparse.Namespace) -> int:
    with connect(args) as client:
        job = client.cancel(args.job_id)
    emit(args, message_dict(job), _job_line(job))
    return 0


def _job_download(args: argparse.Namespace) -> int:
    from privtrain.atomic_files import atomic_write_bytes
    from privtrain.platform.client import sha256_hex

    if args.out.exists() and not args.force:
        raise InvalidInput(f"{args.out} exists; choose another --out or pass --force to replace it")
    with connect(args) as client:
        blob = client.download_parameters(args.job_id)
    atomic_write_bytes(args.out, blob.plaintext, mode=0o600)
    digest = sha256_hex(blob.plaintext)
    emit(args, {"path": str(args.out), "sha256": digest, "bytes": len(blob.plaintext),
                  "signer": blob.signer.common_name, "verified": True},
           f"verified and decrypted {len(blob.plaintext)} bytes signed by "
           f"{blob.signer.common_name} -> {args.out} (sha256 {digest})")
    return 0


def _job_evaluate(args: argparse.Namespace) -> int:
    for path in (args.params, args.data):
        if not path.is_file():
            raise InvalidInput(f"no such file: {path}")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from privtrain.datasets.image_manifest import IMAGE_KIND
    from privtrain.trainer.evaluate import (
        evaluate_image_parameters,
        evaluate_parameters,
        parameters_dataset_kind,
    )

    params = args.params.read_bytes()
    if parameters_dataset_kind(params) == IMAGE_KIND:
        acc, rows = evaluate_image_parameters(params, args.data.read_bytes())
    else:
        try:
            table = pq.read_table(args.data).to_pandas()
        except pa.ArrowException as exc:
            raise InvalidInput(f"{args.data} is not a readable Parquet file: {exc}") from None
        acc, rows = evaluate_parameters(params, table)
    emit(args, {"test_accuracy": acc, "test_rows": rows},
           f"test accuracy {acc:.4f} on {rows} held-out rows")
    return 0


# ---------------------------------------------------------------- alerts
def _alerts(args: argparse.Namespace) -> int:
    with connect(args) as client:
        alerts = client.list_alerts(args.state or "", args.job or "")
    lines = [f"{a.state:<8} {a.kind:<19} job {a.job_id}  {a.message}" for a in alerts]
    emit(args, [message_dict(a) for a in alerts], "\n".join(lines) or "no alerts")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full ``privtrain`` argument parser."""
    from privtrain.anonymize.cli import add_anonymize_commands

    parser = _OneLineErrors(prog="privtrain", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_certs_commands(sub)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="sub", required=True)
    up = db.add_parser("upgrade", help="apply Alembic migrations up to head")
    up.add_argument("--home", type=Path, default=Path("privtrain-home"))
    up.add_argument("--url", default=None, help="SQLAlchemy URL (default: SQLite in --home)")
    up.set_defaults(func=_db_upgrade)

    add_server_command(sub)

    add_anonymize_commands(sub)

    add_dataset_commands(sub)

    add_audit_commands(sub)

    add_audit_log_commands(sub)

    add_worker_command(sub)

    job = sub.add_parser("job", help="DP training jobs").add_subparsers(dest="sub", required=True)
    sj = job.add_parser("submit", help="submit a DP-SGD job")
    sj.add_argument("--dataset", required=True, help="dataset id")
    sj.add_argument("--target", required=True, help="label column")
    sj.add_argument("--features", nargs="+", default=None,
                    help="feature columns (default: every usable column of the manifest)")
    sj.add_argument("--model", default="mlp",
                    help="logistic_regression, mlp, cnn, resnet, lstm_text or sequential")
    sj.add_argument("--model-options", default=None, metavar="JSON",
                    help='architecture options as a JSON object, e.g. \'{"width": 16}\'')
    sj.add_argument("--fix-model", action="store_true",
                    help="replace BatchNorm, in-place activations and LSTM instead of refusing")
    sj.add_argument("--freeze-unused", action="store_true",
                    help="freeze parameters the forward never uses instead of refusing")
    sj.add_argument("--hidden", type=POSITIVE, nargs="*", default=None,
                    help="MLP hidden layer widths (default 64; mlp only)")
    sj.add_argument("--epsilon", type=float, default=3.0, help="target ε")
    sj.add_argument("--delta", type=float, default=1e-5, help="target δ")
    sj.add_argument("--epochs", type=POSITIVE, default=5, help="expected passes over the training rows")
    sj.add_argument("--batch-size", type=POSITIVE, default=512, help="logical batch size")
    sj.add_argument("--max-physical-batch-size", type=POSITIVE, default=256,
                    help="largest batch put through the model at once (memory)")
    sj.add_argument("--max-grad-norm", type=float, default=1.0, help="per-sample clipping bound C")
    sj.add_argument("--lr", type=float, default=0.5, help="SGD learning rate")
    sj.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    sj.add_argument("--weight-decay", type=float, default=0.0, help="SGD weight decay")
    sj.add_argument("--seed", type=int_at_least(0, 2**63 - 1), default=0,
                    help="fixes the model's initialisation (sampling and noise come from a "
                         "secret drawn for the job)")
    sj.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="auto picks CUDA when present")
    sj.add_argument("--accountant", default="prv", choices=["prv", "rdp"], help="privacy accountant")
    sj.add_argument("--noise-multiplier", type=float, default=None,
                    help="use this σ instead of calibrating one (refused if its ε exceeds --epsilon)")
    sj.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"],
                    help="SGD (momentum, optionally Nesterov) or Adam")
    sj.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    sj.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine", "step"],
                    help="per-step learning-rate schedule")
    sj.add_argument("--clipping", default="flat", choices=["flat", "per_layer", "adaptive"],
                    help="one bound on the whole per-sample gradient, C/sqrt(L) per tensor, or a "
                         "bound that follows a private quantile of the norms (starts at --max-grad-norm)")
    sj.add_argument("--target-unclipped-quantile", type=float, default=None,
                    help="adaptive clipping: fraction of samples to keep unclipped (default 0.5)")
    sj.add_argument("--clipbound-learning-rate", type=float, default=None,
                    help="adaptive clipping: step of the geometric clip-bound update (default 0.2)")
    sj.add_argument("--min-clipbound", type=float, default=None,
                    help="adaptive clipping: lowest clip bound (default 0.001)")
    sj.add_argument("--max-clipbound", type=float, default=None,
                    help="adaptive clipping: highest clip bound (default 1000)")
    sj.add_argument("--unclipped-num-std", type=float, default=None,
                    help="adaptive clipping: noise std of the unclipped count (default batch size / 20)")
    sj.add_argument("--noise-schedule", default="constant", choices=["constant", "exponential", "step"],
                    help="σ per epoch: constant, × gamma every epoch, or × gamma every "
                         "--noise-step-epochs epochs; its scale is calibrated to --epsilon")
    sj.add_argument("--noise-gamma", type=float, default=None,
                    help="decay factor in (0, 1] of the noise schedule (default 0.9)")
    sj.add_argument("--noise-step-epochs", type=POSITIVE, default=None,
                    help="epochs between two decays of the step noise schedule (default 1)")
    sj.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: forward and loss under bfloat16 autocast; clipping and noise stay fp32")
    sj.add_argument("--compile", action="store_true", help="torch.compile the evaluation forward")
    sj.add_argument("--release-test-accuracy", default="every_epoch",
                    choices=["every_epoch", "final", "none"],
                    help="when a noisy test accuracy is released (its cost is inside --epsilon)")
    sj.add_argument("--test-accuracy-noise", type=positive_float, default=None,
                    help="std, in rows, of the noise on each released count of correct test "
                         "predictions (default 20)")
    sj.add_argument("--world-size", type=int_at_least(1, 16), default=1,
                    help="training processes under torch.distributed (DPDDP)")
    sj.add_argument("--request-id", default=None, help="idempotency key for retries")
    sj.add_argument("--watch", action="store_true", help="follow progress until the job ends")
    add_connection_args(sj)
    sj.set_defaults(func=_job_submit)
    for name, func, help_text in [("watch", _job_watch, "follow a job's progress"),
                                  ("get", _job_get, "show one job"),
                                  ("cancel", _job_cancel, "cancel a job")]:
        p = job.add_parser(name, help=help_text)
        p.add_argument("job_id")
        add_connection_args(p)
        p.set_defaults(func=func)
    jl = job.add_parser("list", help="list your jobs (admins: every job, with exact figures)")
    jl.add_argument("--state", default=None, help="PENDING, RUNNING, SUCCEEDED, FAILED or CANCELLED")
    add_connection_args(jl)
    jl.set_defaults(func=_job_list)
    dl = job.add_parser("download", help="download, verify and decrypt trained parameters")
    dl.add_argument("job_id")
    dl.add_argument("--out", type=Path, required=True, help="safetensors file to write")
    dl.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_connection_args(dl)
    dl.set_defaults(func=_job_download)
    ev = job.add_parser("evaluate", help="re-evaluate downloaded parameters on local test rows")
    ev.add_argument("--params", type=Path, required=True, help="safetensors file from `job download`")
    ev.add_argument("--data", type=Path, required=True,
                    help="anonymized Parquet with the test split, or the packed .safetensors images")
    ev.add_argument("--json", action="store_true", help="print JSON instead of text")
    ev.set_defaults(func=_job_evaluate)

    al = sub.add_parser("alerts", help="list monitoring alerts (admin)")
    al.add_argument("--state", choices=["FIRING", "RESOLVED"], default=None)
    al.add_argument("--job", default=None, help="only this job's alerts")
    add_connection_args(al)
    al.set_defaults(func=_alerts)
    _show_defaults(parser)
    return parser


class _OneLineErrors(argparse.ArgumentParser):
    """An argument mistake is one ``error:`` line naming the command (exit 2), as every other
    local mistake; ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, except ``None`` (meaning "not given": the help says what then)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command's --help shows option defaults."""
    parser.formatter_class = _DefaultsFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


def _terminated(signum: int, frame: object) -> NoReturn:
    # SIGTERM (kill, a service manager, a container stop) unwinds like Ctrl-C: the code
    # that made a temporary file removes it on the way out.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (130 on Ctrl-C, 143 on SIGTERM)."""
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        return _run(args)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except PrivtrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        hint = _diagnose(args, exc)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; say nothing more, on a stdout that is gone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"error: database: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _diagnose(args: argparse.Namespace, exc: grpc.RpcError) -> str | None:
    """Explain a failed handshake (wrong names, other CA, expired) when we can."""
    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED):  # type: ignore[attr-defined]
        return None
    server = getattr(args, "server", None)
    if not server:
        return None
    from privtrain.secure_transport.channels import ClientTLS, diagnose_connection
    from privtrain.secure_transport.issuing import ClientBundle

    try:
        host, port = parse_target(server)
        tls = ClientTLS.from_bundle(ClientBundle(args.bundle))
    except PrivtrainError:
        return None
    return diagnose_connection(host, port, tls)


if __name__ == "__main__":
    sys.exit(main())
