"""Lizard attention: sliding-window softmax + meta memory, and gated linear attention, in two forms.

Per batch and query head, with window ``w``, log-decays ``g`` (``G_t = sum_{r<=t} g_r``),
features ``fq_t`` and ``fk_j = phi(k_j)``, ``(o_t, lse_t) = window_attention(q, k, v, w, meta)``
(see ops.window; meta slots or sink logits) and the gated sums over a set ``J_t`` of tokens::

    N_t = sum_{j in J_t} exp(G_t - G_j) (fq_t . fk_j) v_j,    Z_t = sum_{j in J_t} exp(G_t - G_j) (fq_t . fk_j)

``combine="shared"`` (our reading): ``J_t = {j <= t - w}`` (tokens that left the window) and
``y_t = (o_t + N_t) / (1 + Z_t)``, i.e. window scores measured against their own log-sum-exp, the
linear branch adding its unnormalised mass (``fq`` carries ``e^beta``). Token ``j`` enters the state
at ``j + w`` carrying the decay it accrued meanwhile: ``k'_{j+w} = exp(G_{j+w} - G_j) fk_j``.

``combine="sum"`` (the paper): ``J_t = {j <= t}`` (all tokens) and
``y_t = N_t / (Z_t + eps) + alpha_h o_t``: two separately normalised branches, ``alpha`` ``(H,)``
learned, ``eps = SUM_EPS`` (1e-6) against an underflowing normaliser.

``value_map`` ``(Hk, V, V)`` (optional, either form): the linear branch stores ``v_j W_h`` instead of
``v_j`` (one learned map per key/value head, :func:`map_values`); the window reads ``v`` as it is. The
memory is linear in its values, so this is ``N_t W_h``: the lookup gets a read-out of its own.

Both run a standard gated linear attention over ``v' = [v W, 1]`` (the 1 yields Z); ``shift`` below is
``w`` or 0. Shapes: q ``(B, H, T, D)``; k ``(B, Hk, T, D)``; v ``(B, Hk, T, V)``; fq ``(B, H, T, F)``;
fk ``(B, Hk, T, F)``; g ``(B, H, T)`` or None; meta_k/meta_v ``(H, m, D|V)``, meta_bias ``(H, m)``
or None.

Left-padded batches: ``key_start`` ``(B,)`` counts the padding tokens at the head of each row's key
sequence (a state's window tokens, then the call's), as in :mod:`lizardlm.ops.window`. Padding
writes nothing into the linear memory (its key features count as zero) and no query reads it in
the window, so each row's real tokens get what that row alone would.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from lizardlm.ops.gla import gla_chunk
from lizardlm.ops.utils import compute_dtype, expand_heads
from lizardlm.ops.window import window_attention_chunk, window_attention_naive


@dataclass
class LizardState:
    """What one Lizard attention carries between calls; its size never depends on the context.

    kv_state: ``(B, H, F, V + 1)`` gated sum of ``fk [v W, 1]^T`` (``v`` without a value map) over the
        tokens of the linear branch (those that left the window in the shared form, all of them in the
        sum form).
    keys, values: ``(B, Hk, L, ·)`` the last ``L <= w`` tokens (keys as the window branch sees them).
    key_features, log_gates: ``(B, Hk, L, F)``, ``(B, H, L)`` their features and log-decays, which
        the shared form needs when a token leaves the window; empty (length 0) in the sum form.
    """

    kv_state: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    key_features: torch.Tensor
    log_gates: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def map(self, fn) -> "LizardState":
        """A new state with ``fn`` applied to every tensor (device moves, batch selection...)."""
        return LizardState(*(fn(t) for t in self.tensors()))


def _log_gates(q: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    dtype = compute_dtype(q)
    return q.new_zeros(q.shape[:3], dtype=dtype) if g is None else g.to(dtype)


SUM_EPS = 1e-6
"""Added to the sum form's normaliser: ``y_gla = N / (Z + eps)``. Peaked feature maps and a gate that
forgets at once can make ``Z = phi(q) . z`` underflow (the gradient, ~1/Z^2, then overflows: seen
training the paper form); the shared form's ``1 + Z`` needs none. fla adds 1e-5, fast-transformers 1e-6."""

COMBINES = ("shared", "sum")


def map_values(v: torch.Tensor, value_map: torch.Tensor | None) -> torch.Tensor:
    """The values the linear memory stores: ``v W_h`` per key/value head (``v`` ``(B, Hk, T, V)``,
    ``value_map`` ``(Hk, V, V)``, in ``v``'s dtype), ``v`` itself without a map. Values whose grouped
    heads were expanded to the query heads (``state_as_prefix`` does) get each group's map."""
    if value_map is None:
        return v
    value_map = expand_heads(value_map[None], v.shape[1])[0]
    return torch.einsum("bhtv,hvw->bhtw", v, value_map.to(v.dtype))


def _check_combine(combine: str, alpha) -> None:
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}; choose one of {', '.join(COMBINES)}")
    if combine == "sum" and alpha is None:
        raise ValueError("combine='sum' needs alpha (one weight per head)")


def _finish(o: torch.Tensor, lin: torch.Tensor, combine: str = "shared", alpha=None) -> torch.Tensor:
    """y from the window output and the linear branch ``[N, Z]``: ``(o + N) / (1 + Z)`` (shared)
    or ``N / (Z + eps) + alpha o`` (sum, ``SUM_EPS``)."""
    dtype = compute_dtype(o)
    V = o.shape[-1]
    if combine == "shared":
        return ((o.to(dtype) + lin[..., :V]) / (1.0 + lin[..., V:])).to(o.dtype)
    a = alpha.to(dtype).view(1, -1, 1, 1)
    return (lin[..., :V] / (lin[..., V:] + SUM_EPS) + a * o.to(dtype)).to(o.dtype)


def drop_padding(fk: torch.Tensor, key_start: torch.Tensor | None, offset: int = 0) -> torch.Tensor:
    """``fk`` ``(B, ., T, F)`` with the features of left padding zeroed: position ``t`` of row ``b``
    is padding when ``offset + t < key_start[b]`` (``offset``: the keys held before, a state's window)."""
    if key_start is None:
        return fk
    pad = torch.arange(offset, offset + fk.shape[2], device=fk.device) < key_start.to(fk.device)[:, None]
    return fk.masked_fill(pad[:, None, :, None], 0.0)


def lizard_attention_naive(
    q, k, v, fq, fk, g, *, window: int, scale: float, meta_k=None, meta_v=None, meta_bias=None,
    combine: str = "shared", alpha=None, kv_state=None, key_start=None, value_map=None,
) -> torch.Tensor:
    """Reference: the equations above with explicit T x T matrices (no cache). ``kv_state``
    ``(B, H, F, V + 1)``: a linear memory before the first token (no window tokens), which adds
    ``exp(G_t) fq_t . kv_state`` to ``[N_t, Z_t]``."""
    _check_combine(combine, alpha)
    dtype = compute_dtype(q)
    H, T = q.shape[1], q.shape[2]
    o, _ = window_attention_naive(q, k, v, window, scale, meta_k, meta_v, meta_bias, key_start)
    fk = drop_padding(fk, key_start)
    G = _log_gates(q, g).cumsum(-1)
    t = torch.arange(T, device=q.device)
    old = t[None, :] <= t[:, None] - (window if combine == "shared" else 0)
    decay = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~old, float("-inf")))
    A = fq.to(dtype) @ expand_heads(fk.to(dtype), H).transpose(-1, -2) * decay
    lin = torch.cat([A @ expand_heads(map_values(v.to(dtype), value_map), H), A.sum(-1, keepdim=True)], dim=-1)
    if kv_state is not None:
        lin = lin + torch.exp(G)[..., None] * (fq.to(dtype) @ kv_state.to(dtype))
    return _finish(o, lin, combine, alpha)


def empty_state(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fk: torch.Tensor) -> LizardState:
    """The state before the first token (either form)."""
    B, H = q.shape[:2]
    Hk = k.shape[1]
    dtype = compute_dtype(q)
    return LizardState(
        kv_state=q.new_zeros(B, H, fk.shape[-1], v.shape[-1] + 1, dtype=dtype),
        keys=k.new_zeros(B, Hk, 0, k.shape[-1]),
        values=v.new_zeros(B, Hk, 0, v.shape[-1]),
        key_features=fk.new_zeros(B, Hk, 0, fk.shape[-1]),
        log_gates=q.new_zeros(B, H, 0, dtype=dtype),
    )


def linear_state(kv_state: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 fk: torch.Tensor) -> LizardState:
    """A state that holds a linear memory ``kv_state`` ``(B, H, F, V + 1)`` and no window tokens: the
    history a row starts from under stage 2's state passing (``lizardlm.train.state_passing``)."""
    return replace(empty_state(q, k, v, fk), kv_state=kv_state)


def state_as_prefix(state: LizardState, q, k, v, fq, fk, g, *, combine: str = "shared"):
    """The same call as ``op(q, k, v, fq, fk, g, state=state)`` for an op that starts only from a
    linear memory (the Triton kernels): the state's ``L`` window tokens go before the chunk as extra
    positions, whose outputs the caller drops (``y[:, :, L:]``), and the op starts from
    ``state.kv_state``. Returns ``(q, k, v, fq, fk, g)`` of length ``L + T`` and ``L``.

    The prefix's queries and query features are zeros and its log-decays zero, so the memory decays
    over the chunk only. In the sum form every state token is in the memory already: the prefix's key
    features are zeros. In the shared form prefix token ``j`` enters the memory at ``j + w``, inside
    the chunk, with ``k'_{j+w} = exp(G_{j+w} - G_j) fk_j``; the prefix carries the decay that
    ``G`` loses to the zeroed log-decays in its features instead, ``fk'_j = exp(G_{L-1} - G_j) fk_j``
    (a factor <= 1, per query head: grouped key/value heads are expanded to ``H``)."""
    L, H = state.keys.shape[2], q.shape[1]
    zeros = lambda x, n: x.new_zeros(*x.shape[:2], n, *x.shape[3:])  # noqa: E731
    gates = None if g is None else torch.cat([zeros(g, L), g], dim=2)
    if combine == "sum":
        prefix_fk = zeros(fk, L)
    else:
        G = state.log_gates.cumsum(-1)
        carried = torch.exp(G[..., -1:] - G)[..., None]  # (B, H, L, 1)
        prefix_fk = (expand_heads(state.key_features, H) * carried).to(fk.dtype)
        if k.shape[1] != H:  # the carried decay differs per query head
            k, v, fk = (expand_heads(x, H) for x in (k, v, fk))
            state = replace(state, keys=expand_heads(state.keys, H), values=expand_heads(state.values, H))
    return (torch.cat([zeros(q, L), q], dim=2), torch.cat([state.keys.to(k.dtype), k], dim=2),
            torch.cat([state.values.to(v.dtype), v], dim=2), torch.cat([zeros(fq, L), fq], dim=2),
            torch.cat([prefix_fk, fk], dim=2), gates), L


def lizard_attention_chunk(
    q,
    k,
    v,
    fq,
    fk,
    g,
    *,
    window: int,
    scale: float,
    meta_k=None,
    meta_v=None,
    meta_bias=None,
    state: LizardState | None = None,
    chunk_size: int = 64,
    combine: str = "shared",
    alpha=None,
    key_start=None,
    value_map=None,
) -> tuple[torch.Tensor, LizardState]:
    """Chunked parallel form, continuing from ``state`` (None: the sequence starts here).

    Memory O(T (C + w)); returns (y, state after the last token).
    """
    _check_combine(combine, alpha)
    H, T = q.shape[1], q.shape[2]
    dtype = compute_dtype(q)
    if state is None:
        state = empty_state(q, k, v, fk)
    L = state.keys.shape[2]
    g = _log_gates(q, g)
    fk = drop_padding(fk, key_start, L)
    kc, vc = (k, v) if L == 0 else (torch.cat([state.keys, k], dim=2), torch.cat([state.values, v], dim=2))
    o, _ = window_attention_chunk(q, kc, vc, window, scale, meta_k, meta_v, chunk_size, meta_bias, key_start)
    keep = slice(max(0, L + T - window), None)

    if combine == "sum":  # every token enters the state at once
        v_lin = map_values(v.to(dtype), value_map)
        v_in = expand_heads(torch.cat([v_lin, torch.ones_like(v_lin[..., :1])], dim=-1), H)
        lin, kv_state = gla_chunk(fq.to(dtype), expand_heads(fk.to(dtype), H), v_in, g, state.kv_state, chunk_size)
        new_state = LizardState(kv_state, kc[:, :, keep], vc[:, :, keep], state.key_features, state.log_gates)
        return _finish(o, lin, combine, alpha), new_state

    fkc, gc = (fk, g) if L == 0 else (torch.cat([state.key_features, fk], dim=2), torch.cat([state.log_gates, g], dim=2))
    # Shifted keys/values: position L + t receives the token at combined index L + t - w.
    src = torch.arange(L, L + T, device=q.device) - window
    valid = (src >= 0).to(dtype)[:, None]
    src = src.clamp(min=0)
    Gc = gc.cumsum(-1)
    decay = torch.exp((Gc[..., L:] - Gc[..., src]) * valid[:, 0])
    k_in = expand_heads(fkc[:, :, src].to(dtype), H) * (decay[..., None] * valid)
    v_src = map_values(vc.to(dtype), value_map)[:, :, src]
    v_in = expand_heads(torch.cat([v_src, torch.ones_like(v_src[..., :1])], dim=-1), H) * valid
    lin, kv_state = gla_chunk(fq.to(dtype), k_in, v_in, g, state.kv_state, chunk_size)
    new_state = LizardState(kv_state, kc[:, :, keep], vc[:, :, keep], fkc[:, :, keep], gc[:, :, keep])
    return _finish(o, lin), new_state


def lizard_attention_step(
    q, k, v, fq, fk, g, *, window: int, scale: float, meta_k=None, meta_v=None, meta_bias=None, state: LizardState,
    combine: str = "shared", alpha=None, key_start=None, value_map=None,
) -> tuple[torch.Tensor, LizardState]:
    """One decoding step (all inputs have T = 1): O(w) work and O(1) memory."""
    _check_combine(combine, alpha)
    H = q.shape[1]
    dtype = compute_dtype(q)
    keys = torch.cat([state.keys, k], dim=2)
    values = torch.cat([state.values, v], dim=2)
    g = _log_gates(q, g)
    fk = drop_padding(fk, key_start, state.keys.shape[2])
    total = keys.shape[2]  # key_start counts in [state window, new token]; the window keeps the last `kept`
    start = lambda kept: None if key_start is None else key_start - (total - kept)  # noqa: E731
    if combine == "sum":  # the new token enters the state; the window keeps the last w tokens
        f_new = expand_heads(fk[:, :, 0].to(dtype), H)
        v_lin = map_values(v[:, :, 0:1].to(dtype), value_map)[:, :, 0]
        v_new = expand_heads(torch.cat([v_lin, torch.ones_like(v_lin[..., :1])], dim=-1), H)
        kv_state = torch.exp(g[..., -1])[..., None, None] * state.kv_state + f_new[..., :, None] * v_new[..., None, :]
        keys, values = keys[:, :, -window:], values[:, :, -window:]
        o, _ = window_attention_naive(q, keys, values, window, scale, meta_k, meta_v, meta_bias, start(keys.shape[2]))
        lin = fq.to(dtype) @ kv_state
        return _finish(o, lin, combine, alpha), LizardState(kv_state, keys, values, state.key_features, state.log_gates)
    feats = torch.cat([state.key_features, fk], dim=2)
    log_gates = torch.cat([state.log_gates, g], dim=2)
    kv_state = torch.exp(log_gates[..., -1])[..., None, None] * state.kv_state
    if keys.shape[2] > window:  # the oldest token leaves the window and enters the linear state
        decay = torch.exp(log_gates[..., 1:].sum(-1))[..., None, None]
        f_out = expand_heads(feats[:, :, 0].to(dtype), H)
        v_out = expand_heads(map_values(values[:, :, 0:1].to(dtype), value_map)[:, :, 0], H)
        v_out = torch.cat([v_out, torch.ones_like(v_out[..., :1])], dim=-1)
        kv_state = kv_state + decay * f_out[..., :, None] * v_out[..., None, :]
        keys, values, feats, log_gates = keys[:, :, 1:], values[:, :, 1:], feats[:, :, 1:], log_gates[:, :, 1:]
    o, _ = window_attention_naive(q, keys, values, window, scale, meta_k, meta_v, meta_bias, start(keys.shape[2]))
    lin = fq.to(dtype) @ kv_state
    return _finish(o, lin), LizardState(kv_state, keys, values, feats, log_gates)


def lizard_attention_recurrent(
    q, k, v, fq, fk, g, *, window: int, scale: float, meta_k=None, meta_v=None, meta_bias=None,
    state: LizardState | None = None, combine: str = "shared", alpha=None, key_start=None, value_map=None,
) -> tuple[torch.Tensor, LizardState]:
    """Token-by-token form built from :func:`lizard_attention_step`."""
    if state is None:
        state = empty_state(q, k, v, fk)
    g = _log_gates(q, g)
    outs = []
    first = state.keys.shape[2]  # key_start counts from the state's first window token
    for t in range(q.shape[2]):
        sl = slice(t, t + 1)
        y, state = lizard_attention_step(
            q[:, :, sl], k[:, :, sl], v[:, :, sl], fq[:, :, sl], fk[:, :, sl], g[:, :, sl],
            window=window, scale=scale, meta_k=meta_k, meta_v=meta_v, meta_bias=meta_bias, state=state,
            combine=combine, alpha=alpha, value_map=value_map,
            key_start=None if key_start is None else key_start - (first + t - state.keys.shape[2]),
        )
        outs.append(y)
    return torch.cat(outs, dim=2), state
