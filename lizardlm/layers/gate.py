"""Data-dependent decay gate of the linear branch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DecayGate(nn.Module):
    """Scalar decay ``a_t = sigmoid(x_t W + b) ** (1 / tau)`` per output (one per head, or a single
    one per token shared by all heads: the paper's gate, ``tau = 1``), returned as ``log a_t``.

    ``W`` starts at zero and ``b`` at ``logit(a0 ** tau)`` so every head begins with decay ``a0``
    (close to 1: little forgetting), independent of the input.
    """

    def __init__(self, hidden_size: int, num_heads: int, temperature: float, init: float) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, num_heads)
        self.temperature = temperature
        self.init = init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.proj.weight.zero_()
            p = self.init**self.temperature
            self.proj.bias.fill_(math.log(p / (1.0 - p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, hidden)`` -> log-decays ``(B, outputs, T)``, all <= 0."""
        return (F.logsigmoid(self.proj(x).float()) / self.temperature).transpose(1, 2)
