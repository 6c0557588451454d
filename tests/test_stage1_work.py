"""Stage 1 (attention transfer) does only the work its loss needs: no LM head, no teacher gradients,
and a backward pass that reaches no MLP and no q/k/v projection, only each layer's o_proj input."""

from __future__ import annotations

import torch

import lizardlm
from lizardlm.train.linearize import _transfer_loss_fn


def test_stage1_backward_touches_only_lizard_parameters(tiny_llama):
    model = lizardlm.convert(tiny_llama, lizardlm.LizardConfig(window_size=8, feature_dim=8, chunk_size=8))
    model.requires_grad_(False)
    for p in model.lizard_parameters():
        p.requires_grad_(True)
    model.train()
    forward_seen, backward_seen = [], []
    for name, module in model.named_modules():
        if name.endswith(("mlp", "q_proj", "k_proj", "v_proj", "o_proj", "lm_head")):
            module.register_forward_hook(lambda m, i, o, name=name: forward_seen.append(name))
            module.register_full_backward_hook(lambda m, gi, go, name=name: backward_seen.append(name))
    loss, extra = _transfer_loss_fn(model)(torch.randint(0, model.config.vocab_size, (2, 32)))
    loss.backward()
    assert "lm_head" not in forward_seen  # the transfer loss needs no logits
    assert sorted(backward_seen) == [f"model.layers.{i}.self_attn.o_proj" for i in range(2)]
    lizard = {id(p) for p in model.lizard_parameters()}
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    assert with_grad and all(id(dict(model.named_parameters())[n]) in lizard for n in with_grad)
    assert extra["mse_mean"] > 0
