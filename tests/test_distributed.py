"""Data parallel linearization: 2 gloo processes under torchrun give one process's losses at the same
global batch, resume a run, and write the run directory once; with --fsdp too, the teacher sharded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import lizardlm
from lizardlm.errors import LizardError
from lizardlm.train import RunDir, TrainSettings, linearize
from lizardlm.train.distributed import batches_behind, micro_batch_size, shard
from lizardlm.train.loop import MetricsLog

linearize_module = sys.modules["lizardlm.train.linearize"]  # the package exports the function of that name

REPO = Path(__file__).resolve().parent.parent
LIZARD = {"window_size": 8, "feature_dim": 8, "num_meta_tokens": 2}
STEPS = {"stage1": 6, "stage2": 4}
# 9 validation rows: 5 and 4 per rank, so rank 1 runs one validation batch fewer (kept in step under --fsdp)
ARGS = dict(seq_len=32, batch_size=4, val_tokens=32 * 9, stage1_lr=2e-2, stage2_lr=3e-3, checkpoint_every=2, device="cpu")


def test_global_batch_splits_evenly_over_processes():
    assert micro_batch_size(8, 2) == 4
    with pytest.raises(LizardError, match="batch size 6 is not divisible by the 4 processes"):
        micro_batch_size(6, 4)
    rows = torch.arange(8)
    parts = [shard(rows, r, 2) for r in range(2)]
    assert [p.tolist() for p in parts] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert batches_behind(9, 4) == 0  # one process: never behind


def test_fsdp_needs_a_multi_process_launch(tmp_path, teacher_dir, data_file):
    settings = TrainSettings(teacher=str(teacher_dir), data=str(data_file), lizard=LIZARD, fsdp=True, **ARGS)
    with pytest.raises(LizardError, match="--fsdp shards the model over the processes of a launch"):
        linearize(settings, tmp_path / "run")
    assert not (tmp_path / "run").exists()


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


# `python -m lizardlm` in each process, stage 1's loss patched by _crash_at first
CRASH_DRIVER = """import sys
sys.path.insert(0, {tests!r})
import pytest
import test_distributed
test_distributed._crash_at(pytest.MonkeyPatch(), {step})
from lizardlm.cli import main
sys.exit(main())
"""


def _torchrun(out: Path, teacher_dir: Path, data_file: Path, *flags: str, crash_at: int | None = None,
              timeout: float = 240) -> None:
    """``torchrun --standalone --nproc_per_node 2 -m lizardlm linearize ... [flags]``, killed on timeout; with
    ``crash_at``, every process's stage 1 raises at that step, and the launch must fail so."""
    entry = ["-m", "lizardlm"]
    if crash_at is not None:
        driver = out.parent / "crash_driver.py"
        driver.write_text(CRASH_DRIVER.format(tests=str(Path(__file__).parent), step=crash_at))
        entry = [str(driver)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *entry,
        "linearize", "--teacher", str(teacher_dir), "--data", str(data_file), "--out", str(out),
        "--seq-len", "32", "--batch-size", "4", "--stage1-tokens", str(32 * 4 * STEPS["stage1"]),
        "--stage2-tokens", str(32 * 4 * STEPS["stage2"]), "--val-tokens", str(ARGS["val_tokens"]),
        "--stage1-lr", str(ARGS["stage1_lr"]), "--stage2-lr", str(ARGS["stage2_lr"]), "--checkpoint-every", "2",
        "--device", "cpu", "--window-size", "8", "--feature-dim", "8", "--num-meta-tokens", "2", *flags,
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
    if crash_at is None:
        assert proc.returncode == 0, output[-3000:]
    else:
        assert proc.returncode != 0 and "_Crash" in output, output[-3000:]


def _settings(teacher_dir: Path, data_file: Path) -> TrainSettings:
    return TrainSettings(
        teacher=str(teacher_dir), data=str(data_file), lizard=LIZARD,
        stage1_tokens=32 * 4 * STEPS["stage1"], stage2_tokens=32 * 4 * STEPS["stage2"], **ARGS,
    )


def _assert_same_run(out: Path, ref: Path, summary: dict, expected: dict) -> None:
    """``out`` logged the same per-step losses as ``ref`` (each step once) and its summary the same results."""
    for key in ("teacher_val_loss", "stage1_val_loss", "student_val_loss"):
        assert summary[key] == pytest.approx(expected[key], rel=1e-5), key
    assert summary["stage1_val_mse_per_layer"] == pytest.approx(expected["stage1_val_mse_per_layer"], rel=1e-4)
    for stage, steps in STEPS.items():
        ours, theirs = MetricsLog(RunDir(out)).read(stage), MetricsLog(RunDir(ref)).read(stage)
        assert [e["step"] for e in ours] == list(range(1, steps + 1))  # each step logged once, by rank 0
        assert [e["loss"] for e in ours] == pytest.approx([e["loss"] for e in theirs], rel=1e-5), stage


def test_two_processes_resume_a_run_with_the_losses_of_one(tmp_path, teacher_dir, data_file, monkeypatch):
    settings = _settings(teacher_dir, data_file)
    ref = linearize(settings, tmp_path / "ref")
    out = tmp_path / "dp"
    _crash_at(monkeypatch, 4)
    with pytest.raises(_Crash):  # one process, stopped in stage 1 after its step-2 checkpoint
        linearize(settings, out)
    monkeypatch.undo()

    _torchrun(out, teacher_dir, data_file, "--resume")  # 2 processes, 2 rows each: stage-1 steps 3-6, then stage 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["params_held"] == 1.0
    _assert_same_run(out, tmp_path / "ref", summary, ref)
    assert (out / "stage2_loss.png").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def test_fsdp_shards_the_teacher_and_matches_one_process(tmp_path, teacher_dir, data_file):
    """2 processes with --fsdp, stopped in stage 1 and resumed (stage 2 with activation checkpointing,
    --merge): each process held about half the weights, the losses are one process's, and the run
    directory holds the same files, which load to the same model."""
    ref = linearize(_settings(teacher_dir, data_file), tmp_path / "ref", merge=True)
    out = tmp_path / "fsdp"
    _torchrun(out, teacher_dir, data_file, "--fsdp", crash_at=4)  # rank 0 keeps the step-2 checkpoint
    assert RunDir(out).checkpoint.is_file() and not (out / "summary.json").exists()

    _torchrun(out, teacher_dir, data_file, "--fsdp", "--gradient-checkpointing", "--merge", "--resume")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and ref["params_held"] == 1.0
    assert 0.5 <= summary["params_held"] < 0.55  # half the teacher, plus the whole Lizard and LoRA parameters
    _assert_same_run(out, tmp_path / "ref", summary, ref)
    assert json.loads((out / "run.json").read_text())["settings"]["fsdp"] is True
    for name in ("lizard.safetensors", "adapter/adapter_model.safetensors", "merged/model.safetensors"):
        assert _shapes(out / name) == _shapes(tmp_path / "ref" / name), name
    ids = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for path in ("", "merged"):
            ours, theirs = lizardlm.load(out / path), lizardlm.load(tmp_path / "ref" / path)
            assert torch.allclose(ours(ids, use_cache=False).logits, theirs(ids, use_cache=False).logits, atol=1e-5)


def _stop_signal_worker(rank: int, port: int, asked: list[int], results) -> None:
    import torch.distributed as dist

    from lizardlm.train.loop import _stop_signal

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results.put((rank, _stop_signal(asked)))
    finally:
        dist.destroy_process_group()


def test_a_stop_asked_of_one_rank_stops_every_rank_at_the_same_step():
    """Only rank 0 got SIGTERM: both ranks must answer from the same all-reduce (rank 0 taking a
    shortcut would leave rank 1 waiting in it forever)."""
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_stop_signal_worker, args=(r, port, [int(signal.SIGTERM)] if r == 0 else [], results))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung in the stop all-reduce"
    assert sorted(results.get(timeout=5) for _ in procs) == [(0, signal.SIGTERM), (1, signal.SIGTERM)]
