"""``init_from``: a run that starts from a finished run's Lizard parameters and LoRA adapter."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from lizardlm.cli import main as cli_main
from lizardlm.errors import CheckpointError
from lizardlm.train import TrainSettings, linearize, load_run
from lizardlm.train.checkpoint import load_checked
from test_pipeline import settings

LARGEST = 32 * 4 * 30
"""test_pipeline's settings: stage 1's tokens, the larger budget, which sets how the data split into rows."""


@pytest.fixture
def first(tmp_path, teacher_dir, data_file):
    """A finished run to start from, and its summary."""
    out = tmp_path / "first"
    return out, linearize(settings(teacher_dir, data_file), out)


def _logits(run, ids):
    model, _ = load_run(run)
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_a_run_started_from_another_holds_its_weights_then_trains_on(tmp_path, teacher_dir, data_file, first, monkeypatch):
    """With no stage 1 and a learning rate too small to move anything, the new run is the old one: the
    same Lizard parameters, adapter, validation losses and logits. With a real learning rate, stage 2
    trains the adapter on from there."""
    run_a, summary_a = first
    still = tmp_path / "still"
    linearize_module = importlib.import_module("lizardlm.train.linearize")  # the package exports a function of that name
    measured, transfer_mse = [], linearize_module.transfer_mse
    monkeypatch.setattr(linearize_module, "transfer_mse", lambda *a, **kw: measured.append(a[-1]) or transfer_mse(*a, **kw))
    # as many tokens as the first run's largest stage, so that its data splits into the same rows
    summary = linearize(settings(teacher_dir, data_file, init_from=str(run_a), stage1_tokens=0, stage2_tokens=LARGEST,
                                 stage2_lr=1e-12), still)
    assert summary["stage1_val_loss"] == summary_a["stage1_val_loss"]  # the same layers on the same rows
    assert summary["student_val_loss"] == pytest.approx(summary_a["student_val_loss"], abs=1e-6)
    assert summary["stage1_val_mse_init_per_layer"] == summary_a["stage1_val_mse_per_layer"]
    assert summary["stage1_val_mse_per_layer"] == summary["stage1_val_mse_init_per_layer"]
    assert measured == ["converted: val attention MSE"]  # no stage-1 steps: the same model is not measured twice
    lizard_a, lizard = load_checked(run_a / "lizard.safetensors")[0], load_checked(still / "lizard.safetensors")[0]
    assert lizard_a.keys() == lizard.keys() and all(torch.equal(lizard_a[k], lizard[k]) for k in lizard)
    adapter_a = load_checked(run_a / "adapter" / "adapter_model.safetensors")[0]
    adapter = load_checked(still / "adapter" / "adapter_model.safetensors")[0]
    assert adapter_a.keys() == adapter.keys()
    assert all(torch.allclose(adapter_a[k], adapter[k], atol=1e-8) for k in adapter)
    assert any(v.abs().max() > 1e-3 for k, v in adapter_a.items() if "lora_B" in k)  # a trained adapter, not zeros
    ids = torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_logits(run_a, ids), _logits(still, ids), atol=1e-5)
    record = json.loads((still / "run.json").read_text())
    assert record["settings"]["init_from"] == str(run_a) and "init_from" in record["fingerprints"]

    on = tmp_path / "on"
    linearize(settings(teacher_dir, data_file, init_from=str(run_a), stage1_tokens=0), on)
    moved = load_checked(on / "adapter" / "adapter_model.safetensors")[0]
    assert max((moved[k] - adapter_a[k]).abs().max() for k in moved) > 1e-4


def test_the_cli_takes_the_runs_layers_and_adapter_shape(tmp_path, teacher_dir, data_file, first, capsys):
    """``--init-from`` alone brings the run's teacher, Lizard flags and LoRA rank; a flag that
    contradicts them is refused in one line, before anything is written."""
    run_a, _ = first
    common = ["linearize", "--data", str(data_file), "--seq-len", "32", "--batch-size", "4", "--stage1-tokens", "0",
              "--stage2-tokens", "128", "--val-tokens", "256", "--device", "cpu", "--init-from", str(run_a)]
    out = tmp_path / "cli"
    assert cli_main([*common, "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())["settings"]
    theirs = json.loads((run_a / "run.json").read_text())["settings"]
    assert record["lizard"] == theirs["lizard"] and record["teacher"] == theirs["teacher"]
    assert record["lora_rank"] == theirs["lora_rank"] and record["init_from"] == str(run_a)
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert cli_main([*common, "--out", str(bad), "--window-size", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "its layers or adapter differ from this run's (lizard.window_size: 8 there, 16 here)" in err[-1]
    assert not any("Traceback" in line for line in err) and not bad.exists()
    assert cli_main([*common, "--out", str(bad), "--lora-rank", "4"]) == 2
    assert "lora_rank: 8 there, 4 here" in capsys.readouterr().err


def test_init_from_what_cannot_be_started_from(tmp_path, teacher_dir, data_file, first):
    """A directory that holds no run, a run whose stage 2 has not finished, a baseline: one-line errors,
    nothing written; and on resume, a run started from weights that changed since."""
    run_a, _ = first
    with pytest.raises(CheckpointError, match="is not a lizardlm run directory"):
        linearize(settings(teacher_dir, data_file, init_from=str(tmp_path / "nothing")), tmp_path / "x1")
    half = tmp_path / "half"
    linearize(settings(teacher_dir, data_file, stage2_tokens=0), half)
    record = json.loads((half / "run.json").read_text())
    record["completed"] = ["stage1"]
    (half / "run.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="its stage 2 has not finished"):
        linearize(settings(teacher_dir, data_file, init_from=str(half)), tmp_path / "x2")
    base = tmp_path / "base"
    linearize(settings(teacher_dir, data_file, baseline="teacher-lora", stage1_tokens=0), base)
    with pytest.raises(CheckpointError, match="a teacher-lora baseline has no Lizard layers"):
        linearize(settings(teacher_dir, data_file, init_from=str(base)), tmp_path / "x3")
    with pytest.raises(ValueError, match="init-from starts from a run's Lizard layers"):
        settings(teacher_dir, data_file, init_from=str(run_a), baseline="teacher-lora")
    assert not any((tmp_path / f"x{i}").exists() for i in (1, 2, 3))

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        _interrupt_stage2(settings(teacher_dir, data_file, init_from=str(run_a), stage1_tokens=0), cut)
    weights = run_a / "lizard.safetensors"
    tensors = load_checked(weights)[0]
    from lizardlm.train.checkpoint import atomic_save

    atomic_save({k: v + 1 for k, v in tensors.items()}, weights)  # the run started from is changed meanwhile
    record = json.loads((run_a / "run.json").read_text())
    from lizardlm.train.fingerprint import files_fingerprint

    record["fingerprints"]["lizard"] = files_fingerprint(weights)  # consistently, as a retrained run would be
    (run_a / "run.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="holds other weights than when it started"):
        linearize(settings(teacher_dir, data_file, init_from=str(run_a), stage1_tokens=0), cut, resume=True)


def _interrupt_stage2(s: TrainSettings, out) -> None:
    """Run ``s`` into ``out`` and stop it (as Ctrl-C would) as stage 2 starts."""
    from unittest import mock

    from lizardlm.train import loop

    real = loop.run_stage

    def stop_in_stage2(stage, rows, **kw):
        if stage.name == "stage2":
            raise KeyboardInterrupt
        return real(stage, rows, **kw)

    with mock.patch("lizardlm.train.linearize.run_stage", stop_in_stage2):
        linearize(s, out)


def test_a_run_adds_a_long_adapter_to_one_without(tmp_path, teacher_dir, data_file, first):
    """Started from a run without a long adapter, ``long_adapter`` > 0 adds one at zero: with a learning rate too
    small to move anything the new run gives the old one's logits and holds its Lizard parameters; with a real
    one (``stage2_train_lizard``) the adapter trains. A run with one cannot change its shape; a run may not drop it."""
    run_a, _ = first
    with_adapter = {**settings(teacher_dir, data_file).lizard, "long_adapter": 2}
    still = tmp_path / "still"
    linearize(settings(teacher_dir, data_file, init_from=str(run_a), stage1_tokens=0, stage2_tokens=LARGEST,
                       stage2_lr=1e-12, lizard=with_adapter), still)
    lizard_a, lizard = load_checked(run_a / "lizard.safetensors")[0], load_checked(still / "lizard.safetensors")[0]
    added = set(lizard) - set(lizard_a)
    assert added and all(".long_v." in k or ".long_o." in k for k in added)
    assert all(torch.equal(lizard_a[k], lizard[k]) for k in lizard_a)
    assert all(lizard[k].abs().max() < 1e-8 for k in added if k.endswith(".B"))
    ids = torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(0))  # 24 tokens: past the window of 8
    assert torch.allclose(_logits(run_a, ids), _logits(still, ids), atol=1e-5)

    on = tmp_path / "on"
    linearize(settings(teacher_dir, data_file, init_from=str(run_a), stage1_tokens=0, stage2_train_lizard=True,
                       lizard=with_adapter), on)
    trained = load_checked(on / "lizard.safetensors")[0]
    assert any(trained[k].abs().max() > 1e-4 for k in added if k.endswith(".B"))
    with pytest.raises(CheckpointError, match="lizard.long_adapter: 2 there, 4 here"):
        linearize(settings(teacher_dir, data_file, init_from=str(on), stage1_tokens=0,
                           lizard={**with_adapter, "long_adapter": 4}), tmp_path / "x1")
    with pytest.raises(CheckpointError, match="lizard.long_adapter: 2 there, 0 here"):
        linearize(settings(teacher_dir, data_file, init_from=str(on), stage1_tokens=0), tmp_path / "x2")
