"""The two-stage pipeline on a tiny random Llama: learning, run directory, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import lizardlm
from lizardlm.cli import main as cli_main
from lizardlm.errors import CheckpointError, LizardError, TrainingError, TrainingStopped
from lizardlm.train import RunDir, TrainSettings, linearize, load_run
from lizardlm.train.checkpoint import load_checked
from lizardlm.train.loop import MetricsLog, Stage, run_stage

LIZARD = {"window_size": 8, "feature_dim": 8, "num_meta_tokens": 2, "chunk_size": 8}


def settings(teacher_dir, data_file, **kw) -> TrainSettings:
    base = dict(
        teacher=str(teacher_dir), data=str(data_file), seq_len=32, batch_size=4, stage1_tokens=32 * 4 * 30,
        stage2_tokens=32 * 4 * 20, val_tokens=32 * 8, stage1_lr=2e-2, stage2_lr=3e-3, checkpoint_every=5,
        device="cpu", lizard=LIZARD,
    )
    return TrainSettings(**{**base, **kw})


def test_both_stages_learn_and_the_run_loads(tmp_path, teacher_dir, data_file, capsys):
    out = tmp_path / "run"
    summary = linearize(settings(teacher_dir, data_file), out, merge=True)
    phases = summary["phase_seconds_this_call"]  # where the call's time went, each phase also said on stderr
    assert list(phases) == ["teacher loaded", "data built", "converted", "teacher validated", "converted model validated",
                            "stage 1 trained", "stage 1 validated", "stage 2 trained", "stage 2 validated"]
    assert all(s >= 0 for s in phases.values()) and sum(phases.values()) <= summary["wall_seconds_this_call"]
    assert "lizardlm: stage 1 trained: " in capsys.readouterr().err
    assert len(MetricsLog(RunDir(out)).read("stage1")) == 30
    before, after = summary["stage1_val_mse_init_per_layer"], summary["stage1_val_mse_per_layer"]
    assert sum(after) < 0.9 * sum(before)  # attention transfer brings each layer closer to its teacher
    assert summary["student_val_loss"] < summary["stage1_val_loss"]  # LoRA recovers more
    assert len(summary["stage1_val_mse_per_layer"]) == 2
    for name in ("run.json", "lizard.safetensors", "adapter/adapter_model.safetensors", "metrics.jsonl",
                 "stage1_loss.png", "stage2_loss.png", "summary.json", "merged/config.json"):
        assert (out / name).exists(), name
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]  # no pickle

    model, tokenizer = load_run(out)
    ids = torch.randint(0, len(tokenizer), (1, 40))
    merged = lizardlm.load(out / "merged")
    with torch.no_grad():
        a, b = model(ids, use_cache=False).logits, merged(ids, use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert lizardlm.load(out).lizard_config.window_size == 8


def _cli(out, teacher_dir, data_file, *extra):
    return [
        sys.executable, "-m", "lizardlm", "linearize", "--teacher", str(teacher_dir), "--data", str(data_file),
        "--out", str(out), "--seq-len", "32", "--batch-size", "4", "--stage1-tokens", str(32 * 4 * 40),
        "--stage2-tokens", str(32 * 4 * 30), "--val-tokens", "256", "--checkpoint-every", "4", "--device", "cpu",
        "--window-size", "8", "--feature-dim", "8", "--num-meta-tokens", "2", *extra,
    ]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, teacher_dir, data_file):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cli(ref_out, teacher_dir, data_file), check=True, env=env, capture_output=True)
    ref = json.loads((ref_out / "summary.json").read_text())

    proc = subprocess.Popen(_cli(out, teacher_dir, data_file), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = RunDir(out).checkpoint
    deadline = time.time() + 300
    while time.time() < deadline:  # kill in the middle of stage 2, after a checkpoint
        if ckpt.is_file():
            meta = load_checked(ckpt)[1]
            if meta["stage"] == "stage2" and meta["step"] >= 8:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checked(ckpt)[1]
    assert killed_at["stage"] == "stage2" and not (out / "summary.json").exists()
    logged = [e["step"] for e in MetricsLog(RunDir(out)).read("stage2")]
    # at most the steps since the last checkpoint are lost: a kill between logging step 12 and writing
    # its checkpoint loses the four steps 9-12 (--checkpoint-every 4)
    assert max(logged) - killed_at["step"] <= 4

    subprocess.run(_cli(out, teacher_dir, data_file, "--resume"), check=True, env=env, capture_output=True)
    resumed = json.loads((out / "summary.json").read_text())
    for key in ("teacher_val_loss", "stage1_val_loss", "student_val_loss"):
        assert resumed[key] == pytest.approx(ref[key], rel=0.01), key
    assert [e["step"] for e in MetricsLog(RunDir(out)).read("stage2")] == list(range(1, 31))


def test_sigterm_saves_the_step_reached_and_resume_matches(tmp_path, teacher_dir, data_file):
    """SIGTERM (a scheduler's preemption, ``timeout``) stops after the current step with a checkpoint
    of that step (no work lost), exits 143 with a one-line hint, and --resume finishes like a run
    that was never stopped."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    ref_out, out = tmp_path / "ref", tmp_path / "stopped"
    longer = ("--stage2-tokens", str(32 * 4 * 120))  # 120 steps: the signal lands inside stage 2 even on a slow host
    subprocess.run(_cli(ref_out, teacher_dir, data_file, *longer), check=True, env=env, capture_output=True)
    ref = json.loads((ref_out / "summary.json").read_text())

    proc = subprocess.Popen(_cli(out, teacher_dir, data_file, *longer), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    metrics = RunDir(out).path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # stop in the middle of stage 2
        if metrics.is_file() and any('"stage2"' in line for line in metrics.read_text().splitlines()[-1:]):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM after step" in err and "--resume" in err and len(err.strip().splitlines()[-1]) > 40
    stopped = load_checked(RunDir(out).checkpoint)[1]
    logged = [e["step"] for e in MetricsLog(RunDir(out)).read("stage2")]
    assert stopped["stage"] == "stage2" and stopped["step"] == max(logged) < 120  # the step reached, not the last multiple of 4
    # the checkpoint keeps what its steps took: at least the logged steps' time (step time = tokens / rate)
    steps_time = sum(32 * 4 / e["tokens_per_s"] for e in MetricsLog(RunDir(out)).read("stage2"))
    assert stopped["seconds"] == pytest.approx(steps_time, rel=0.05)

    t0 = time.perf_counter()
    subprocess.run(_cli(out, teacher_dir, data_file, *longer, "--resume"), check=True, env=env, capture_output=True)
    resume_call = time.perf_counter() - t0
    resumed = json.loads((out / "summary.json").read_text())
    for key in ("teacher_val_loss", "stage1_val_loss", "student_val_loss"):
        assert resumed[key] == pytest.approx(ref[key], rel=0.01), key
    # stage 2's seconds count the stopped call's steps too, not only the resumed call's
    assert stopped["seconds"] < resumed["stage2_seconds"] < stopped["seconds"] + resume_call
    assert [e["step"] for e in MetricsLog(RunDir(out)).read("stage2")] == list(range(1, 121))


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    weight = torch.nn.Parameter(torch.ones(3))
    calls = []

    def loss_fn(batch):
        calls.append(1)
        loss = (weight * batch.float().mean()).sum()
        return (loss * float("nan") if len(calls) == 7 else loss), {}

    stage = Stage("stage1", steps=10, lr=0.1, params={"w": weight}, loss_fn=loss_fn)
    kw = dict(batch_size=2, seed=0, warmup_fraction=0.0, weight_decay=0.0, checkpoint_every=5, run=run,
              accelerator=__import__("accelerate").Accelerator(cpu=True), log=MetricsLog(run))
    with pytest.raises(TrainingError, match=r"nan at step 7.*step 5"):
        run_stage(stage, torch.arange(40).view(10, 4), **kw)
    tensors, meta = load_checked(run.checkpoint)
    assert meta["step"] == 5 and torch.isfinite(tensors["param.w"]).all()


def test_ctrl_c_stops_after_the_step_and_a_second_one_at_once(tmp_path):
    run = RunDir(tmp_path)
    weight = torch.nn.Parameter(torch.ones(3))
    presses = {3: 1, 13: 2}  # step -> Ctrl-C count during it (the second run: twice)

    def stage_with(at: dict[int, int]) -> Stage:
        calls = []

        def loss_fn(batch):
            calls.append(1)
            for _ in range(at.get(len(calls), 0)):
                signal.raise_signal(signal.SIGINT)
            return (weight * batch.float().mean()).sum(), {}

        return Stage("stage1", steps=20, lr=0.1, params={"w": weight}, loss_fn=loss_fn)

    kw = dict(batch_size=2, seed=0, warmup_fraction=0.0, weight_decay=0.0, checkpoint_every=5, run=run,
              accelerator=__import__("accelerate").Accelerator(cpu=True), log=MetricsLog(run))
    rows = torch.arange(80).view(20, 4)
    with pytest.raises(TrainingStopped, match="SIGINT after step 3 of 20") as stopped:
        run_stage(stage_with({3: presses[3]}), rows, **kw)
    assert stopped.value.signum == signal.SIGINT and load_checked(run.checkpoint)[1]["step"] == 3
    with pytest.raises(KeyboardInterrupt):  # resumed at step 3; the 10th call is step 13, pressed twice
        run_stage(stage_with({10: presses[13]}), rows, **kw)
    assert load_checked(run.checkpoint)[1]["step"] == 10  # the last regular checkpoint
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def _fails(argv: list[str], capsys, match: str) -> None:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("lizardlm: error:") and match in err[-1], err


def test_bad_inputs_fail_with_one_line_and_leave_nothing(tmp_path, teacher_dir, data_file, capsys):
    out = tmp_path / "out"
    base = ["linearize", "--out", str(out), "--seq-len", "32", "--window-size", "8", "--device", "cpu"]
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    gpt2_dir = tmp_path / "gpt2"
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=600)).save_pretrained(gpt2_dir)
    import shutil

    for f in teacher_dir.glob("tokenizer*"):
        shutil.copy(f, gpt2_dir)
    cases = [
        (["--teacher", str(tmp_path / "nope"), "--data", str(data_file)], "no such file"),
        (["--teacher", str(gpt2_dir), "--data", str(data_file)], "GPT2LMHeadModel"),
        (["--teacher", str(teacher_dir), "--data", str(tmp_path / "missing.txt")], "missing.txt"),
        (["--teacher", str(teacher_dir), "--data", str(empty)], "no"),
        (["--teacher", str(teacher_dir), "--data", str(latin1)], "UTF-8"),
        (["--teacher", str(teacher_dir), "--data", str(data_file), "--seq-len", "4"], "shorter than the window"),
    ]
    for extra, match in cases:
        _fails(base + extra, capsys, match)
        assert not out.exists(), extra
    for flag, value in (("--seq-len", "many"), ("--stage1-lr", "-1"), ("--batch-size", "0")):
        with pytest.raises(SystemExit) as exit_info:  # argparse rejects bad numbers with one error line
            cli_main(base + ["--teacher", str(teacher_dir), flag, value])
        assert exit_info.value.code == 2
        assert flag in capsys.readouterr().err.strip().splitlines()[-1]
        assert not out.exists()


def test_out_dir_with_another_run_and_mismatched_resume(tmp_path, teacher_dir, data_file, capsys):
    out = tmp_path / "run"
    small = settings(teacher_dir, data_file, stage1_tokens=32 * 4 * 2, stage2_tokens=32 * 4 * 2)
    linearize(small, out)
    with pytest.raises(CheckpointError, match="already holds a run"):
        linearize(small, out)
    with pytest.raises(CheckpointError, match=r"settings differ.*lizard.window_size: 8 -> 16"):
        linearize(settings(teacher_dir, data_file, stage1_tokens=32 * 4 * 2, stage2_tokens=32 * 4 * 2,
                           lizard={**LIZARD, "window_size": 16}), out, resume=True)
    (out / "lizard.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):
        linearize(small, other)
    with pytest.raises(LizardError):
        lizardlm.load(tmp_path / "teacher")  # a teacher directory is not a Lizard model
