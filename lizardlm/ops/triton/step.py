"""One decoding step of Lizard attention as a single Triton kernel per (b, h): the fused form of
:func:`lizardlm.ops.lizard.lizard_attention_step` (same state in, same state out).

With ``L`` tokens in the window state and the new token appended (``L + 1`` entries), the gated
state decays by ``e^{g}``; when ``L + 1 > w`` the oldest token leaves the window. In the shared form
it enters the state then::

    S <- e^{g} S + e^{sum(g_1..g_L)} fk_0 [v_0, 1]^T
    o  = softmax-window attention of q over the kept tokens and the meta slots
    y  = (o + fq . S[:, :V]) / (1 + fq . S[:, V])

In the sum form (``SUM``) the new token enters the state at once and the output adds the branches::

    S <- e^{g} S + fk_new [v_new, 1]^T,    y = fq . S[:, :V] / (fq . S[:, V] + eps) + alpha_h o

With a value map (``HAS_VMAP``) the token entering the state brings ``v W_h`` instead of ``v``.

``PAD`` (a left-padded batch, each row's padding count among the state's tokens and the new one):
no query reads a padding key. Everything is computed in float32 (the state is float32); keys,
values and features keep their dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lizardlm.ops.lizard import SUM_EPS, LizardState, drop_padding

_SUM_EPS = tl.constexpr(SUM_EPS)


@triton.jit
def _step(
    Q, Kn, Vn, FQ, FKn, GATE, KV, KEYS, VALS, FEATS, LG, MK, MV, MB, ALPHA, PAD, VMAP,
    Y, KV_OUT, KEYS_OUT, VALS_OUT, FEATS_OUT, LG_OUT,
    H, G, L, M, scale,
    D: tl.constexpr, DV: tl.constexpr, F: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, BF: tl.constexpr,
    BL: tl.constexpr, BMETA: tl.constexpr, FOLD: tl.constexpr, HAS_GATE: tl.constexpr, HAS_META: tl.constexpr,
    SUM: tl.constexpr, HAS_PAD: tl.constexpr, HAS_VMAP: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # b * H + h
    b = pid // H
    h = pid % H
    kvh = b * (H // G) + h // G
    Lo = L + 1 - FOLD  # tokens kept
    offs_d = tl.arange(0, BD)
    offs_v = tl.arange(0, BDV)
    offs_f = tl.arange(0, BF)
    offs_l = tl.arange(0, BL)
    dmask = offs_d < D
    vmask = offs_v < DV
    fmask = offs_f < F
    lmask = offs_l < L
    keep = lmask & (offs_l >= FOLD)  # old tokens still in the window after this step
    attend = keep
    if HAS_PAD:
        attend = keep & (offs_l >= tl.load(PAD + b))
    # gates: the state decays by e^g; the folded token accrued e^{sum of the others' gates}
    g_new = tl.full([], 0.0, tl.float32)
    if HAS_GATE:
        g_new = tl.load(GATE + pid).to(tl.float32)
    # gated state, value columns and the normaliser column
    kv_ptr = KV + pid * F * (DV + 1) + offs_f[:, None] * (DV + 1) + offs_v[None, :]
    S = tl.load(kv_ptr, mask=fmask[:, None] & vmask[None, :], other=0.0) * tl.exp(g_new)
    sz = tl.load(KV + pid * F * (DV + 1) + offs_f * (DV + 1) + DV, mask=fmask, other=0.0) * tl.exp(g_new)
    k_new = tl.load(Kn + kvh * D + offs_d, mask=dmask, other=0.0)
    v_new = tl.load(Vn + kvh * DV + offs_v, mask=vmask, other=0.0)
    if HAS_VMAP:  # W_h of this key/value head, rows = input value dims
        wmap = tl.load(VMAP + (h // G) * DV * DV + offs_v[:, None] * DV + offs_v[None, :],
                       mask=vmask[:, None] & vmask[None, :], other=0.0).to(tl.float32)
    if SUM:  # the new token enters the state at once
        f_new = tl.load(FKn + kvh * F + offs_f, mask=fmask, other=0.0).to(tl.float32)
        v_in = v_new.to(tl.float32)
        if HAS_VMAP:
            v_in = tl.sum(v_in[:, None] * wmap, 0)
        S += f_new[:, None] * v_in[None, :]
        sz += f_new
    else:
        lg = tl.load(LG + pid * L + offs_l, mask=lmask, other=0.0)
        if FOLD:  # the oldest token leaves the window and enters the state
            decay = tl.exp(tl.sum(tl.where(keep, lg, 0.0), 0) + g_new)
            f0 = tl.load(FEATS + kvh * L * F + offs_f, mask=fmask, other=0.0).to(tl.float32) * decay
            v0 = tl.load(VALS + kvh * L * DV + offs_v, mask=vmask, other=0.0).to(tl.float32)
            if HAS_VMAP:
                v0 = tl.sum(v0[:, None] * wmap, 0)
            S += f0[:, None] * v0[None, :]
            sz += f0
    # window attention over the kept old tokens, the new token and the meta slots
    q = tl.load(Q + pid * D + offs_d, mask=dmask, other=0.0).to(tl.float32)
    keys = tl.load(KEYS + kvh * L * D + offs_l[:, None] * D + offs_d[None, :], mask=keep[:, None] & dmask[None, :], other=0.0)
    vals = tl.load(VALS + kvh * L * DV + offs_l[:, None] * DV + offs_v[None, :], mask=keep[:, None] & vmask[None, :], other=0.0)
    s = tl.where(attend, tl.sum(keys.to(tl.float32) * q[None, :], 1) * scale, float("-inf"))
    s_new = tl.sum(k_new.to(tl.float32) * q, 0) * scale
    m = tl.maximum(tl.max(s, 0), s_new)
    if HAS_META:
        offs_e = tl.arange(0, BMETA)
        emask = offs_e < M
        mk = tl.load(MK + h * M * D + offs_e[:, None] * D + offs_d[None, :], mask=emask[:, None] & dmask[None, :], other=0.0)
        mv = tl.load(MV + h * M * DV + offs_e[:, None] * DV + offs_v[None, :], mask=emask[:, None] & vmask[None, :], other=0.0)
        mb = tl.load(MB + h * M + offs_e, mask=emask, other=0.0).to(tl.float32)
        s_e = tl.where(emask, tl.sum(mk.to(tl.float32) * q[None, :], 1) * scale + mb, float("-inf"))
        m = tl.maximum(m, tl.max(s_e, 0))
    p = tl.exp(s - m)
    p_new = tl.exp(s_new - m)
    den = tl.sum(p, 0) + p_new
    o = tl.sum(p[:, None] * tl.where(attend[:, None], vals.to(tl.float32), 0.0), 0) + p_new * v_new.to(tl.float32)
    if HAS_META:
        p_e = tl.exp(s_e - m)
        den += tl.sum(p_e, 0)
        o += tl.sum(p_e[:, None] * mv.to(tl.float32), 0)
    o = o / den
    # linear branch: the shared normaliser, or its own beside alpha times the window's output
    fq = tl.load(FQ + pid * F + offs_f, mask=fmask, other=0.0).to(tl.float32)
    n = tl.sum(fq[:, None] * S, 0)
    z = tl.sum(fq * sz, 0)
    if SUM:
        y = n / (z + _SUM_EPS) + tl.load(ALPHA + h).to(tl.float32) * o
    else:
        y = (o + n) / (1.0 + z)
    tl.store(Y + pid * DV + offs_v, y.to(Y.dtype.element_ty), mask=vmask)
    # the new state: old entries shift down by FOLD, the new token goes last
    tl.store(KV_OUT + pid * F * (DV + 1) + offs_f[:, None] * (DV + 1) + offs_v[None, :], S, mask=fmask[:, None] & vmask[None, :])
    tl.store(KV_OUT + pid * F * (DV + 1) + offs_f * (DV + 1) + DV, sz, mask=fmask)
    dst = offs_l - FOLD
    if not SUM:  # the sum form keeps no features or log-decays of its window
        tl.store(LG_OUT + pid * Lo + dst, lg, mask=keep)
        tl.store(LG_OUT + pid * Lo + Lo - 1, g_new)
    if h % G == 0:  # one query head per group writes the key-side state
        tl.store(KEYS_OUT + kvh * Lo * D + dst[:, None] * D + offs_d[None, :], keys, mask=keep[:, None] & dmask[None, :])
        tl.store(VALS_OUT + kvh * Lo * DV + dst[:, None] * DV + offs_v[None, :], vals, mask=keep[:, None] & vmask[None, :])
        tl.store(KEYS_OUT + kvh * Lo * D + (Lo - 1) * D + offs_d, k_new, mask=dmask)
        tl.store(VALS_OUT + kvh * Lo * DV + (Lo - 1) * DV + offs_v, v_new, mask=vmask)
        if not SUM:
            feats = tl.load(FEATS + kvh * L * F + offs_l[:, None] * F + offs_f[None, :], mask=keep[:, None] & fmask[None, :], other=0.0)
            tl.store(FEATS_OUT + kvh * Lo * F + dst[:, None] * F + offs_f[None, :], feats, mask=keep[:, None] & fmask[None, :])
            fk_new = tl.load(FKn + kvh * F + offs_f, mask=fmask, other=0.0)
            tl.store(FEATS_OUT + kvh * Lo * F + (Lo - 1) * F + offs_f, fk_new, mask=fmask)


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def lizard_step_cuda(
    q, k, v, fq, fk, g, *, window: int, scale: float, meta_k=None, meta_v=None, meta_bias=None, state: LizardState,
    combine: str = "shared", alpha=None, key_start=None, value_map=None,
) -> tuple[torch.Tensor, LizardState]:
    """:func:`lizardlm.ops.lizard.lizard_attention_step` in one kernel launch (all inputs T = 1): either
    form, meta key/value slots or sink logits (``meta_bias`` alone), a left-padded batch's ``key_start``, a
    value map ``(Hk, V, V)``."""
    B, H, _, D = q.shape
    Hk, DV, Fd = k.shape[1], v.shape[-1], fq.shape[-1]
    L = state.keys.shape[2]
    summed = combine == "sum"
    fold = L + 1 > window
    Lo = L + 1 - fold
    fk = drop_padding(fk, key_start, L)
    x = [t.contiguous() for t in (q, k, v, fq, fk)]
    st = [t.contiguous() for t in state.tensors()]
    kv_out = torch.empty_like(st[0])
    keys_out, vals_out = (t.new_empty(B, Hk, Lo, t.shape[-1]) for t in st[1:3])
    y = q.new_empty(B, H, 1, DV)
    if meta_k is None and meta_bias is not None and meta_bias.shape[-1] > 0:  # sink logits: slots with zero keys/values
        meta_k, meta_v = q.new_zeros(H, meta_bias.shape[-1], D), q.new_zeros(H, meta_bias.shape[-1], DV)
    has_meta = meta_k is not None and meta_k.shape[-2] > 0
    M = meta_k.shape[-2] if has_meta else 0
    dummy = q.new_empty(1)
    if has_meta and meta_bias is None:
        meta_bias = q.new_zeros(H, M, dtype=torch.float32)
    if summed:  # no features or log-decays kept: the kernel never reads or writes them (no empty pointers)
        kept = (state.key_features, state.log_gates)
        st[3:] = out = [dummy, dummy]
    else:
        out = kept = [st[3].new_empty(B, Hk, Lo, Fd), st[4].new_empty(B, H, Lo)]
    _step[(B * H,)](
        *x, g.contiguous() if g is not None else dummy, *st,
        meta_k.contiguous() if has_meta else dummy, meta_v.contiguous() if has_meta else dummy,
        meta_bias.contiguous() if has_meta else dummy,
        alpha.float().contiguous() if summed else dummy,
        key_start.to(device=q.device, dtype=torch.int32).contiguous() if key_start is not None else dummy,
        value_map.contiguous() if value_map is not None else dummy,
        y, kv_out, keys_out, vals_out, *out,
        H, H // Hk, L, M, float(scale),
        D=D, DV=DV, F=Fd, BD=_pow2(D), BDV=_pow2(DV), BF=_pow2(Fd), BL=_pow2(max(L, window)), BMETA=_pow2(max(M, 1)),
        FOLD=int(fold), HAS_GATE=g is not None, HAS_META=has_meta, SUM=summed, HAS_PAD=key_start is not None,
        HAS_VMAP=value_map is not None,
        num_warps=8,
    )
    return y, LizardState(kv_out, keys_out, vals_out, *kept)
