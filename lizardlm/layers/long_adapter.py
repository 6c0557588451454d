"""The long adapter: a low-rank delta on a projection that acts only on tokens far into their sequence."""

from __future__ import annotations

import math

import torch
from torch import nn


class LongAdapter(nn.Module):
    """``delta(x)_t = s * [p_t >= start] * x_t A^T B^T`` with ``A`` (r x in), ``B`` (out x r), ``s = alpha / r``:
    LoRA's form (``A`` as PEFT draws it, ``B = 0``, so it starts at zero), gated by each token's position
    ``p_t`` in its sequence. The layer adds it to the outputs of the projections it targets (``v_proj`` and
    ``o_proj`` by default; :class:`~lizardlm.layers.attention.LizardAttention`) with ``start`` = the window: the
    linear memory holds nothing before it, and the prompts of the zero-shot tasks (most under 128 tokens) never
    reach it, so what retrieval training puts here cannot change them."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.empty(out_features, rank))
        self.scaling = alpha / rank
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as PEFT's lora_A
        nn.init.zeros_(self.B)

    def forward(self, x: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, in); ``far`` (B or 1, T) bool: the tokens it acts on. Returns (B, T, out)."""
        delta = (x @ self.A.to(x.dtype).T) @ self.B.to(x.dtype).T
        return delta * (self.scaling * far[..., None]).to(delta.dtype)
