"""Following a job on the command line: a rich progress bar over the WatchJob stream."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def watch_with_progress(client: Any, job_id: str, *, quiet: bool = False) -> int:
    """Show steps, loss, samples/s and ε until the job ends; exit code 0 only on SUCCEEDED."""
    console = Console(stderr=True, quiet=quiet)
    state = "PENDING"
    with Progress(
        TextColumn("[bold]{task.fields[state]}"), BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} samples/s"),
        TextColumn("ε {task.fields[eps]}"), TimeElapsedColumn(),
        console=console, transient=False,
    ) as bar:
        task = bar.add_task("job", total=None, state=state, loss="-", rate="-", eps="0")
        for event in client.watch(job_id):
            which = event.WhichOneof("event")
            if which == "state":
                state = event.state.state
                bar.update(task, state=state)
                if event.state.error:
                    console.print(f"[red]{state}: {event.state.error}")
            elif which == "step":
                s = event.step
                bar.update(task, total=s.total_steps, completed=s.step,
                           loss=f"{s.loss:.4f}" if s.HasField("loss") else "-",
                           rate=f"{s.samples_per_s:,.0f}", eps=f"{s.epsilon:.3f}")
            elif which == "epoch":
                console.print(f"epoch {event.epoch.epoch}: test accuracy "
                              f"{event.epoch.test_accuracy:.4f}, ε {event.epoch.epsilon:.3f}")
            elif which == "alert":
                a = event.alert
                console.print(f"[yellow]alert {a.state} {a.kind}: {a.message}")
    return 0 if state == "SUCCEEDED" else 1
