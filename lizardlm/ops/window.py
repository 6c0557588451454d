"""Sliding-window softmax attention plus learned meta-memory slots.

Query ``t`` attends to keys ``j`` with ``t - w < j <= t`` and to ``m`` meta slots (keys ``mk``,
values ``mv``, no position) that every query sees::

    s_tj = scale q_t . k_j,   u_ti = scale q_t . mk_i + b_i,   lse_t = log(sum_j e^{s_tj} + sum_i e^{u_ti})
    o_t  = sum_j e^{s_tj - lse_t} v_j + sum_i e^{u_ti - lse_t} mv_i

Shapes: q ``(B, H, Tq, D)``; k, v ``(B, Hk, Tk, D)`` with ``Tk >= Tq`` (query i sits at key
position ``Tk - Tq + i``: earlier keys are a cached prefix) and ``H % Hk == 0``;
meta_k, meta_v ``(H, m, D)`` and meta_bias ``(H, m)`` (a learned logit per slot, so a slot can
be switched off whatever the query) or None. ``meta_bias`` alone (meta_k and meta_v None) gives
*sink logits*: ``u_ti = b_i`` adds ``e^{b_i}`` to the denominator and nothing to the values. Returns ``(o, lse)`` with o in q's dtype, lse float32+.

``key_start`` ``(B,)`` (integers) or None: a left-padded batch. Row ``b``'s keys before index
``key_start[b]`` (of ``k``) are padding, which no query attends to but its own position's (so a
padding query, whose output nobody reads, stays finite).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lizardlm.ops.utils import compute_dtype, expand_heads


def _meta_scores(q: torch.Tensor, meta_k, scale: float, meta_bias=None) -> torch.Tensor | None:
    """``scale q . mk_i + b_i`` for every meta slot (``b_i`` alone for sink logits), ``(B, H, ..., m)``."""
    if meta_k is None:
        if meta_bias is None or meta_bias.shape[-1] == 0:
            return None
        return meta_bias.to(q.dtype).view(1, meta_bias.shape[0], *([1] * (q.ndim - 3)), -1).expand(*q.shape[:-1], -1)
    if meta_k.shape[-2] == 0:
        return None
    scores = scale * torch.einsum("bh...d,hmd->bh...m", q, meta_k.to(q.dtype))
    if meta_bias is not None:
        scores = scores + meta_bias.to(q.dtype).view(meta_bias.shape[0], *([1] * (scores.ndim - 3)), -1)
    return scores


def _combine(scores, values, meta_scores, meta_v, out_dtype):
    """Softmax over window scores (already -inf where masked) and meta scores; returns (o, lse)."""
    if meta_scores is not None:
        scores = torch.cat([scores, meta_scores], dim=-1)
    lse = torch.logsumexp(scores, dim=-1)
    p = torch.exp(scores - lse[..., None])
    n_win = values.shape[-2]
    o = p[..., :n_win] @ values
    if meta_scores is not None and meta_v is not None:
        o = o + torch.einsum("bh...m,hmd->bh...d", p[..., n_win:], meta_v.to(o.dtype))
    return o.to(out_dtype), lse


def not_padding(kpos: torch.Tensor, qpos: torch.Tensor, key_start: torch.Tensor | None) -> torch.Tensor | bool:
    """Which keys a query may read in a left-padded batch: ``(B, 1, *shape)`` for key and query
    indices ``kpos``, ``qpos`` that broadcast to ``shape`` (True without ``key_start``): a key that is
    not padding, or the query's own position."""
    if key_start is None:
        return True
    start = key_start.to(kpos.device).view(-1, 1, *([1] * max(kpos.ndim, qpos.ndim)))
    return (kpos >= start) | (kpos == qpos)


def window_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    scale: float,
    meta_k: torch.Tensor | None = None,
    meta_v: torch.Tensor | None = None,
    meta_bias: torch.Tensor | None = None,
    key_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: full Tq x Tk score matrix with a band mask."""
    dtype, out_dtype = compute_dtype(q), q.dtype
    H, Tq, Tk = q.shape[1], q.shape[2], k.shape[2]
    q = q.to(dtype)
    k, v = expand_heads(k.to(dtype), H), expand_heads(v.to(dtype), H)
    qpos = torch.arange(Tk - Tq, Tk, device=q.device)[:, None]
    kpos = torch.arange(Tk, device=q.device)[None, :]
    band = (kpos <= qpos) & (kpos > qpos - window) & not_padding(kpos, qpos, key_start)
    scores = (scale * q @ k.transpose(-1, -2)).masked_fill(~band, float("-inf"))
    return _combine(scores, v, _meta_scores(q, meta_k, scale, meta_bias), meta_v, out_dtype)


def window_attention_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    scale: float,
    meta_k: torch.Tensor | None = None,
    meta_v: torch.Tensor | None = None,
    chunk_size: int = 64,
    meta_bias: torch.Tensor | None = None,
    key_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-banded form: each block of C queries scores only its C + w - 1 candidate keys.

    Memory O(Tq (C + w)) instead of O(Tq Tk).
    """
    dtype = compute_dtype(q)
    B, H, Tq, D = q.shape
    Hk, Tk = k.shape[1], k.shape[2]
    C, w = chunk_size, window
    # Re-index keys so that query t's window is exactly rows [t, t + w) of `kp`.
    lead = w - 1 - (Tk - Tq)
    pad = (-Tq) % C
    n = (Tq + pad) // C
    kp, vp = (F.pad(x.to(dtype)[:, :, max(0, -lead) :], (0, 0, max(0, lead), pad)) for x in (k, v))
    span = C + w - 1
    # Grouped-query attention by broadcasting: (B, Hk, 1, n, span, D) against (B, Hk, G, n, C, D).
    kb = kp.unfold(2, span, C).transpose(-1, -2).unsqueeze(2)
    vb = vp.unfold(2, span, C).transpose(-1, -2).unsqueeze(2)
    qb = F.pad(q.to(dtype), (0, 0, 0, pad)).view(B, Hk, H // Hk, n, C, D)
    # Row r of block c is kp index c*C + r, i.e. key position c*C + r - lead.
    i = torch.arange(C, device=q.device)[:, None]
    r = torch.arange(span, device=q.device)[None, :]
    in_band = (r >= i) & (r < i + w)
    key_pos = torch.arange(n, device=q.device)[:, None, None] * C + r[None] - lead
    query_pos = torch.arange(n, device=q.device)[:, None, None] * C + i[None] + Tk - Tq
    valid = in_band[None] & (key_pos >= 0) & (key_pos < Tk) & not_padding(key_pos, query_pos, key_start)
    # padding queries past the end may have no key at all: give them their (zero) first band slot,
    # or their -inf log-sum-exp turns the discarded rows into NaN gradients
    valid = valid | (~valid.any(-1, keepdim=True) & (r == i)[None])  # (n, C, span), or (B, 1, n, C, span)
    scores = (scale * qb @ kb.transpose(-1, -2)).view(B, H, n, C, span).masked_fill(~valid, float("-inf"))
    meta = _meta_scores(qb.view(B, H, n, C, D), meta_k, scale, meta_bias)
    if meta is not None:
        scores = torch.cat([scores, meta], dim=-1)
    lse = torch.logsumexp(scores, dim=-1)
    p = torch.exp(scores - lse[..., None])
    o = (p[..., :span].view(B, Hk, H // Hk, n, C, span) @ vb).view(B, H, n, C, -1)
    if meta is not None and meta_v is not None:
        o = o + torch.einsum("bhncm,hmd->bhncd", p[..., span:], meta_v.to(dtype))
    return o.to(q.dtype).reshape(B, H, n * C, -1)[:, :, :Tq], lse.reshape(B, H, n * C)[:, :, :Tq]


def window_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    scale: float,
    meta_k: torch.Tensor | None = None,
    meta_v: torch.Tensor | None = None,
    meta_bias: torch.Tensor | None = None,
    key_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query at a time, each reading only a buffer of the last ``window`` keys."""
    Tq, Tk = q.shape[2], k.shape[2]
    outs, lses = [], []
    for t in range(Tq):
        end = Tk - Tq + t + 1
        start = max(0, end - window)
        o, lse = window_attention_naive(
            q[:, :, t : t + 1], k[:, :, start:end], v[:, :, start:end], window, scale, meta_k, meta_v, meta_bias,
            None if key_start is None else key_start - start,
        )
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)
