"""Hedgehog feature map: a learned, positive, softmax-based kernel feature map."""

from __future__ import annotations

import torch
from torch import nn


class HedgehogFeatureMap(nn.Module):
    """phi(u) = [softmax(t u W_h), softmax(-t u W_h)] over the feature axis, one ``W_h`` per head.

    ``u`` is ``(B, heads, T, head_dim)``; the output is ``(B, heads, T, 2 * feature_dim)``, positive,
    so the linear-attention normaliser stays positive. ``W_h`` starts as a (rectangular) identity.
    ``sharpness`` ``t`` (not trained; 1 in training) sharpens the two softmaxes: the query map's is
    ``LizardConfig.read_sharpness``.
    """

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int, sharpness: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_heads, head_dim, feature_dim))
        self.sharpness = float(sharpness)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            eye = torch.eye(self.weight.shape[1], self.weight.shape[2], dtype=self.weight.dtype)
            self.weight.copy_(eye.expand_as(self.weight))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        proj = torch.einsum("bhtd,hdf->bhtf", u, self.weight.to(u.dtype))
        if self.sharpness != 1.0:
            proj = proj * self.sharpness
        return torch.cat([proj.softmax(-1), (-proj).softmax(-1)], dim=-1)
