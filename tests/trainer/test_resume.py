"""C-T04: durable accounting — checkpoint, kill the process, resume in a new one.

The job's randomness key lives in its folder (0600), so a resumed job continues the very
batches and noise of the interrupted one; another job, with its own key, trains differently.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from privtrain.trainer.accounting import epsilon_for_history, restore_accountant
from privtrain.trainer.checkpoints import latest_checkpoint, load_checkpoint

SCRIPT = textwrap.dedent('''
    import json, os, signal, sys
    from pathlib import Path
    import numpy as np, pandas as pd
    from privtrain.trainer.dp_sgd import CheckpointCadence
    from privtrain.trainer.engine import TableSplit, train
    from privtrain.trainer.plan import plan_job
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
        def on_epoch(self, e, released, exact, eps): pass

    steps = Steps()
    def kill_after_epoch_3():
        if steps.step >= 12:  # 3 epochs x 4 steps, checkpoint of epoch 3 written
            os.kill(os.getpid(), signal.SIGKILL)
        return False

    def kill_after_step_10():
        if steps.step >= 10:  # inside epoch 3; the within-epoch checkpoint of step 9 is written
            os.kill(os.getpid(), signal.SIGKILL)
        return False

    stop = {"kill": kill_after_epoch_3, "kill-mid": kill_after_step_10}.get(mode, lambda: False)
    split = TableSplit(column="split", train="train", test="test")
    result = train(spec, table, domains, split, out, steps, plan=plan_job(spec, 20, 20),
                   should_stop=stop, resume=(mode == "resume"),
                   checkpoint_every=CheckpointCadence(every_s=0, every_steps=3))
    print(json.dumps(result.to_dict()))
''')


def _run(script: Path, out: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), str(out), mode],
                          capture_output=True, text=True, timeout=300)


def test_resume_after_kill_reproduces_epsilon_and_training(tmp_path: Path) -> None:
    """Linear(4,2), 20x4 rows, batch 5, σ=1, C=1: killed after epoch 3, resumed in a new process.

    ε read ten times from the checkpoint is the same each time and equals the accountant's
    (12 steps and the 3 noisy accuracy releases); momentum buffers and the randomness' stream
    counters (not its key) are in the checkpoint; the resumed run ends with the ε, the
    released accuracy and the bit-identical parameters of an uninterrupted run with the same
    key, while an uninterrupted run with a fresh key (same spec and seed) ends elsewhere.
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
    assert state["accountant"]["history"] == [[1.0, 0.25, 4], [20.0, 1.0, 1]] * 3
    assert readings[0] == pytest.approx(
        epsilon_for_history("rdp", [(1.0, 0.25, 12), (20.0, 1.0, 3)], 1e-5))
    assert state["epsilon"] == pytest.approx(readings[0])
    assert any(k.endswith("momentum_buffer") for k in tensors)
    assert state["randomness"]["SAMPLING"] == state["randomness"]["NOISE"] == 12
    key_file = tmp_path / "interrupted" / "dp-randomness.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert json.loads(key_file.read_text())["key"] not in checkpoint.with_suffix(".json").read_text()

    resumed = _run(script, tmp_path / "interrupted", "resume")
    assert resumed.returncode == 0, resumed.stderr
    (tmp_path / "straight").mkdir()
    shutil.copy(key_file, tmp_path / "straight" / key_file.name)
    straight = _run(script, tmp_path / "straight", "full")
    assert straight.returncode == 0, straight.stderr
    fresh = _run(script, tmp_path / "fresh", "full")
    assert fresh.returncode == 0, fresh.stderr
    a, b, c = (json.loads(r.stdout) for r in (resumed, straight, fresh))
    assert a["steps"] == b["steps"] == c["steps"] == 20
    assert a["epsilon"] == pytest.approx(b["epsilon"], rel=1e-12)
    assert a["test_accuracy"] == b["test_accuracy"]
    pa, pb, pc = (load_file(Path(r["parameters_path"])) for r in (a, b, c))
    assert pa.keys() == pb.keys() == pc.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key
    assert a["parameters_sha256"] == b["parameters_sha256"] != c["parameters_sha256"]
    assert all(not torch.equal(pa[key], pc[key]) for key in pa)


def test_resume_inside_an_epoch_continues_the_same_steps(tmp_path: Path) -> None:
    """Issue 12: checkpoints every 3 steps inside epochs (4 steps each); killed at step 10, the
    job resumes from the within-epoch checkpoint of step 9 (not the end of epoch 2), keeps only
    the newest within-epoch pair, and ends with the parameters and ε of an uninterrupted run."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    killed = _run(script, tmp_path / "interrupted", "kill-mid")
    assert killed.returncode == -9, killed.stderr
    folder = tmp_path / "interrupted" / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.json")) == [
        "epoch-0001.json", "epoch-0002.json", "step-00000009.json"]
    checkpoint = latest_checkpoint(folder)
    assert checkpoint is not None and checkpoint.name == "step-00000009.safetensors"
    _, state = load_checkpoint(checkpoint)
    assert (state["epoch"], state["step"]) == (2, 9)
    assert state["randomness"]["SAMPLING"] == state["randomness"]["NOISE"] == 9

    resumed = _run(script, tmp_path / "interrupted", "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not list(folder.glob("step-*"))  # superseded by the later epoch checkpoints
    (tmp_path / "straight").mkdir()
    shutil.copy(tmp_path / "interrupted" / "dp-randomness.json", tmp_path / "straight")
    straight = _run(script, tmp_path / "straight", "full")
    assert straight.returncode == 0, straight.stderr
    a, b = json.loads(resumed.stdout), json.loads(straight.stdout)
    assert a["steps"] == b["steps"] == 20
    assert a["epsilon"] == pytest.approx(b["epsilon"], rel=1e-12)
    assert a["parameters_sha256"] == b["parameters_sha256"]


def test_resume_without_checkpoint_is_refused(tmp_path: Path) -> None:
    """Asking to resume where nothing was saved is a clear error, not a fresh start."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    done = _run(script, tmp_path / "empty", "resume")
    assert done.returncode != 0
    assert "no checkpoint to resume from" in done.stderr
