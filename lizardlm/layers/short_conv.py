"""A short causal convolution over time on the linear branch's queries or keys (``LizardConfig.short_conv``)."""

from __future__ import annotations

import torch
from torch import nn


class ShortConvolution(nn.Module):
    """Depthwise causal convolution of width ``c`` per head and channel, identity at start::

        x'_t = sum_{i < c} w_i * x_{t-i}        (w_0 = 1, w_i = 0 for i > 0 at start)

    so a key can hold the tokens just before it (what a lookup that copies a sequence needs to tell two
    equal tokens apart), as in Based and the short convolutions of flash-linear-attention, here on the
    linear branch alone (the window reads ``q`` and ``k`` as they are). ``weight``: ``(heads, dim, c)``.
    """

    def __init__(self, heads: int, dim: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.empty(heads, dim, width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.zero_()
            self.weight[..., 0] = 1.0

    def forward(self, x: torch.Tensor, tail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, heads, T, dim)``; ``tail`` ``(B, heads, c - 1, dim)``: the inputs just before ``x``
        (None: zeros, a sequence's start). Returns ``(x', tail')``, ``tail'`` the last ``c - 1`` inputs of
        ``tail`` then ``x``, to continue from."""
        B, H, T, D = x.shape
        if tail is None:
            tail = x.new_zeros(B, H, self.width - 1, D)
        full = torch.cat([tail.to(x.dtype), x], dim=2)
        w = self.weight.to(x.dtype)
        lag = self.width - 1
        out = full[:, :, lag:] * w[None, :, None, :, 0]
        for i in range(1, self.width):
            out = out + full[:, :, lag - i:lag - i + T] * w[None, :, None, :, i]
        return out, full[:, :, full.shape[2] - lag:]
