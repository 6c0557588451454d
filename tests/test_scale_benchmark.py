"""benchmarks/scale.py at tiny size on CPU: the JSON it writes, and a failing row recorded, not raised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import scale  # noqa: E402

RATES = ("teacher_lora_tok_per_s", "stage1_tok_per_s", "stage2_tok_per_s")


def test_quick_run_writes_the_schema(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(BENCHMARKS.parent)}
    cmd = [sys.executable, str(BENCHMARKS / "scale.py"), "--quick", "--out", str(tmp_path),
           "--lizard-mode", "lizard,no-such-mode"]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=240)
    result = json.loads((tmp_path / "scale-cpu.json").read_text())
    assert result["device"] == "cpu" and {"torch", "transformers", "peft"} <= set(result["versions"])
    good = [r for r in result["runs"] if r["mode"] == "lizard"]
    assert [(r["shape"], r["seq"], r["batch"]) for r in good] == [("tiny", 32, 1), ("tiny", 64, 1)]
    for row in good:
        assert all(row[k] > 0 for k in RATES), row
        assert row["peak_gib"] is None  # CPU: no CUDA allocator statistics
        expected = (20e6 / row["stage1_tok_per_s"] + 20e6 / row["stage2_tok_per_s"]) / 60
        assert row["recipe_minutes"] == pytest.approx(expected)
        assert row["lizard"]["window_size"] == 16
    bad = [r for r in result["runs"] if r["mode"] == "no-such-mode"]
    assert len(bad) == 2 and all("unknown mode" in r["error"] for r in bad)


def test_out_of_memory_is_recorded_per_measurement():
    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory")

    row: dict = {}
    scale.measure("stage1", row, oom, tokens=100, device="cpu")
    scale.measure("stage2", row, lambda: {"s_per_step": 0.5, "peak_gib": 3.0}, tokens=100, device="cpu")
    scale.finish_row(row)
    assert row["stage1_error"] == "out of memory" and row["stage1_tok_per_s"] is None
    assert row["stage2_tok_per_s"] == 200 and row["peak_gib"] == 3.0 and row["recipe_minutes"] is None


def test_default_batch_keeps_tokens_per_step():
    assert scale.default_batch("smollm2-135m", 2048) == 8 and scale.default_batch("smollm2-135m", 8192) == 2
    assert scale.default_batch("llama-3-8b", 8192) == 1
    config = scale.SHAPES["llama-3-8b"][0](**scale.SHAPES["llama-3-8b"][2])
    assert config.num_key_value_heads == 8 and config.intermediate_size == 14336


def test_variants_are_rows_with_their_settings(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(BENCHMARKS.parent)}
    cmd = [sys.executable, str(BENCHMARKS / "scale.py"), "--quick", "--out", str(tmp_path), "--name", "scale-retrieval",
           "--variant", "wide:feature_dim=8,write_gate=head,gate_init=0.9999,stage2_train_lizard=1,"
           "loss_average=rows,loss_chunk=16"]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=240)
    result = json.loads((tmp_path / "scale-retrieval-cpu.json").read_text())
    assert [(r["variant"], r["seq"]) for r in result["runs"]] == [("wide", 32), ("wide", 64)]  # no --lizard-mode rows
    row = result["runs"][0]
    assert row["mode"] == "lizard" and row["stage2_train_lizard"] is True
    assert row["loss_average"] == "rows" and row["loss_chunk"] == 16 and all(row[k] > 0 for k in RATES)
    assert row["lizard"]["feature_dim"] == 8 and row["lizard"]["write_gate"] == "head"
    assert row["lizard"]["gate_init"] == 0.9999 and row["lizard"]["window_size"] == 16  # --quick's window


def test_variant_parsing_types_values_and_refuses_unknown_keys():
    name, settings = scale.parse_variant("v:mode=paper,window_size=128,gate_init=0.999,stage2_train_lizard=0")
    assert name == "v" and settings == {"mode": "paper", "window_size": 128, "gate_init": 0.999, "stage2_train_lizard": False}
    for bad, message in (("v:no_such=1", "LizardConfig field"), ("v:window_size=wide", "must be a int"),
                         ("v:loss_average=mean", "loss_average must be one of"), ("v:loss_chunk=-4", "loss_chunk must be"),
                         (":feature_dim=8", "NAME:KEY=VALUE")):
        with pytest.raises(ValueError, match=message):
            scale.parse_variant(bad)
    with pytest.raises(SystemExit):
        scale.parse_args(["--variant", "v:no_such=1"])
    assert [n for n, _ in scale.parse_args([]).variants] == ["lizard"]
    assert [n for n, _ in scale.parse_args(["--variant", "v:feature_dim=8"]).variants] == ["v"]
    assert [n for n, _ in scale.parse_args(["--lizard-mode", "paper", "--variant", "v:"]).variants] == ["paper", "v"]


def test_readme_table_names_a_variant_and_its_settings():
    import readme_table

    row = {"shape": "smollm2-135m", "batch": 8, "seq": 2048, "mode": "lizard", "variant": "wide", "adamw": "fused",
           "lizard": {"window_size": 128, "feature_dim": 256, "write_gate": "head"}, "stage2_train_lizard": True,
           "loss_average": "rows"}
    assert readme_table.step_form(row) == "wide: lizard (w128, f256, write gate, Lizard params in stage 2, loss rows)"
    plain = {**row, "variant": "lizard", "lizard": {"window_size": 64, "feature_dim": 64}}
    assert readme_table.step_form(plain) == "lizard (w64)"  # a --lizard-mode row reads as before
