"""``make demo``: the main job end to end on the UCI Adult census data.

Each step runs through the real component: the PKI (a CA for the operator, one
bundle per person: alice the data owner, bob the trainer, carol the admin),
Alembic, the mTLS gRPC server in its own process, the anonymizer CLI, the upload
stream, alice's grant to bob, DP-SGD in a worker process, the sealed parameter
stream, client-side re-evaluation, a stall drill (SIGSTOP the worker of a second
job until the NO_PROGRESS alert fires, SIGCONT, see it resolve), alice's view of
her dataset's ledger and the check of the audit log. The last line printed is
one JSON object.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from privtrain.platform.client import PrivtrainClient, job_spec, sha256_hex
from privtrain.platform.progress import watch_with_progress

DEMO_DIR = Path(".privtrain-demo")
POLICY = Path(__file__).resolve().parents[3] / "examples" / "adult" / "policy.toml"
BUDGET_EPSILON, BUDGET_DELTA = 5.0, 2e-5
TARGET_EPSILON, TARGET_DELTA = 3.0, 1e-5
STALL_FLOOR_S = 2.0
PEOPLE = {"alice": "data-owner", "bob": "trainer", "carol": "admin"}

console = Console(stderr=True)


def privtrain(*args: str | Path) -> str:
    """Run one ``privtrain`` CLI command as a user would; stop the demo if it fails."""
    cmd = [sys.executable, "-m", "privtrain.platform.cli", *map(str, args)]
    console.print(f"[dim]$ privtrain {' '.join(map(str, args))}")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        console.print(done.stdout + done.stderr)
        raise SystemExit(f"demo step failed: privtrain {' '.join(map(str, args))}")
    if done.stdout.strip():
        console.print(done.stdout.strip())
    return done.stdout


def start_server(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``privtrain server`` on a free port; returns (process, host:port)."""
    port_file = work / "server.port"
    log = (work / "server.log").open("wb")
    cmd = [
        sys.executable, "-m", "privtrain.platform.cli", "server", "--home", str(work / "home"),
        "--pki", str(work / "pki"), "--port", "0", "--port-file", str(port_file),
        "--stall-floor-s", str(STALL_FLOOR_S), "--stall-first-step-s", "60",
    ]
    console.print("[dim]$ privtrain server --port 0 ... (background, log in server.log)")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start; see {work / 'server.log'}")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def stall_drill(trainer: PrivtrainClient, admin: PrivtrainClient, dataset_id: str) -> dict[str, Any]:
    """Freeze a running job's worker until NO_PROGRESS fires, thaw it, see the alert resolve.

    The operator watches: alerts and worker pids are monitoring figures, for admins only.
    """
    job = trainer.submit(job_spec(
        dataset_id=dataset_id, model="logistic_regression", target_column="income",
        target_epsilon=1.0, target_delta=TARGET_DELTA, epochs=2, batch_size=256,
        max_physical_batch_size=256, max_grad_norm=1.0, learning_rate=0.5, seed=1,
        release_test_accuracy="none",
    ))
    console.print(f"stall drill: job {job.id} submitted")
    stopped_at = fired_at = resolved_at = None
    pid = 0
    for event in admin.watch(job.id, timeout_s=300):
        which = event.WhichOneof("event")
        if which == "step" and stopped_at is None and event.step.step >= 20:
            pid = admin.get_job(job.id).monitoring.worker_pid
            os.kill(pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            console.print(f"stall drill: SIGSTOP worker pid {pid} at step {event.step.step}")
        elif which == "alert" and event.alert.kind == "NO_PROGRESS":
            console.print(f"stall drill: alert {event.alert.state}: {event.alert.message}")
            if event.alert.state == "FIRING" and fired_at is None:
                fired_at = time.monotonic()
                os.kill(pid, signal.SIGCONT)
                console.print(f"stall drill: SIGCONT worker pid {pid}")
            elif event.alert.state == "RESOLVED":
                resolved_at = time.monotonic()
        elif which == "state" and event.state.state in ("SUCCEEDED", "FAILED", "CANCELLED"):
            console.print(f"stall drill: job {job.id} {event.state.state}")
    stored = admin.list_alerts(job_id=job.id)
    return {
        "job": job.id,
        "fired": fired_at is not None and any(a.kind == "NO_PROGRESS" for a in stored),
        "resolved": resolved_at is not None
        and any(a.kind == "NO_PROGRESS" and a.state == "RESOLVED" for a in stored),
        "latency_s": round(fired_at - stopped_at, 3) if fired_at and stopped_at else None,
    }


def main() -> int:
    """Run the demo; returns the exit code (0 only when every check held)."""
    started = time.monotonic()
    work = DEMO_DIR.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pki, home = work / "pki", work / "home"

    console.rule("1. PKI, database and people")
    privtrain("certs", "init", "--dir", pki)
    privtrain("db", "upgrade", "--home", home)
    bundles = {name: work / "people" / name for name in PEOPLE}
    for name, role in PEOPLE.items():
        privtrain("certs", "issue", "--role", role, "--name", name, "--out", bundles[name],
                  "--pki", pki, "--home", home)

    console.rule("2. Data owner: UCI Adult, anonymized on the owner's machine")
    from privtrain.datasets.adult import fetch_adult

    raw = fetch_adult()
    console.print(f"raw data: {raw} (UCI Adult, Becker & Kohavi 1996, CC BY 4.0)")
    key, anon = work / "owner.hmac", work / "adult.anon.parquet"
    privtrain("anonymize", "keygen", "--out", key)
    privtrain("anonymize", "run", raw, "--policy", POLICY, "--key", key, "--out", anon,
              "--signing-key", bundles["alice"] / "client.key",
              "--signing-cert", bundles["alice"] / "client.pem")
    manifest = json.loads(anon.with_name(anon.name + ".manifest.json").read_text())["manifest"]

    console.rule("3. Training service (mTLS gRPC, workers in their own processes)")
    server, target = start_server(work)
    try:
        owner = PrivtrainClient(target, bundles["alice"])
        trainer = PrivtrainClient(target, bundles["bob"])
        admin = PrivtrainClient(target, bundles["carol"])
        owner.wait_until_serving()
        dataset = owner.upload(anon, anon.with_name(anon.name + ".manifest.json"), name="uci-adult",
                               epsilon_budget=BUDGET_EPSILON, delta_budget=BUDGET_DELTA,
                               split=None if "split" in manifest else ("split", "train", "test"))
        console.print(f"uploaded dataset {dataset.id}: {dataset.rows} rows, k={dataset.k_anonymity}, "
                      f"published (noisy) split {dataset.published_train_rows} training / "
                      f"{dataset.published_test_rows} test rows, budget ε={dataset.epsilon_budget} "
                      f"δ={dataset.delta_budget} (ε remaining {dataset.epsilon_remaining:.4f})")
        privtrain("dataset", "grant", dataset.id, "--trainer", "bob", "--server", target,
                  "--bundle", bundles["alice"])

        console.rule("4. Trainer: DP-SGD job, watched over the server stream")
        job = trainer.submit(job_spec(
            dataset_id=dataset.id, model="mlp", hidden_sizes=[64], target_column="income",
            target_epsilon=TARGET_EPSILON, target_delta=TARGET_DELTA, epochs=5, batch_size=512,
            max_physical_batch_size=256, max_grad_norm=1.0, learning_rate=0.5, momentum=0.9,
            weight_decay=0.0, seed=0, device="auto", accountant="prv",
        ))
        watch_with_progress(trainer, job.id)
        job = trainer.get_job(job.id)
        result = job.result
        monitoring = admin.get_job(job.id).monitoring  # the operator's exact figures

        console.rule("5. Sealed parameters: download, verify, decrypt, re-evaluate")
        blob = trainer.download_parameters(job.id)
        params = work / "parameters.safetensors"
        params.write_bytes(blob.plaintext)
        console.print(f"signature verified (signer {blob.signer.common_name}); "
                      f"{len(blob.plaintext)} bytes, sha256 {sha256_hex(blob.plaintext)}")
        client_eval = json.loads(privtrain("job", "evaluate", "--params", params, "--data", anon,
                                           "--json"))

        console.rule("6. Monitoring: stall drill")
        drill = stall_drill(trainer, admin, dataset.id)
        privtrain("alerts", "--server", target, "--bundle", bundles["carol"])

        console.rule("7. Who spent what, and who did what")
        privtrain("dataset", "ledger", dataset.id, "--server", target, "--bundle", bundles["alice"])
        ledger = owner.ledger(dataset.id)
        audit = json.loads(privtrain("audit-log", "verify", "--json", "--server", target,
                                     "--bundle", bundles["carol"]))
        for client in (owner, trainer, admin):
            client.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    # The operator's own check, on the server's database, after the final signature at stop.
    audit_home = json.loads(privtrain("audit-log", "verify", "--json", "--home", home, "--pki", pki))

    summary = {
        "dataset": "UCI Adult (adult.data + adult.test)",
        "rows_raw": manifest["input_rows"],
        "rows_anonymized": manifest["output_rows"],
        "k_anonymity": manifest["k_achieved"],
        "epsilon": round(result.epsilon, 6),
        "epsilon_target": TARGET_EPSILON,
        "delta": result.delta,
        "accountant": result.accountant,
        "noise_multiplier": round(result.noise_multiplier, 6),
        "sample_rate": round(result.sample_rate, 6),
        "steps": result.steps,
        "device": result.device,
        "test_accuracy": round(result.test_accuracy, 4),
        "test_accuracy_exact": round(monitoring.test_accuracy, 4),
        "client_test_accuracy": round(client_eval["test_accuracy"], 4),
        "parameters_sha256": sha256_hex(blob.plaintext),
        "parameters_verified": sha256_hex(blob.plaintext) == result.parameters_sha256,
        "job_state": job.state,
        "stall_alert_fired": drill["fired"],
        "stall_alert_resolved": drill["resolved"],
        "stall_alert_latency_s": drill["latency_s"],
        "people": {name: role for name, role in PEOPLE.items()},
        "ledger_jobs_by": sorted({e.submitter for e in ledger.entries if e.kind == "job"}),
        "audit_log_entries": audit_home["entries"],
        "audit_log_verified": bool(audit["ok"] and audit_home["ok"]),
        "wall_s": round(time.monotonic() - started, 1),
    }
    table = Table(title="privtrain demo")
    table.add_column("figure")
    table.add_column("value")
    for name, value in summary.items():
        table.add_row(name, str(value))
    Console().print(table)
    print(json.dumps(summary), flush=True)
    # The trainer's accuracy is a DP release: the exact count plus N(0, 20²) rows, over the
    # published test rows (themselves ±20): 5 standard deviations of each bound the gap.
    release_tolerance = 5 * (20.0 + 20.0) / job.plan.test_rows
    ok = (
        summary["job_state"] == "SUCCEEDED" and summary["parameters_verified"]
        and summary["epsilon"] <= TARGET_EPSILON
        and summary["client_test_accuracy"] == summary["test_accuracy_exact"]
        and abs(summary["test_accuracy"] - summary["test_accuracy_exact"]) <= release_tolerance + 1e-4
        and drill["fired"] and drill["resolved"]
        and summary["audit_log_verified"] and summary["ledger_jobs_by"] == ["bob"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
