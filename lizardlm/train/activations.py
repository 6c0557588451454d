"""Activation checkpointing (``TrainSettings.gradient_checkpointing``): the forward keeps only each
block's inputs, the backward recomputes the rest, so long sequences (8K tokens) fit in memory.

Stage 1 checkpoints every :class:`~lizardlm.layers.LizardAttention`: its loss is a side output (the
attention-transfer MSE, computed inside the layer), so the layer is wrapped rather than the decoder
layers, and the wrapper returns that loss from the checkpointed function. Stage 2 uses Hugging
Face's per-decoder-layer checkpointing. Both are non-reentrant (``use_reentrant=False``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lizardlm.layers import LizardAttention

KWARGS = {"use_reentrant": False}


def _checkpointed(layer: LizardAttention):
    """``layer.forward`` recomputed in the backward; attention-transfer mode and loss carried through."""
    forward = layer.forward

    def run(transfer: bool, *args, **kwargs):
        saved = layer.attention_transfer, layer.transfer_loss
        layer.attention_transfer = transfer  # the recompute runs after attention_transfer() has exited
        try:
            return forward(*args, **kwargs)[0], layer.transfer_loss
        finally:
            layer.attention_transfer, layer.transfer_loss = saved

    def wrapped(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        out, loss = checkpoint(run, layer.attention_transfer, *args, **KWARGS, **kwargs)
        if layer.attention_transfer:
            layer.transfer_loss = loss
        return out, None

    return wrapped


@contextlib.contextmanager
def checkpointed_attention(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, every Lizard attention of ``model`` recomputes its forward in the backward."""
    layers = [m for m in model.modules() if isinstance(m, LizardAttention)] if enabled else []
    for layer in layers:
        layer.forward = _checkpointed(layer)  # an instance attribute shadows the method
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def checkpoint_decoder_layers(model: nn.Module) -> None:
    """Hugging Face activation checkpointing of every decoder layer (a PEFT model passes it on)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.24 names it so
    if enable is not None:
        enable(activation_checkpointing_kwargs=KWARGS)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=KWARGS)
