"""Activation checkpointing (float32, tiny model): the same stage-2 losses and gradients with and without
it (each decoder layer recomputed, through PEFT); the CLI flag reaches the settings that run.json records."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

import lizardlm
import lizardlm.train
from lizardlm.cli import main as cli_main
from lizardlm.train.activations import checkpoint_decoder_layers
from lizardlm.train.linearize import _lm_loss_fn

LIZARD = lizardlm.LizardConfig(window_size=8, feature_dim=8, chunk_size=8)


def _student(tiny_llama):
    model = lizardlm.convert(tiny_llama, LIZARD)
    torch.manual_seed(1)
    with torch.no_grad():  # off the initial values, so every parameter gets a gradient
        for p in model.lizard_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.train()


def _count_feature_map_calls(model) -> list[int]:
    calls = [0]
    layer = model.model.layers[0].self_attn
    layer.feature_map_q.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _loss_and_grads(model, loss_fn, batch, params):
    loss, _ = loss_fn(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in params.items()}
    for p in params.values():
        p.grad = None
    return loss.detach(), grads


def test_stage2_same_loss_and_grads(tiny_llama):
    base = _student(tiny_llama)
    base.requires_grad_(False)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    torch.manual_seed(2)
    plain_model = get_peft_model(copy.deepcopy(base), lora)
    with torch.no_grad():  # LoRA B starts at zero: give the A matrices a gradient path
        for n, p in plain_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    ckpt_model = copy.deepcopy(plain_model)
    checkpoint_decoder_layers(ckpt_model)
    batch = torch.randint(0, base.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    runs = []
    for model in (plain_model, ckpt_model):
        model.train()
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        calls = _count_feature_map_calls(model.base_model.model)
        runs.append((*_loss_and_grads(model, _lm_loss_fn(model), batch, params), calls[0]))
    (loss_a, grads_a, calls_a), (loss_b, grads_b, calls_b) = runs
    assert (calls_a, calls_b) == (1, 2)
    assert torch.equal(loss_a, loss_b) and grads_a.keys() == grads_b.keys()
    assert all(torch.allclose(grads_a[n], grads_b[n], rtol=1e-5, atol=1e-7) for n in grads_a)


@pytest.mark.parametrize("flag, expected", [
    ([], False),
    (["--gradient-checkpointing"], True),
    (["--preset", "cpu-demo"], True),  # the preset turns it on ...
    (["--preset", "cpu-demo", "--no-gradient-checkpointing"], False),  # ... and the flag off
])
def test_cli_flag_reaches_the_settings(monkeypatch, tmp_path, flag, expected):
    seen = {}

    def fake_linearize(settings, out, **_):
        seen["settings"] = settings.to_dict()
        return {"baseline": None, "stage1_val_mse_init_per_layer": [1.0], "stage1_val_mse_per_layer": [0.5],
                "teacher_val_ppl": 1.0, "stage1_val_ppl": 1.0, "student_val_ppl": 1.0}

    monkeypatch.setattr(lizardlm.train, "linearize", fake_linearize)
    assert cli_main(["linearize", "--out", str(tmp_path / "run"), *flag]) == 0
    assert seen["settings"]["gradient_checkpointing"] is expected
