"""C-T04: durable accounting — checkpoint, kill the process, resume in a new one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from privtrain.trainer.accounting import epsilon_for, restore_accountant
from privtrain.trainer.checkpoints import latest_checkpoint, load_checkpoint

SCRIPT = textwrap.dedent('''
    import json, os, signal, sys
    from pathlib import Path
    import numpy as np, pandas as pd
    from privtrain.trainer.engine import train
    from privtrain.trainer.spec import TrainingSpec

    out, mode = Path(sys.argv[1]), sys.argv[2]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4))
    label = np.where(x[:, 0] > 0, "yes", "no")
    table = pd.DataFrame({f"f{i}": x[:, i] for i in range(4)} | {"label": label, "split": "train"})
    table = pd.concat([table, table.assign(split="test")], ignore_index=True)
    domains = {f"f{i}": {"type": "numeric", "lower": -4, "upper": 4} for i in range(4)}
    domains |= {"label": {"type": "categorical", "values": ["no", "yes"]},
                "split": {"type": "categorical", "values": ["train", "test"]}}
    spec = TrainingSpec(dataset_id="d", target_column="label", model="logistic_regression",
                        batch_size=5, max_physical_batch_size=5, epochs=5, noise_multiplier=1.0,
                        max_grad_norm=1.0, target_epsilon=100.0, target_delta=1e-5,
                        learning_rate=0.1, momentum=0.9, accountant="rdp", seed=4)

    class Steps:
        step = 0
        def on_start(self, info): pass
        def on_step(self, r): self.step = r.step
        def on_epoch(self, e, acc, eps): pass

    steps = Steps()
    def kill_after_epoch_3():
        if steps.step >= 12:  # 3 epochs x 4 steps, checkpoint of epoch 3 written
            os.kill(os.getpid(), signal.SIGKILL)
        return False

    stop = kill_after_epoch_3 if mode == "kill" else (lambda: False)
    result = train(spec, table, domains, out, steps, stop, resume=(mode == "resume"))
    print(json.dumps(result.to_dict()))
''')


def _run(script: Path, out: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), str(out), mode],
                          capture_output=True, text=True, timeout=300)


def test_resume_after_kill_reproduces_epsilon_and_training(tmp_path: Path) -> None:
    """Linear(4,2), 20x4 rows, batch 5, σ=1, C=1: killed after epoch 3, resumed in a new process.

    ε read ten times from the checkpoint is the same each time and equals the accountant's;
    momentum buffers are in the checkpoint; the resumed run ends with the ε and the very
    parameters of an uninterrupted run.
    """
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    killed = _run(script, tmp_path / "interrupted", "kill")
    assert killed.returncode == -9, killed.stderr

    checkpoint = latest_checkpoint(tmp_path / "interrupted" / "checkpoints")
    assert checkpoint is not None and checkpoint.name == "epoch-0003.safetensors"
    tensors, state = load_checkpoint(checkpoint)
    readings = [restore_accountant(state["accountant"]).get_epsilon(1e-5) for _ in range(10)]
    assert len(set(readings)) == 1
    assert state["step"] == 12
    assert readings[0] == pytest.approx(epsilon_for("rdp", 1.0, 0.25, 12, 1e-5))
    assert state["epsilon"] == pytest.approx(readings[0])
    assert any(k.endswith("momentum_buffer") for k in tensors)

    resumed = _run(script, tmp_path / "interrupted", "resume")
    assert resumed.returncode == 0, resumed.stderr
    straight = _run(script, tmp_path / "straight", "full")
    assert straight.returncode == 0, straight.stderr
    a, b = json.loads(resumed.stdout), json.loads(straight.stdout)
    assert a["steps"] == b["steps"] == 20
    assert a["epsilon"] == pytest.approx(b["epsilon"], rel=1e-12)
    pa = load_file(Path(a["parameters_path"]))
    pb = load_file(Path(b["parameters_path"]))
    assert pa.keys() == pb.keys()
    for key in pa:
        torch.testing.assert_close(pa[key], pb[key], rtol=0, atol=1e-6)


def test_resume_without_checkpoint_is_refused(tmp_path: Path) -> None:
    """Asking to resume where nothing was saved is a clear error, not a fresh start."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    done = _run(script, tmp_path / "empty", "resume")
    assert done.returncode != 0
    assert "no checkpoint to resume from" in done.stderr
