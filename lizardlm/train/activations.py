"""Activation checkpointing (``TrainSettings.gradient_checkpointing``) for stage 2: Hugging Face's
per-decoder-layer checkpointing, non-reentrant (``use_reentrant=False``); the forward keeps only
each decoder layer's input, the backward recomputes the rest, so long sequences (8K tokens) fit.
Stage 1 needs none: each layer backpropagates its own transfer loss as it arises
(:func:`lizardlm.layers.attention_transfer` with ``backward=True``), so one layer's activations are
alive at a time.
"""

from __future__ import annotations

from torch import nn

KWARGS = {"use_reentrant": False}


def checkpoint_decoder_layers(model: nn.Module) -> None:
    """Hugging Face activation checkpointing of every decoder layer (a PEFT model passes it on)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.24 names it so
    if enable is not None:
        enable(activation_checkpointing_kwargs=KWARGS)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=KWARGS)
