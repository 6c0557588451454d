"""Lizard models in the wider ecosystem: plain transformers (remote code), peft adapters, foreign caches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import lizardlm
from lizardlm import LizardCache, LizardConfig
from lizardlm.cache import CACHE_KWARG
from lizardlm.errors import LizardError

ROOT = Path(__file__).resolve().parents[1]
SMALL = LizardConfig(window_size=8, num_meta_tokens=2, feature_dim=8, chunk_size=8)
IDS = torch.arange(3, 43).view(1, 40) % 97


def tiny_teacher(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                         num_key_value_heads=2, vocab_size=97, max_position_embeddings=256, attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def tiny_lizard(seed: int = 0):
    model = lizardlm.convert(tiny_teacher(seed), SMALL)
    with torch.no_grad():  # away from the init, so that the Lizard parameters matter
        for p in model.lizard_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def run_fresh(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in a new Python that has not imported lizardlm (the checkout's code on its path)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


LOAD_REMOTE = """
import sys, torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
{before}
model = AutoModelForCausalLM.from_pretrained({path!r}, trust_remote_code=True)
ids = torch.arange(3, 43).view(1, 40) % 97
with torch.no_grad():
    save_file({{"logits": model(ids).logits.contiguous()}}, {out!r})
print(type(model).__name__)
"""


def test_saved_model_loads_with_plain_transformers_and_trust_remote_code(tmp_path):
    model = tiny_lizard()
    with torch.no_grad():
        expected = model(IDS).logits
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "modeling_lizard.py").is_file()
    out = tmp_path / "logits.safetensors"
    done = run_fresh(LOAD_REMOTE.format(before="", path=str(tmp_path / "saved"), out=str(out)), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "LizardLlamaForCausalLM"
    assert torch.equal(load_file(out)["logits"], expected)


def test_remote_code_without_lizardlm_says_pip_install(tmp_path):
    tiny_lizard().save_pretrained(tmp_path / "saved")
    hide = "sys.modules['lizardlm'] = None  # as if lizardlm were not installed"
    done = run_fresh(LOAD_REMOTE.format(before=hide, path=str(tmp_path / "saved"), out=str(tmp_path / "x")), tmp_path)
    assert done.returncode != 0
    assert "pip install lizardlm" in done.stderr


def test_a_dynamic_cache_is_refused_in_one_line_naming_lizard_cache():
    model = tiny_lizard()
    for call in (lambda: model(IDS, past_key_values=DynamicCache(), use_cache=True),
                 lambda: model.generate(IDS, **{CACHE_KWARG: DynamicCache()}, max_new_tokens=2, do_sample=False)):
        with pytest.raises(LizardError, match="LizardCache") as err:
            call()
        assert "\n" not in str(err.value)
    out = model.generate(IDS, **{CACHE_KWARG: LizardCache.for_model(model)}, max_new_tokens=2, do_sample=False)
    assert out.shape == (1, 42)


def test_a_run_adapter_is_self_contained_for_auto_peft(tmp_path, tiny_llama, tiny_tokenizer):
    """The adapter names the run directory as its base: AutoPeftModelForCausalLM rebuilds teacher + the
    trained Lizard parameters under it, in a fresh process, matching ``lizardlm.load(run)``."""
    from lizardlm.train import TrainSettings, linearize

    teacher = tmp_path / "teacher"
    tiny_llama.save_pretrained(teacher)
    tiny_tokenizer.save_pretrained(teacher)
    data = tmp_path / "train.txt"
    data.write_text((ROOT / "tests" / "fixtures" / "wikitext_slice.txt").read_text(encoding="utf-8"), encoding="utf-8")
    settings = TrainSettings(teacher=str(teacher), data=str(data), seq_len=32, batch_size=2, stage1_tokens=32 * 2 * 3,
                             stage2_tokens=32 * 2 * 3, val_tokens=64, stage2_lr=1e-2, device="cpu",
                             lizard={"window_size": 8, "feature_dim": 8, "num_meta_tokens": 2, "chunk_size": 8})
    linearize(settings, tmp_path / "run")
    ids = IDS % len(tiny_tokenizer)
    with torch.no_grad():
        expected = lizardlm.load(tmp_path / "run")(ids).logits
    code = f"""
import torch
from peft import AutoPeftModelForCausalLM
from safetensors.torch import save_file
model = AutoPeftModelForCausalLM.from_pretrained({str(tmp_path / 'run' / 'adapter')!r}, trust_remote_code=True)
with torch.no_grad():
    save_file({{"logits": model(torch.tensor({ids.tolist()})).logits.contiguous()}}, {str(tmp_path / 'peft.safetensors')!r})
"""
    done = run_fresh(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert torch.allclose(load_file(tmp_path / "peft.safetensors")["logits"], expected, atol=1e-4)
