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

import torch
import torch.nn.functional as F


def answer_rows(batch: torch.Tensor) -> torch.Tensor:
    """``(rows,)`` bool: which packed rows hold input-only tokens (stored negative, see
    :mod:`lizardlm.data.packing`)."""
    return (batch < 0).any(dim=1)


class AdapterRowGate:
    """Forward hooks on a PEFT model's ``lora_A`` and ``lora_B`` layers, on while the gate is entered as a
    context, that compute the rows last given to :meth:`freeze` with the layer's weight detached (one
    extra rank-r product per layer). The rows stay frozen until the next call, so a backward that
    recomputes the forward (activation checkpointing) treats the same rows alike; the mask is a tensor
    on the device, so a CUDA-graphed step records the gate once and replays it."""

    def __init__(self, peft_model: torch.nn.Module, keep: Sequence[str] = ()) -> None:
        """``keep``: LoRA targets (module names such as ``q_proj``) whose adapter still trains on the rows."""
        from peft.tuners.lora import LoraLayer

        self._linears = [m for name, layer in peft_model.named_modules()
                         if isinstance(layer, LoraLayer) and name.rpartition(".")[2] not in keep
                         for side in (layer.lora_A, layer.lora_B) for m in side.values()]
        if not self._linears:
            raise ValueError("answer-rows lizard needs a LoRA adapter beside the targets it keeps training")
        self._frozen: torch.Tensor | None = None
        self._handles: list = []

    def _hook(self, module: torch.nn.Linear, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self._frozen is None:
            return None
        constant = F.linear(inputs[0], module.weight.detach(), None if module.bias is None else module.bias.detach())
        return torch.where(self._frozen.view(-1, *([1] * (output.dim() - 1))), constant, output)

    def freeze(self, frozen: torch.Tensor) -> None:
        """From now on, forwards keep the adapter's weights constant on the rows where ``frozen`` (``(rows,)``
        bool) is True."""
        self._frozen = frozen

    def __enter__(self) -> "AdapterRowGate":
        self._handles = [m.register_forward_hook(self._hook) for m in self._linears]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._frozen = [], None
