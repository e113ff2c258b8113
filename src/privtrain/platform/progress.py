"""Following a job on the command line: a rich progress bar over the WatchJob stream.

A trainer's stream carries each step's number and ε and the released (noisy) test
accuracies; an admin's also the exact loss, batch sizes and throughput, and alerts.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def watch_with_progress(client: Any, job_id: str, *, quiet: bool = False) -> int:
    """Show steps and ε (and, to admins, loss and samples/s) until the job ends; exit code 0
    only on SUCCEEDED."""
    console = Console(stderr=True, quiet=quiet)
    state = "PENDING"
    with Progress(
        TextColumn("[bold]{task.fields[state]}"), BarColumn(),
        TextColumn("step {task.completed}/{task.total}"), TextColumn("ε {task.fields[eps]}"),
        TextColumn("{task.fields[monitoring]}"), TimeElapsedColumn(),
        console=console, transient=False,
    ) as bar:
        task = bar.add_task("job", total=None, state=state, eps="0", monitoring="")
        for event in client.watch(job_id):
            which = event.WhichOneof("event")
            if which == "state":
                state = event.state.state
                bar.update(task, state=state)
                if event.state.error:
                    console.print(f"[red]{state}: {event.state.error}")
            elif which == "step":
                s = event.step
                monitoring = ""
                if s.HasField("monitoring"):
                    m = s.monitoring
                    loss = f"{m.loss:.4f}" if m.HasField("loss") else "-"
                    monitoring = f"loss {loss}  {m.samples_per_s:,.0f} samples/s"
                bar.update(task, total=s.total_steps, completed=s.step, eps=f"{s.epsilon:.3f}",
                           monitoring=monitoring)
            elif which == "epoch":
                e = event.epoch
                released = (f"test accuracy {e.test_accuracy:.4f} (DP release)"
                            if e.HasField("test_accuracy") else "no accuracy released")
                exact = (f", exact {e.exact_test_accuracy:.4f}" if e.HasField("exact_test_accuracy")
                         else "")
                console.print(f"epoch {e.epoch}: {released}{exact}, ε {e.epsilon:.3f}")
            elif which == "resumed":
                r = event.resumed
                where = "its last checkpoint" if r.from_checkpoint else "the start (no checkpoint yet)"
                console.print(f"[yellow]resumed from {where} (attempt {r.attempt})")
            elif which == "alert":
                a = event.alert
                console.print(f"[yellow]alert {a.state} {a.kind}: {a.message}")
    return 0 if state == "SUCCEEDED" else 1
