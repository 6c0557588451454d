"""What a run prints: TQDM_DISABLE is honoured, no deprecation noise from peft, interrupts name --resume."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import lizardlm

ROOT = Path(__file__).resolve().parents[1]
PACK = """
from lizardlm.data import packing
class Tok:
    eos_token_id = 0
    def __call__(self, texts, **kw):
        return {"input_ids": [[1] * len(t) for t in texts]}
packing.PROGRESS_MIN_CHARS = 0
packing.pack_tokens(["some text"] * 50, Tok(), 8)
"""


def test_tqdm_disable_hides_the_packing_bar():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", PACK], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tokenizing" not in done.stderr
    shown = subprocess.run([sys.executable, "-c", PACK], capture_output=True, text=True, timeout=120,
                           env={k: v for k, v in env.items() if k != "TQDM_DISABLE"})
    assert "tokenizing" in shown.stderr


def test_lora_on_a_lizard_model_warns_nothing():
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, num_key_value_heads=2, vocab_size=50))
    model = lizardlm.convert(teacher, lizardlm.LizardConfig(window_size=8, feature_dim=8, num_meta_tokens=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert not [w for w in caught if "gradient_checkpointing" in str(w.message)]


def test_an_interrupted_linearize_names_resume(monkeypatch, tmp_path, capsys):
    import lizardlm.train
    from lizardlm.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lizardlm.train, "linearize", interrupted)
    assert main(["linearize", "--out", str(tmp_path / "run")]) == 130
    assert "--resume" in capsys.readouterr().err


def test_stage_bar_shows_the_whole_jobs_time_left(tmp_path, monkeypatch):
    """The stage-1 bar's ``all`` counts the steps of stage 2 too (at stage 1's pace)."""
    from accelerate import Accelerator

    from lizardlm.train import loop
    from lizardlm.train.rundir import RunDir

    ticks = iter(range(1000))
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(ticks)))  # every step takes 1 s
    shown: list[str] = []

    class Bar:
        def set_postfix(self, **kw):
            shown.append(kw["all"])

        def update(self, n):
            pass

        def close(self):
            pass

    monkeypatch.setattr(loop, "progress", lambda *a, **kw: Bar())
    run = RunDir(tmp_path)
    weight = torch.nn.Parameter(torch.ones(3))
    stage = loop.Stage("stage1", steps=4, lr=0.1, params={"w": weight},
                       loss_fn=lambda b: ((weight * b.float().mean()).sum(), {}), steps_after=60)
    loop.run_stage(stage, torch.arange(40).view(10, 4), batch_size=2, seed=0, warmup_fraction=0.0, weight_decay=0.0,
                   checkpoint_every=100, run=run, accelerator=Accelerator(cpu=True), log=loop.MetricsLog(run))
    assert shown == ["~1m03s left", "~1m02s left", "~1m01s left", "~1m00s left"]
    assert loop._eta(3725) == "~1h02m left"
