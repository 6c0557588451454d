"""Stage-2 rows whose gradient trains the Lizard parameters and not the LoRA adapter
(:attr:`lizardlm.train.settings.TrainSettings.answer_rows` ``= "lizard"``; ``"lizard:q_proj,k_proj"``
keeps training the LoRA of the targets named on them).

An answer row is a packed row with input-only tokens, i.e. a ``retrieval:loss=answers`` document
(:mod:`lizardlm.data.retrieval`; every other source trains on all of its tokens). A LoRA projection
computes ``W x + s B A x``; for the answer rows of a batch its ``A`` and ``B`` act as constants::

    A x[r] = stop_gradient(A) x[r],   B h[r] = stop_gradient(B) h[r]    for every answer row r

so the forward and the loss are unchanged, ``A`` and ``B`` get gradient from the other rows only, and
an answer row's loss reaches every other trainable parameter exactly as without the gate (the
gradient still flows through the adapter's branch to the layers below). The point: the zero-shot
tasks' prompts rarely leave the window, so the adapter is what they read, and retrieval rows that train
it cost them points. Measured (H100, ``benchmarks/NOTES.md``, issue 19): with the Lizard parameters alone
(feature maps, gates, meta memory) the passkey lookup is not learned, the answers come in words; with the
LoRA of ``v_proj`` and ``o_proj`` kept (``lizard:v_proj,o_proj``) it is, and q/k's LoRA is not needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F


def answer_rows(batch: torch.Tensor) -> torch.Tensor:
    """``(rows,)`` bool: which packed rows hold input-only tokens (stored negative, see
    :mod:`lizardlm.data.packing`)."""
    return (batch < 0).any(dim=1)


class _RowGatedLinear(torch.autograd.Function):
    """``y = x W^T`` (LoRA's ``A`` and ``B`` have no bias) with ``dx = dy W`` on every row and
    ``dW = sum_{r not frozen} dy[r]^T x[r]``: the weight is a constant on the frozen rows. The products run
    in ``y``'s dtype (the autocast dtype, as ``F.linear``'s own backward does) and each gradient is returned
    in its tensor's dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, weight)
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(x.to(y.dtype), weight, frozen)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight, frozen = ctx.saved_tensors
        dx = (dy @ weight.to(dy.dtype)).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:
            kept = frozen.logical_not().view(-1, *([1] * (x.dim() - 1))).to(dy.dtype)
            if x.shape[-1] <= dy.shape[-1]:  # zero the frozen rows of the narrower side (the rank-r one)
                x = x * kept
            else:
                dy = dy * kept
            dw = (dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])).to(weight.dtype)
        return dx, dw, None


class AdapterRowGate:
    """While entered as a context, a PEFT model's ``lora_A`` and ``lora_B`` layers run as
    :class:`_RowGatedLinear` on the rows last given to :meth:`freeze` (the same products as the plain
    layers; the weight gradient leaves those rows out). The rows stay frozen until the next call, so a
    backward that recomputes the forward (activation checkpointing) treats the same rows alike; the mask is
    a tensor on the device, so a CUDA-graphed step records the gate once and replays it."""

    def __init__(self, peft_model: torch.nn.Module, keep: Sequence[str] = ()) -> None:
        """``keep``: LoRA targets (module names such as ``q_proj``) whose adapter still trains on the rows."""
        from peft.tuners.lora import LoraLayer

        self._linears = [m for name, layer in peft_model.named_modules()
                         if isinstance(layer, LoraLayer) and name.rpartition(".")[2] not in keep
                         for side in (layer.lora_A, layer.lora_B) for m in side.values()]
        if not self._linears:
            raise ValueError("answer-rows lizard needs a LoRA adapter beside the targets it keeps training")
        if any(m.bias is not None for m in self._linears):
            raise ValueError("answer-rows lizard needs LoRA layers without a bias (PEFT's lora_bias off)")
        self._frozen: torch.Tensor | None = None

    def _forward(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if self._frozen is None:
            return type(module).forward(module, x)
        return _RowGatedLinear.apply(x, module.weight, self._frozen)

    def freeze(self, frozen: torch.Tensor) -> None:
        """From now on, forwards keep the adapter's weights constant on the rows where ``frozen`` (``(rows,)``
        bool) is True."""
        self._frozen = frozen

    def __enter__(self) -> "AdapterRowGate":
        for m in self._linears:
            m.forward = partial(self._forward, m)
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self._linears:
            del m.forward  # the class's own forward again
        self._frozen = None
