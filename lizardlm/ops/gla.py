"""Gated linear attention with a scalar (per head, per token) data-dependent decay.

For each batch and head, with log-decay ``g_t <= 0`` (``a_t = exp(g_t)``)::

    S_t = a_t S_{t-1} + k_t v_t^T          (K x V state)
    o_t = q_t^T S_t

so ``o_t = sum_{j<=t} exp(G_t - G_j) (q_t . k_j) v_j + exp(G_t) q_t^T S_0`` with ``G_t = sum_{r<=t} g_r``.
Shapes: q, k ``(B, H, T, K)``; v ``(B, H, T, V)``; g ``(B, H, T)`` or None (no decay);
state ``(B, H, K, V)``. All three forms compute in float32 or wider and return q's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lizardlm.ops.utils import compute_dtype


def _prepare(q, k, v, g, initial_state):
    dtype = compute_dtype(q)
    B, H, T, _ = q.shape
    if g is None:
        g = q.new_zeros(B, H, T)
    if initial_state is None:
        initial_state = q.new_zeros(B, H, q.shape[-1], v.shape[-1], dtype=dtype)
    return q.to(dtype), k.to(dtype), v.to(dtype), g.to(dtype), initial_state.to(dtype)


def gla_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the closed form with an explicit T x T decay matrix. Returns (o, final_state)."""
    out_dtype = q.dtype
    q, k, v, g, s0 = _prepare(q, k, v, g, initial_state)
    T = q.shape[2]
    G = g.cumsum(-1)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    decay = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")))
    o = (q @ k.transpose(-1, -2) * decay) @ v + torch.exp(G)[..., None] * (q @ s0)
    final = torch.exp(G[..., -1])[..., None, None] * s0 + (
        k * torch.exp(G[..., -1:] - G)[..., None]
    ).transpose(-1, -2) @ v
    return o.to(out_dtype), final


def gla_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token at a time with an O(1) state. Returns (o, final_state)."""
    out_dtype = q.dtype
    q, k, v, g, state = _prepare(q, k, v, g, initial_state)
    outs = []
    for t in range(q.shape[2]):
        state = torch.exp(g[:, :, t])[..., None, None] * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append((q[:, :, t, None, :] @ state).squeeze(-2))
    return torch.stack(outs, dim=2).to(out_dtype), state


def gla_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked parallel form: dense within chunks of C tokens, recurrent across chunks.

    With b the inclusive cumulative log-decay inside a chunk and S the state entering it::

        o_i = sum_{j<=i} exp(b_i - b_j) (q_i . k_j) v_j + exp(b_i) q_i^T S
        S'  = exp(b_C) S + sum_j exp(b_C - b_j) k_j v_j^T

    Memory O(T C); returns (o, final_state).
    """
    out_dtype = q.dtype
    q, k, v, g, state = _prepare(q, k, v, g, initial_state)
    B, H, T, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    pad = (-T) % C
    if pad:  # zero keys and zero log-decay leave the state untouched
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g = F.pad(g, (0, pad))
    n = (T + pad) // C
    q, k = q.view(B, H, n, C, K), k.view(B, H, n, C, K)
    v = v.view(B, H, n, C, V)
    b = g.view(B, H, n, C).cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = torch.exp((b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf")))
    o = (q @ k.transpose(-1, -2) * decay) @ v
    q_in = q * torch.exp(b)[..., None]
    k_out = k * torch.exp(b[..., -1:] - b)[..., None]
    chunk_states = k_out.transpose(-1, -2) @ v  # (B, H, n, K, V)
    chunk_decay = torch.exp(b[..., -1])  # (B, H, n)
    inter = []
    for c in range(n):
        inter.append(q_in[:, :, c] @ state)
        state = chunk_decay[:, :, c, None, None] * state + chunk_states[:, :, c]
    o = o + torch.stack(inter, dim=2)
    return o.reshape(B, H, n * C, V)[:, :, :T].to(out_dtype), state
