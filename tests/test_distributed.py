"""Data parallel linearization: 2 gloo processes under torchrun give one process's losses at the same
global batch, resume a run, and write the run directory once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lizardlm.errors import LizardError
from lizardlm.train import RunDir, TrainSettings, linearize
from lizardlm.train.distributed import micro_batch_size, shard
from lizardlm.train.loop import MetricsLog

linearize_module = sys.modules["lizardlm.train.linearize"]  # the package exports the function of that name

REPO = Path(__file__).resolve().parent.parent
LIZARD = {"window_size": 8, "feature_dim": 8, "num_meta_tokens": 2}
STEPS = {"stage1": 6, "stage2": 4}
ARGS = dict(seq_len=32, batch_size=4, val_tokens=32 * 8, stage1_lr=2e-2, stage2_lr=3e-3, checkpoint_every=2, device="cpu")


def test_global_batch_splits_evenly_over_processes():
    assert micro_batch_size(8, 2) == 4
    with pytest.raises(LizardError, match="batch size 6 is not divisible by the 4 processes"):
        micro_batch_size(6, 4)
    rows = torch.arange(8)
    parts = [shard(rows, r, 2) for r in range(2)]
    assert [p.tolist() for p in parts] == [[0, 2, 4, 6], [1, 3, 5, 7]]


class _Crash(RuntimeError):
    pass


def _crash_at(monkeypatch, step: int) -> None:
    """Make stage 1's loss raise at ``step`` (an interrupted run, its last checkpoint kept)."""
    make = linearize_module._transfer_loss_fn

    def patched(model):
        fn, calls = make(model), []

        def loss_fn(batch):
            calls.append(1)
            if len(calls) == step:
                raise _Crash
            return fn(batch)

        return loss_fn

    monkeypatch.setattr(linearize_module, "_transfer_loss_fn", patched)


def _torchrun(out: Path, teacher_dir: Path, data_file: Path, timeout: float = 240) -> None:
    """``torchrun --standalone --nproc_per_node 2 -m lizardlm linearize ... --resume``, killed on timeout."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "lizardlm", "linearize", "--teacher", str(teacher_dir), "--data", str(data_file), "--out", str(out),
        "--seq-len", "32", "--batch-size", "4", "--stage1-tokens", str(32 * 4 * STEPS["stage1"]),
        "--stage2-tokens", str(32 * 4 * STEPS["stage2"]), "--val-tokens", str(ARGS["val_tokens"]),
        "--stage1-lr", str(ARGS["stage1_lr"]), "--stage2-lr", str(ARGS["stage2_lr"]), "--checkpoint-every", "2",
        "--device", "cpu", "--window-size", "8", "--feature-dim", "8", "--num-meta-tokens", "2", "--resume",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]


def test_two_processes_resume_a_run_with_the_losses_of_one(tmp_path, teacher_dir, data_file, monkeypatch):
    settings = TrainSettings(
        teacher=str(teacher_dir), data=str(data_file), lizard=LIZARD,
        stage1_tokens=32 * 4 * STEPS["stage1"], stage2_tokens=32 * 4 * STEPS["stage2"], **ARGS,
    )
    ref = linearize(settings, tmp_path / "ref")
    out = tmp_path / "dp"
    _crash_at(monkeypatch, 4)
    with pytest.raises(_Crash):  # one process, stopped in stage 1 after its step-2 checkpoint
        linearize(settings, out)
    monkeypatch.undo()

    _torchrun(out, teacher_dir, data_file)  # 2 processes, 2 rows each: stage-1 steps 3-6, then stage 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    for key in ("teacher_val_loss", "stage1_val_loss", "student_val_loss"):
        assert summary[key] == pytest.approx(ref[key], rel=1e-5), key
    assert summary["stage1_val_mse_per_layer"] == pytest.approx(ref["stage1_val_mse_per_layer"], rel=1e-4)
    for stage, steps in STEPS.items():
        ours, theirs = MetricsLog(RunDir(out)).read(stage), MetricsLog(RunDir(tmp_path / "ref")).read(stage)
        assert [e["step"] for e in ours] == list(range(1, steps + 1))  # each step logged once, by rank 0
        assert [e["loss"] for e in ours] == pytest.approx([e["loss"] for e in theirs], rel=1e-5), stage
    assert (out / "stage2_loss.png").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()
