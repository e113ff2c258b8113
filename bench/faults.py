"""Fault drills against real processes: jobs survive kills, cancels are quick, nothing is overcharged.

Sets up a PKI with three people, the UCI Adult table anonymized with the demo policy,
and, for each drill, a fresh server home with its own SQLite database and ledger:

- **server kills**: 10 jobs queued; ``kill -9`` of the ``privtrain server`` process at 10
  random moments (seeded), each followed by a restart; every job must end SUCCEEDED
  with ε ≤ its target and its ledger entry charging exactly its plan, whose ε is the
  job's own final ε.
- **worker kills**: 10 jobs; ``kill -9`` of a running job's worker process, 10 times
  (each job once, at a random step); same checks.
- **cancels**: 20 jobs, each cancelled at a random moment after its submission (the
  first 6 within the first second: admission, claim, worker start-up); every job must
  end CANCELLED within 2 s of the cancel and be charged exactly the steps that reached
  the server (0 when none did).
- **full disk**: the server's home on a small tmpfs (``mount -t tmpfs``; skipped with the
  reason when mounting is not allowed) filled while a job trains, freed 8 s later: the
  job must end settled (SUCCEEDED, or FAILED/CANCELLED charged what it took), never
  stuck RUNNING, with a STORAGE_ERROR or SETTLEMENT_FAILED alert; the server stays up.

A job is *overcharged* when its ledger entry charges more steps or releases than the
job's steps that reached the server (or than its plan, when it succeeded).

    python bench/faults.py [--seed 0] [--skip-disk] [--drills server,worker,cancel,disk]

The last line is one JSON object: ``server_kills_survived``, ``worker_kills_survived``,
``cancels_within_2s``, ``overcharged_jobs`` (must be 0), with the details.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes

from privtrain.datasets.adult import fetch_adult
from privtrain.platform.client import PrivtrainClient, job_spec
from privtrain.platform.db.migrate import upgrade
from privtrain.platform.db.repositories import Database
from privtrain.platform.job_states import TERMINAL_STATES
from privtrain.secure_transport.pki import load_certificate
from privtrain.secure_transport.roles import serial_hex
from privtrain.trainer.plan import JobPlan

DRILLS = ("server", "worker", "cancel", "disk")
PEOPLE = {"alice": "data-owner", "bob": "trainer", "carol": "admin"}
POLICY = Path(__file__).resolve().parents[1] / "examples" / "adult" / "policy.toml"
TARGET_EPSILON = 0.5
SERVER_OPTIONS = ["--local-workers", "2", "--checkpoint-every-s", "1", "--lease-s", "6",
                  "--stall-first-step-s", "600", "--stall-floor-s", "120"]


def cli(*args: str | Path, check: bool = True) -> str:
    done = subprocess.run([sys.executable, "-m", "privtrain.platform.cli", *map(str, args)],
                          capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"privtrain {' '.join(map(str, args))} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


class Server:
    """One ``privtrain server`` process on a fixed port, restartable on the same home."""

    def __init__(self, work: Path, home: Path, port: int) -> None:
        self.work, self.home, self.port = work, home, port
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        port_file = self.work / f"port-{self.starts}"
        log = (self.work / f"server-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "privtrain.platform.cli", "server", "--home", str(self.home),
             "--pki", str(self.work.parent / "pki"), "--port", str(self.port), "--port-file",
             str(port_file), *SERVER_OPTIONS], stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start; see {log.name}")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup(root: Path) -> tuple[Path, dict[str, Path], Path]:
    """PKI, one bundle per person, the anonymized Adult table (once for all drills)."""
    pki, scratch = root / "pki", root / "scratch-home"
    cli("certs", "init", "--dir", pki)
    cli("db", "upgrade", "--home", scratch)
    bundles = {name: root / "people" / name for name in PEOPLE}
    for name, role in PEOPLE.items():
        cli("certs", "issue", "--role", role, "--name", name, "--out", bundles[name], "--pki", pki,
            "--home", scratch)
    key, anon = root / "owner.hmac", root / "adult.anon.parquet"
    cli("anonymize", "keygen", "--out", key)
    cli("anonymize", "run", fetch_adult(), "--policy", POLICY, "--key", key, "--out", anon,
        "--signing-key", bundles["alice"] / "client.key",
        "--signing-cert", bundles["alice"] / "client.pem")
    return pki, bundles, anon


def new_home(root: Path, name: str, bundles: dict[str, Path], home: Path | None = None) -> Server:
    """A fresh home with the people recorded, and its server (not started)."""
    work = root / name
    work.mkdir()
    home = home or work / "home"
    home.mkdir(exist_ok=True)
    url = f"sqlite:///{(home / 'privtrain.db').resolve()}"
    upgrade(url)
    with Database(url) as db:
        for person, role in PEOPLE.items():
            cert = load_certificate(bundles[person] / "client.pem")
            db.certificates.record(
                serial=serial_hex(cert), common_name=person, role=role,
                fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
                not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)
    return Server(work, home, free_port())


def upload(server: Server, bundles: dict[str, Path], anon: Path) -> str:
    manifest = json.loads(anon.with_name(anon.name + ".manifest.json").read_text())["manifest"]
    split = None if "split" in manifest else ("split", "train", "test")
    with PrivtrainClient(server.target, bundles["alice"], timeout_s=120) as owner:
        ds = owner.upload(anon, anon.with_name(anon.name + ".manifest.json"), name="adult",
                          epsilon_budget=100.0, delta_budget=2e-5, split=split)
        owner.grant(ds.id, "bob")
        return ds.id


def spec(dataset_id: str, epochs: int = 2, batch_size: int = 256) -> Any:
    return job_spec(dataset_id=dataset_id, model="logistic_regression", target_column="income",
                    target_epsilon=TARGET_EPSILON, target_delta=1e-5, epochs=epochs,
                    batch_size=batch_size, max_physical_batch_size=256, max_grad_norm=1.0,
                    learning_rate=0.5, seed=0, accountant="rdp")


def wait_all(db: Database, jobs: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(db.jobs.get(j).state in TERMINAL_STATES for j in jobs):
        if time.monotonic() > deadline:
            states = {j: db.jobs.get(j).state.value for j in jobs}
            raise SystemExit(f"jobs not finished within {timeout_s:.0f} s: {states}")
        time.sleep(0.25)


def audit_job(db: Database, job_id: str) -> dict[str, Any]:
    """A finished job's figures, and whether its ledger entry overcharges it."""
    job = db.jobs.get(job_id)
    entry = db.budget.entry_of_job(job_id)
    plan = JobPlan.from_dict(job.plan) if job.plan else None
    if entry is None:
        # Cancelled before admission: nothing was ever reserved, so nothing is charged.
        charged = None if job.state.value == "SUCCEEDED" else []
    else:
        charged = entry.charged if entry.settled else None
    charged_steps = sum(n for _, q, n in charged or [] if q < 1)
    charged_releases = sum(n for _, q, n in charged or [] if q == 1)
    result = json.loads(job.result_json) if job.result_json else {}
    if job.state.value == "SUCCEEDED" and plan is not None:
        allowed = (plan.total_steps, len(plan.release_epochs))
    else:
        allowed = (job.steps_done, job.releases_done)
    return {
        "state": job.state.value, "attempts": job.attempts, "steps_done": job.steps_done,
        "charged_steps": charged_steps, "settled": charged is not None,
        "epsilon": result.get("epsilon"),
        "ledger_epsilon": 0.0 if entry is None else entry.epsilon_spent,
        "overcharged": charged is None or charged_steps > allowed[0] or charged_releases > allowed[1],
        "exact": charged is not None and (charged_steps, charged_releases) == allowed,
    }


def succeeded_exactly(figures: dict[str, Any]) -> bool:
    return (figures["state"] == "SUCCEEDED" and figures["exact"]
            and figures["epsilon"] is not None and figures["epsilon"] <= TARGET_EPSILON
            and abs(figures["ledger_epsilon"] - figures["epsilon"]) < 1e-9)


def server_kills(root: Path, bundles: dict[str, Path], anon: Path, rng: random.Random,
                 kills: int) -> dict[str, Any]:
    server = new_home(root, "server-kills", bundles)
    server.start()
    dataset = upload(server, bundles, anon)
    with PrivtrainClient(server.target, bundles["bob"], timeout_s=60) as trainer:
        jobs = [trainer.submit(spec(dataset), request_id=f"s-{i}").id for i in range(10)]
    db = Database(f"sqlite:///{(server.home / 'privtrain.db').resolve()}")
    hits = 0
    for _ in range(kills):
        time.sleep(rng.uniform(1.0, 6.0))
        hits += any(db.jobs.get(j).state.value == "RUNNING" for j in jobs)
        server.kill()
        server.start()
    wait_all(db, jobs, 900)
    figures = {j: audit_job(db, j) for j in jobs}
    server.stop()
    db.close()
    ok = all(succeeded_exactly(f) for f in figures.values())
    return {"kills": kills, "kills_while_training": hits, "survived": kills if ok else 0,
            "jobs": list(figures.values())}


def worker_kills(root: Path, bundles: dict[str, Path], anon: Path, rng: random.Random,
                 kills: int) -> dict[str, Any]:
    server = new_home(root, "worker-kills", bundles)
    server.start()
    dataset = upload(server, bundles, anon)
    with PrivtrainClient(server.target, bundles["bob"], timeout_s=60) as trainer:
        jobs = [trainer.submit(spec(dataset), request_id=f"w-{i}").id for i in range(kills)]
    db = Database(f"sqlite:///{(server.home / 'privtrain.db').resolve()}")
    killed: list[str] = []
    kill_at = {j: rng.randint(1, 200) for j in jobs}  # of about 236 steps per job
    deadline = time.monotonic() + 900
    while len(killed) < kills and time.monotonic() < deadline:
        for job in db.leases.owned():
            if job.id in killed or not job.worker_pid:
                continue
            if job.steps_done >= kill_at[job.id]:
                try:
                    os.kill(job.worker_pid, signal.SIGKILL)
                    killed.append(job.id)
                except ProcessLookupError:
                    pass
                break
        time.sleep(0.05)
    wait_all(db, jobs, 900)
    figures = {j: audit_job(db, j) for j in jobs}
    server.stop()
    db.close()
    survived = sum(1 for j in killed if succeeded_exactly(figures[j]))
    return {"kills": len(killed), "survived": survived,
            "all_jobs_exact": all(succeeded_exactly(f) for f in figures.values()),
            "jobs": list(figures.values())}


def cancels(root: Path, bundles: dict[str, Path], anon: Path, rng: random.Random,
            count: int) -> dict[str, Any]:
    server = new_home(root, "cancels", bundles)
    server.start()
    dataset = upload(server, bundles, anon)
    db = Database(f"sqlite:///{(server.home / 'privtrain.db').resolve()}")
    delays = [rng.uniform(0.0, 1.0) for _ in range(6)] + [rng.uniform(1.0, 12.0) for _ in range(count - 6)]
    rows = []
    with PrivtrainClient(server.target, bundles["bob"], timeout_s=60) as trainer:
        for i, delay in enumerate(delays):
            job = trainer.submit(spec(dataset, epochs=3, batch_size=128), request_id=f"c-{i}")
            time.sleep(delay)
            state_at_cancel = db.jobs.get(job.id).state.value
            asked = time.monotonic()
            trainer.cancel(job.id)
            while db.jobs.get(job.id).state not in TERMINAL_STATES:
                if time.monotonic() - asked > 60:
                    break
                time.sleep(0.01)
            took = time.monotonic() - asked
            figures = audit_job(db, job.id)
            rows.append({"delay_s": round(delay, 3), "state_at_cancel": state_at_cancel,
                         "seconds": round(took, 3), **figures})
    server.stop()
    db.close()
    within = sum(1 for r in rows if r["state"] == "CANCELLED" and r["seconds"] <= 2.0)
    zero = [r for r in rows if r["steps_done"] == 0]
    return {"cancels": len(rows), "within_2s": within,
            "no_step_charged_0": sum(1 for r in zero if r["charged_steps"] == 0),
            "no_step_jobs": len(zero), "max_seconds": max(r["seconds"] for r in rows),
            "slowest": {k: v for k, v in max(rows, key=lambda r: r["seconds"]).items()
                        if k in ("delay_s", "state_at_cancel", "seconds", "steps_done", "state")},
            "jobs": rows}


def full_disk(root: Path, bundles: dict[str, Path], anon: Path) -> dict[str, Any]:
    mount = root / "disk"
    mount.mkdir()
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
                           capture_output=True, text=True)
    if tried.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs here: {tried.stderr.strip()}"}
    try:
        server = new_home(root, "full-disk", bundles, home=mount)
        server.start()
        dataset = upload(server, bundles, anon)
        db = Database(f"sqlite:///{(server.home / 'privtrain.db').resolve()}")
        with PrivtrainClient(server.target, bundles["bob"], timeout_s=60) as trainer:
            job_id = trainer.submit(spec(dataset, epochs=4, batch_size=128), request_id="d").id
        while db.jobs.get(job_id).steps_done < 30:
            time.sleep(0.05)
        filler = mount / "filler"
        with filler.open("wb") as out:
            try:
                while True:
                    out.write(b"\0" * (1 << 20))
            except OSError:
                pass
        try:
            with filler.open("ab") as out:
                while True:
                    out.write(b"\0" * 4096)
                    out.flush()
        except OSError:
            pass
        time.sleep(8.0)
        stuck_state = None
        try:
            stuck_state = db.jobs.get(job_id).state.value
        except Exception as exc:  # noqa: BLE001 - the database may be unreadable while full
            stuck_state = f"unreadable: {type(exc).__name__}"
        filler.unlink()
        wait_all(db, [job_id], 600)
        figures = audit_job(db, job_id)
        alerts = sorted({a.kind.value for a in db.alerts.list(job_id=job_id)})
        with PrivtrainClient(server.target, bundles["carol"], timeout_s=20) as admin:
            admin.wait_until_serving(10)  # raises if the server did not survive
            healthy = True
        server.stop()
        db.close()
        return {"state_while_full": stuck_state, "alerts": alerts, "healthy": bool(healthy),
                "settled": figures["settled"], **figures}
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-disk", action="store_true")
    parser.add_argument("--drills", default=",".join(DRILLS),
                        help=f"comma-separated subset of {','.join(DRILLS)} (default: all)")
    args = parser.parse_args(argv)
    chosen = [d.strip() for d in args.drills.split(",") if d.strip()]
    if unknown := sorted(set(chosen) - set(DRILLS)):
        parser.error(f"--drills: unknown drill(s) {', '.join(unknown)}; choose from {', '.join(DRILLS)}")
    if args.skip_disk and "disk" in chosen:
        chosen.remove("disk")
    rng = random.Random(args.seed)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="privtrain-faults-"))
    report: dict[str, Any] = {}
    try:
        pki, bundles, anon = setup(root)
        del pki
        for name in DRILLS:
            if name not in chosen:
                continue
            if name == "server":
                report[name] = server_kills(root, bundles, anon, rng, 10)
            elif name == "worker":
                report[name] = worker_kills(root, bundles, anon, rng, 10)
            elif name == "cancel":
                report[name] = cancels(root, bundles, anon, rng, 20)
            else:
                report[name] = full_disk(root, bundles, anon)
            shown = {k: v for k, v in report[name].items() if k != "jobs"}
            print(f"{name}:", json.dumps(shown), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    jobs = [j for name in ("server", "worker", "cancel") if name in report
            for j in report[name]["jobs"]]
    if "state" in report.get("disk", {}):
        jobs.append(report["disk"])
    summary = {
        "drills": chosen,
        "server_kills_survived": report.get("server", {}).get("survived"),
        "server_kills_while_training": report.get("server", {}).get("kills_while_training"),
        "worker_kills_survived": report.get("worker", {}).get("survived"),
        "cancels_within_2s": report.get("cancel", {}).get("within_2s"),
        "cancels": report.get("cancel", {}).get("cancels"),
        "cancel_max_s": report.get("cancel", {}).get("max_seconds"),
        "no_step_cancels_charged_0": (f"{report['cancel']['no_step_charged_0']}/"
                                      f"{report['cancel']['no_step_jobs']}"
                                      if "cancel" in report else None),
        "overcharged_jobs": sum(1 for j in jobs if j["overcharged"]),
        "full_disk": {k: report["disk"].get(k) for k in
                      ("skipped", "state_while_full", "state", "alerts", "settled", "healthy")
                      if k in report["disk"]} if "disk" in report else None,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary))
    ok = (summary["overcharged_jobs"] == 0
          and summary["server_kills_survived"] in (None, 10)
          and summary["worker_kills_survived"] in (None, 10)
          and summary["cancels_within_2s"] in (None, 20))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
