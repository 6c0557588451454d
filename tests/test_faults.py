"""Faults of issue 20: each bad input or broken run directory ends in one clear error line (or the right
warning/behaviour), and leaves the run directory intact and resumable."""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import math
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from lizardlm.cli import main as cli_main
from lizardlm.errors import CheckpointError, LizardError, TrainingError
from lizardlm.train import RunDir, TrainSettings, linearize, load_run
from lizardlm.train import checkpoint as checkpoint_module
from lizardlm.train.checkpoint import atomic_save, load_checked
from lizardlm.train.loop import MetricsLog, Stage, run_stage

linearize_module = importlib.import_module("lizardlm.train.linearize")  # the package exports the function
FIXTURES = Path(__file__).parent / "fixtures"
LIZARD = {"window_size": 8, "feature_dim": 8, "num_meta_tokens": 2, "chunk_size": 8}
BATCH = 32 * 4  # tokens of one batch (seq-len 32 x batch-size 4)


def _tiny_llama(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer) -> Path:
    """A module folder with ``teacher/``, ``teacher2/`` (other weights), ``train.txt`` and a finished ``run/``."""
    root = tmp_path_factory.mktemp("faults")
    for name, seed in (("teacher", 0), ("teacher2", 1)):
        _tiny_llama(tiny_tokenizer, seed).save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
    shutil.copy(FIXTURES / "wikitext_slice.txt", root / "train.txt")
    linearize(_settings(root), root / "run")
    return root


def _settings(root: Path, **kw) -> TrainSettings:
    values = dict(
        teacher=str(root / "teacher"), data=str(root / "train.txt"), seq_len=32, batch_size=4, stage1_tokens=2 * BATCH,
        stage2_tokens=2 * BATCH, val_tokens=64, stage1_lr=2e-2, stage2_lr=3e-3, checkpoint_every=1, device="cpu",
        lizard=LIZARD,
    )
    return TrainSettings(**{**values, **kw})


@pytest.fixture
def run_copy(base, tmp_path) -> Path:
    """A private copy of the finished run."""
    return Path(shutil.copytree(base / "run", tmp_path / "run"))


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "run.json").read_text())
    edit(manifest)
    (path / "run.json").write_text(json.dumps(manifest))


def _fails(argv: list[str], capsys, match: str) -> None:
    """The CLI exits 2 with one error line containing ``match`` (LizardError, or argparse's usage error)."""
    try:
        code = cli_main(argv)
    except SystemExit as exit_info:  # argparse rejects a bad value with one error line
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "error:" in err[-1] and match in err[-1], err


def _linearize_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["linearize", "--teacher", str(root / "teacher"), "--data", str(root / "train.txt"), "--out", str(out),
            "--seq-len", "32", "--batch-size", "4", "--window-size", "8", "--feature-dim", "8", "--device", "cpu", *extra]


def _tiny_stage(run: RunDir, steps: int = 4, shape: tuple[int, ...] = (3,), lr: float = 0.1, nan_at: int = 0):
    weight = torch.nn.Parameter(torch.ones(shape))
    calls = []

    def loss_fn(batch):
        calls.append(1)
        loss = (weight * batch.float().mean()).sum()
        return (loss * float("nan") if len(calls) == nan_at else loss), {}

    stage = Stage("stage1", steps=steps, lr=lr, params={"w": weight}, loss_fn=loss_fn)
    kw = dict(batch_size=2, seed=0, warmup_fraction=0.0, weight_decay=0.0, checkpoint_every=2, run=run,
              accelerator=Accelerator(cpu=True), log=MetricsLog(run))
    return stage, kw


ROWS = torch.arange(40).view(10, 4)


# Faults that ended in a traceback


def test_out_that_cannot_be_created_fails_before_loading(base, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lizardlm.teachers.load_teacher", lambda *a, **k: pytest.fail("teacher loaded"))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    _fails(_linearize_argv(base, blocker / "run"), capsys, "cannot create output directory")
    _fails(_linearize_argv(base, blocker), capsys, "is a file")


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    stage, kw = _tiny_stage(run, steps=4)
    real = checkpoint_module.save_file
    calls = []

    def full_disk(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*--resume"):
        run_stage(stage, ROWS, **kw)
    assert load_checked(run.checkpoint)[1]["step"] == 2
    assert [p.name for p in run.checkpoint.parent.iterdir()] == ["last.safetensors"]  # no temp file left
    stage, kw = _tiny_stage(run, steps=4)
    run_stage(stage, ROWS, **kw)  # resumable
    assert load_checked(run.checkpoint)[1]["step"] == 4


def test_device_cuda_without_cuda(base, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails(_linearize_argv(base, tmp_path / "out", "--device", "cuda"), capsys, "no CUDA device")
    assert not (tmp_path / "out").exists()
    _fails(["generate", "--model", str(base / "teacher"), "--prompt", "hi", "--device", "cuda"], capsys, "no CUDA device")


def test_unknown_setting_in_run_json(base, run_copy, capsys):
    _edit_manifest(run_copy, lambda m: m["settings"].update(bogus=1))
    with pytest.raises(CheckpointError, match=r"unknown setting\(s\) \['bogus'\]"):
        load_run(run_copy)
    _fails(_linearize_argv(base, run_copy, "--resume"), capsys, "bogus")


def test_torn_last_metrics_line_is_skipped_and_dropped(tmp_path):
    log = MetricsLog(RunDir(tmp_path))
    tmp_path.joinpath("metrics.jsonl").write_text(
        json.dumps({"stage": "stage1", "step": 1, "loss": 2.0}) + "\n" + '{"stage": "stage1", "st'
    )
    assert [e["step"] for e in log.read("stage1")] == [1]
    log.truncate("stage1", 1)
    log.write({"stage": "stage1", "step": 2, "loss": 1.0})
    assert [e["step"] for e in log.read("stage1")] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # the rewrite left no temp file


def test_checkpoint_with_other_shapes_is_refused(tmp_path):
    run = RunDir(tmp_path)
    stage, kw = _tiny_stage(run, steps=2)
    run_stage(stage, ROWS, **kw)
    stage, kw = _tiny_stage(run, steps=4, shape=(4,))
    with pytest.raises(CheckpointError, match=r"w has shape \(3,\), expected \(4,\)"):
        run_stage(stage, ROWS, **kw)


def test_corrupt_or_rank_mismatched_adapter(run_copy):
    config_path = run_copy / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "r": 4}))
    with pytest.raises(CheckpointError, match="adapter_model.safetensors changed since this run wrote it"):
        load_run(run_copy)
    _edit_manifest(run_copy, lambda m: m["fingerprints"].pop("adapter"))  # a run without fingerprints
    with pytest.raises(CheckpointError, match="adapter .* is corrupt or does not fit this model"):
        load_run(run_copy)
    config_path.write_text(json.dumps(config))
    (run_copy / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="adapter .* is corrupt or does not fit this model"):
        load_run(run_copy)


def test_empty_prompt_with_raw(base, capsys):
    _fails(["generate", "--model", str(base / "teacher"), "--prompt", "", "--raw"], capsys, "prompt is empty")


def test_softmax_layers_covering_every_layer(base, tmp_path, capsys):
    _fails(_linearize_argv(base, tmp_path / "out", "--softmax-layers", "0,1"), capsys, "nothing to linearize")
    assert not (tmp_path / "out").exists()


def test_bit_flipped_checkpoint_fails_its_checksum(tmp_path):
    path = tmp_path / "last.safetensors"
    atomic_save({"rng.cpu": torch.get_rng_state(), "w": torch.ones(8)}, path, {"step": 3})
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x10  # inside the tensor bytes (the RNG state: torch says "Invalid mt19937 state")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt \\(checksum mismatch\\)"):
        load_checked(path)


@pytest.mark.parametrize("cut", [1, 32, 300])
def test_truncated_checkpoint_is_one_clear_error(tmp_path, cut):
    """A checkpoint cut short (a copy interrupted, a full disk outside lizardlm): one CheckpointError."""
    path = tmp_path / "last.safetensors"
    atomic_save({"w": torch.ones(64), "v": torch.zeros(3)}, path, {"step": 3})
    assert load_checked(path)[1] == {"step": 3}
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checked(path)


def test_checkpoint_read_while_the_trainer_replaces_it(tmp_path):
    """A reader polling ``last.safetensors`` while training rewrites it (what a supervisor, or the
    SIGKILL test, does) always gets one whole version: the file is read once, never opened twice."""
    path = tmp_path / "last.safetensors"
    versions = [({"w": torch.full((5000,), float(i))}, {"step": 10**i}) for i in range(4)]  # meta lengths differ
    atomic_save(versions[0][0], path, versions[0][1])
    stop = threading.Event()

    def trainer():
        i = 0
        while not stop.is_set():
            i = (i + 1) % len(versions)
            atomic_save(versions[i][0], path, versions[i][1])

    thread = threading.Thread(target=trainer)
    thread.start()
    try:
        deadline = time.time() + 3
        reads = 0
        while time.time() < deadline:
            tensors, meta = load_checked(path)
            i = len(str(meta["step"])) - 1
            assert meta == versions[i][1] and torch.equal(tensors["w"], versions[i][0]["w"])
            reads += 1
    finally:
        stop.set()
        thread.join()
    assert reads > 10


def test_seed_beyond_64_bits(base, tmp_path, capsys):
    _fails(_linearize_argv(base, tmp_path / "out", "--seed", str(2**64)), capsys, "below 2**64")
    _fails(["generate", "--prompt", "x", "--seed", str(2**70)], capsys, "below 2**64")
    with pytest.raises(ValueError, match="seed"):
        TrainSettings(seed=2**64)
    assert TrainSettings(seed=2**64 - 1).seed == 2**64 - 1  # batch order still works at the top of the range
    from lizardlm.train.loop import batch_at

    assert batch_at(ROWS, 3, 2, 2**64 - 1).shape == (2, 4)


def test_cli_prints_a_multi_line_error_as_one_line(capsys, monkeypatch):
    def fail(args):
        raise LizardError("first\nsecond")

    parser = type("Parser", (), {"parse_args": lambda self, argv: argparse.Namespace(func=fail)})()
    monkeypatch.setattr("lizardlm.cli.app.build_parser", lambda: parser)
    assert cli_main([]) == 2
    assert capsys.readouterr().err == "lizardlm: error: first second\n"


# Silent wrong results or lost output


def test_a_locked_run_directory_is_refused(base, run_copy, tmp_path):
    holder = RunDir(run_copy)
    holder.lock()
    try:
        with pytest.raises(CheckpointError, match="another lizardlm process is writing"):
            linearize(_settings(base), run_copy, resume=True)
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        other = RunDir(fresh)
        other.lock()  # a run that has just started: only its lock file exists
        with pytest.raises(CheckpointError, match="another lizardlm process is writing"):
            linearize(_settings(base), fresh)
        other.unlock()
    finally:
        holder.unlock()
    assert json.loads((run_copy / "run.json").read_text())["completed"] == ["stage1", "stage2"]


def test_loading_an_unfinished_or_foreign_run(base, run_copy, caplog):
    manifest = json.loads((run_copy / "run.json").read_text())

    _edit_manifest(run_copy, lambda m: m.update(completed=[]))  # killed in stage 1
    with pytest.raises(CheckpointError, match="stage 1 has not finished"):
        load_run(run_copy)
    _edit_manifest(run_copy, lambda m: m.update(completed=["stage1"]))
    with caplog.at_level(logging.WARNING):
        load_run(run_copy)
    assert "stage 2 (LoRA) has not finished" in caplog.text

    (run_copy / "run.json").write_text(json.dumps(manifest))
    _edit_manifest(run_copy, lambda m: m["teacher"].update(path=str(base / "teacher2")))
    with pytest.raises(CheckpointError, match="teacher at .*teacher2 is not the one"):
        load_run(run_copy)

    (run_copy / "run.json").write_text(json.dumps(manifest))
    tensors = load_checked(run_copy / "lizard.safetensors")[0]
    atomic_save({k: v + 1 for k, v in tensors.items()}, run_copy / "lizard.safetensors")  # another run's weights
    with pytest.raises(CheckpointError, match="lizard.safetensors changed since this run wrote it"):
        load_run(run_copy)
    (run_copy / "lizard.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lizard.safetensors is missing"):
        load_run(run_copy)


def test_resume_after_the_data_changed_is_refused(base, run_copy, tmp_path):
    changed = tmp_path / "train.txt"
    changed.write_text((base / "train.txt").read_text().replace("the", "a"))
    with pytest.raises(CheckpointError, match="data .* changed since the run started"):
        linearize(_settings(base, data=str(changed)), run_copy, resume=True)


def test_nan_stop_advice_is_true(base, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = linearize_module._transfer_loss_fn

    def nan_at_step_3(model):
        loss_fn, calls = real(model), []

        def wrapped(batch):
            calls.append(1)
            loss, extra = loss_fn(batch)
            return (loss * float("nan") if len(calls) == 3 else loss), extra

        return wrapped

    monkeypatch.setattr(linearize_module, "_transfer_loss_fn", nan_at_step_3)
    fast = dict(stage1_tokens=4 * BATCH, stage2_tokens=0, checkpoint_every=2)
    with pytest.raises(TrainingError, match=r"at step 3.*checkpoint at step 2.*--resume and a lower --stage1-lr"):
        linearize(_settings(base, **fast), out)
    monkeypatch.setattr(linearize_module, "_transfer_loss_fn", real)
    linearize(_settings(base, **fast, stage1_lr=2e-3), out, resume=True)  # the advice works
    lrs = {e["step"]: e["lr"] for e in MetricsLog(RunDir(out)).read("stage1")}
    assert sorted(lrs) == [1, 2, 3, 4] and lrs[3] < 2e-3 < lrs[2]  # steps 3 and 4 ran at the new rate
    with pytest.raises(CheckpointError, match="stage1_lr"):  # without a NaN stop the rate is part of the run
        linearize(_settings(base, **fast, stage1_lr=1e-3), out, resume=True)


def test_nan_stop_without_a_checkpoint_says_so(tmp_path):
    stage, kw = _tiny_stage(RunDir(tmp_path), nan_at=1)
    with pytest.raises(TrainingError, match=r"step 0 \(no checkpoint yet\)"):
        run_stage(stage, ROWS, **kw)


def test_non_finite_learning_rate(base, tmp_path, capsys):
    _fails(_linearize_argv(base, tmp_path / "out", "--stage1-lr", "inf"), capsys, "finite")
    with pytest.raises(ValueError, match="finite"):
        TrainSettings(stage2_lr=math.inf)


def test_resume_compares_resolved_values_and_allows_non_semantic_changes(base, run_copy, monkeypatch):
    monkeypatch.chdir(base)
    summary = linearize(_settings(base, teacher="./teacher", data="train.txt", checkpoint_every=7), run_copy,
                        resume=True, merge=True)
    assert summary["student_val_loss"] == json.loads((base / "run" / "summary.json").read_text())["student_val_loss"]
    model, tokenizer = load_run(run_copy)
    from lizardlm import load

    merged = load(run_copy / "merged")  # --merge on a finished run merges the trained adapter
    ids = torch.randint(0, len(tokenizer), (1, 24))
    with torch.no_grad():
        assert torch.allclose(model(ids, use_cache=False).logits, merged(ids, use_cache=False).logits, atol=1e-4)


def test_leftover_temp_files_block_nothing_and_are_cleaned(base, run_copy, tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    (started / ".run.json.tmp").write_text("{")
    RunDir(started).check_new()  # a fresh run may use it
    summary = linearize(_settings(base, stage1_tokens=BATCH, stage2_tokens=0), started, resume=True)
    assert summary["stage1_val_loss"] > 0 and not (started / ".run.json.tmp").exists()

    orphan = run_copy / "checkpoints" / ".last.safetensors.tmp-12345"
    orphan.write_bytes(b"partial")
    linearize(_settings(base), run_copy, resume=True)
    assert not orphan.exists()


def test_generation_knobs_and_budgets_below_one_batch(base, tmp_path, capsys):
    for flag, value in (("--temperature", "-1"), ("--temperature", "nan"), ("--top-p", "0"), ("--top-p", "1.5")):
        _fails(["generate", "--prompt", "x", flag, value], capsys, flag)
    _fails(_linearize_argv(base, tmp_path / "out", "--stage1-tokens", "100"), capsys, "less than one batch")
    assert _settings(base, stage1_tokens=0).steps(1) == 0  # 0 still skips a stage on purpose
