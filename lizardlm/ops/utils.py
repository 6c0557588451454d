"""Small helpers shared by the ops."""

from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float32 for half types, the input dtype for float32/float64."""
    return torch.promote_types(x.dtype, torch.float32)


def expand_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Repeat key/value heads ``(B, Hk, ...)`` to ``(B, num_heads, ...)`` for grouped-query attention."""
    groups = num_heads // x.shape[1]
    if groups * x.shape[1] != num_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {x.shape[1]} key/value heads")
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)
