"""Stage 1 (attention transfer) does only the work its loss needs: the LM head on one position (the
forward enters through the whole model, as FSDP needs), no teacher gradients, and a backward pass
that reaches no MLP and no q/k/v projection, only each layer's o_proj input."""

from __future__ import annotations

import torch

import lizardlm
from lizardlm.layers import attention_transfer
from lizardlm.train.linearize import _transfer_loss_fn


def _stage1_model(tiny_llama):
    model = lizardlm.convert(tiny_llama, lizardlm.LizardConfig(window_size=8, feature_dim=8, chunk_size=8))
    model.requires_grad_(False)
    for p in model.lizard_parameters():
        p.requires_grad_(True)
    return model.train()


def test_stage1_backward_touches_only_lizard_parameters(tiny_llama):
    model = _stage1_model(tiny_llama)
    backward_seen, logits = [], []
    for name, module in model.named_modules():
        if name.endswith(("mlp", "q_proj", "k_proj", "v_proj", "o_proj", "lm_head")):
            module.register_full_backward_hook(lambda m, gi, go, name=name: backward_seen.append(name))
    model.lm_head.register_forward_hook(lambda m, i, o: logits.append(o.shape))
    loss, extra = _transfer_loss_fn(model)(torch.randint(0, model.config.vocab_size, (2, 32)))
    assert not loss.requires_grad  # each layer's loss was backpropagated during the forward pass
    assert logits == [(2, 1, model.config.vocab_size)]  # the transfer loss needs no logits: the last position's only
    assert sorted(backward_seen) == [f"model.layers.{i}.self_attn.o_proj" for i in range(2)]
    lizard = {id(p) for p in model.lizard_parameters()}
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    assert with_grad and all(id(dict(model.named_parameters())[n]) in lizard for n in with_grad)
    assert extra["mse_mean"] > 0


class _Saved:
    """What autograd saved for backward, counted while alive (freed with its graph)."""

    live = 0

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        _Saved.live += 1

    def __del__(self) -> None:
        _Saved.live -= 1


def test_stage1_keeps_one_layers_graph_alive_with_the_same_gradients(tiny_llama):
    model = _stage1_model(tiny_llama)
    ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    params = list(model.lizard_parameters())
    with attention_transfer(model) as layers:  # reference: one backward of the sum over layers
        model.model(input_ids=ids, use_cache=False)
        torch.stack([layer.transfer_loss for layer in layers]).sum().backward()
    expected = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)

    alive_at_layer = []
    for layer in model.model.layers:
        layer.register_forward_pre_hook(lambda m, a: alive_at_layer.append(_Saved.live))
    with torch.autograd.graph.saved_tensors_hooks(_Saved, lambda saved: saved.tensor):
        loss, _ = _transfer_loss_fn(model)(ids)
        assert _Saved.live == 0
    assert alive_at_layer == [0] * len(model.model.layers)  # no earlier layer's intermediates kept
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
