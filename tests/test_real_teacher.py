"""The embedded SmolLM2-135M teacher end to end on CPU, for a few steps (marked slow)."""

from __future__ import annotations

import pytest
import torch

import lizardlm
from lizardlm import LizardCache, LizardConfig
from lizardlm.cache import CACHE_KWARG
from lizardlm.train import TrainSettings, linearize, load_run

pytestmark = pytest.mark.slow


def test_convert_and_generate_real_teacher(smollm2_teacher):
    teacher, tokenizer = smollm2_teacher
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    import copy

    model = lizardlm.convert(copy.deepcopy(teacher), LizardConfig())
    assert type(model).__name__ == "LizardLlamaForCausalLM" and len(model.model.layers) == 30
    cache = LizardCache.for_model(model)
    with torch.no_grad():
        out = model.generate(ids, **{CACHE_KWARG: cache}, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text  # short prompts sit inside the window: the teacher's own answer
    assert cache.nbytes() < 16 * 2**20


def test_linearize_real_teacher_few_steps(tmp_path):
    settings = TrainSettings(
        teacher="smollm2-135m", data="default", seq_len=96, batch_size=2, stage1_tokens=96 * 2 * 3,
        stage2_tokens=96 * 2 * 2, val_tokens=96 * 2, checkpoint_every=2, device="cpu",
        lizard={"window_size": 32},
    )
    summary = linearize(settings, tmp_path / "run")
    assert sum(summary["stage1_val_mse_per_layer"]) < sum(summary["stage1_val_mse_init_per_layer"])
    assert summary["student_val_ppl"] < 10 * summary["teacher_val_ppl"]
    model, tokenizer = load_run(tmp_path / "run")
    ids = tokenizer("The history of", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model.generate(ids, max_new_tokens=5, do_sample=False).shape[1] == ids.shape[1] + 5
