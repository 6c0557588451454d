"""Triton kernels of the Lizard attention op (see ``lizardlm.ops.lizard`` for the equations).

Layout: every tensor is contiguous ``(B, heads, T, dim)``; query head ``h`` reads key/value head
``h // G``. Program ``bh`` is ``b * H + h``. Gradients with respect to key-side tensors are written
per *query* head and summed over the group by the caller.

Linear branch = chunked gated linear attention over shifted keys ``k'_s = exp(gw_s) fk_{s-w}``,
``v'_s = v_{s-w}`` (zero for ``s < w``), with ``gw_s = G_s - G_{s-w}`` (in these kernels ``W`` is
that shift: the window in the shared form, 0 in the sum form, where gw = 0) and the chunk-local
inclusive cumulative log-decay ``gl`` (``B_c`` its value at the chunk's last row). ``h_c`` is the
state entering chunk ``c``; the normaliser's state ``hz_c`` is an extra F-vector.
"""

from __future__ import annotations

import triton
import triton.language as tl

from lizardlm.ops.lizard import SUM_EPS

_SUM_EPS = tl.constexpr(SUM_EPS)  # the sum form's y_gla = N / (Z + eps)


@triton.jit
def _win_fwd(
    Q, K, Vv, MK, MV, MB, O, LSE, PAD,
    T, H, G, M, scale,
    W: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, NBW: tl.constexpr, BMETA: tl.constexpr, HAS_META: tl.constexpr, PREC: tl.constexpr,
    HAS_PAD: tl.constexpr,
):
    """Sliding-window + meta softmax attention: o and base-2 log-sum-exp per query. HAS_PAD: a
    left-padded batch, PAD (B,) each row's padding count; a query reads no padding key but its own."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    kvh = b * (H // G) + h // G
    q_base = Q + pid_bh * T * D
    k_base = K + kvh * T * D
    v_base = Vv + kvh * T * DV
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    dmask = offs_d < D
    dvmask = offs_dv < DV
    mmask = offs_m < T
    q = tl.load(q_base + offs_m[:, None] * D + offs_d[None, :], mask=mmask[:, None] & dmask[None, :], other=0.0)
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([BM], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BDV], dtype=tl.float32)
    if HAS_META:
        offs_e = tl.arange(0, BMETA)
        emask = offs_e < M
        mk = tl.load(MK + h * M * D + offs_e[:, None] * D + offs_d[None, :], mask=emask[:, None] & dmask[None, :], other=0.0)
        mv = tl.load(MV + h * M * DV + offs_e[:, None] * DV + offs_dv[None, :], mask=emask[:, None] & dvmask[None, :], other=0.0)
        mb = tl.load(MB + h * M + offs_e, mask=emask, other=0.0).to(tl.float32)
        s_e = tl.dot(q, tl.trans(mk.to(q.dtype)), input_precision=PREC) * qk_scale + mb[None, :] * 1.4426950408889634
        s_e = tl.where(emask[None, :], s_e, float("-inf"))
        m_i = tl.maximum(m_i, tl.max(s_e, 1))
        p_e = tl.exp2(s_e - m_i[:, None])
        l_i = tl.sum(p_e, 1)
        acc = tl.dot(p_e.to(q.dtype), mv.to(q.dtype), input_precision=PREC)
    pad = 0
    if HAS_PAD:
        pad = tl.load(PAD + b)
    # key blocks pid_m - NBW .. pid_m (BN == BM); NBW = cdiv(W - 1, BM)
    for i in range(0, NBW + 1):
        offs_n = (pid_m - NBW + i) * BN + tl.arange(0, BN)
        nmask = (offs_n < T) & (offs_n >= 0)
        rows = tl.maximum(offs_n, 0)  # masked rows keep in-bounds addresses
        k = tl.load(k_base + rows[:, None] * D + offs_d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0)
        v = tl.load(v_base + rows[:, None] * DV + offs_dv[None, :], mask=nmask[:, None] & dvmask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        valid = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] > offs_m[:, None] - W) & nmask[None, :]
        if HAS_PAD:
            valid = valid & ((offs_n[None, :] >= pad) | (offs_n[None, :] == offs_m[:, None]))
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    o = acc / l_i[:, None]
    tl.store(O + pid_bh * T * DV + offs_m[:, None] * DV + offs_dv[None, :], o.to(O.dtype.element_ty),
             mask=mmask[:, None] & dvmask[None, :])
    tl.store(LSE + pid_bh * T + offs_m, m_i + tl.log2(l_i), mask=mmask)


@triton.jit
def _lin_fwd_h(
    FK, Vv, GL, GW, Hs, HZ, H0, H0Z, HT, HTZ,
    T, TP, H, G, NT,
    W: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    """States entering each chunk: Hs (B*H, NT, F, DV), HZ (B*H, NT, F) (normaliser); starting from
    H0 (B*H, F, DV), H0Z (B*H, F) if HAS_H0 (float32), else zero; the state after the last token into
    HT, HTZ (float32) if STORE_HT."""
    pid_k = tl.program_id(0)
    pid_v = tl.program_id(1)
    pid_bh = tl.program_id(2).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    kvh = b * (H // G) + h // G
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    kmask = offs_k < F
    vmask = offs_v < DV
    st = pid_bh * F * DV + offs_k[:, None] * DV + offs_v[None, :]
    stmask = kmask[:, None] & vmask[None, :]
    if HAS_H0:
        S = tl.load(H0 + st, mask=stmask, other=0.0)
        sz = tl.load(H0Z + pid_bh * F + offs_k, mask=kmask, other=0.0)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
        sz = tl.zeros([BK], dtype=tl.float32)
    for c in range(0, NT):
        h_ptr = Hs + (pid_bh * NT + c) * F * DV + offs_k[:, None] * DV + offs_v[None, :]
        tl.store(h_ptr, S.to(Hs.dtype.element_ty), mask=stmask)
        if pid_v == 0:
            tl.store(HZ + (pid_bh * NT + c) * F + offs_k, sz, mask=kmask)
        offs_t = c * BT + tl.arange(0, BT)
        tmask = offs_t < T
        gl = tl.load(GL + pid_bh * TP + offs_t)
        bc = tl.load(GL + pid_bh * TP + c * BT + BT - 1)
        gw = tl.load(GW + pid_bh * T + offs_t, mask=tmask, other=0.0)
        src = offs_t - W
        srow = tl.maximum(src, 0)
        valid = (src >= 0) & tmask
        fk = tl.load(FK + kvh * T * F + srow[:, None] * F + offs_k[None, :], mask=valid[:, None] & kmask[None, :], other=0.0)
        v = tl.load(Vv + kvh * T * DV + srow[:, None] * DV + offs_v[None, :], mask=valid[:, None] & vmask[None, :], other=0.0)
        kd = fk.to(tl.float32) * tl.exp(gw + bc - gl)[:, None]
        eb = tl.exp(bc)
        S = S * eb + tl.dot(tl.trans(kd.to(v.dtype)), v, input_precision=PREC)
        sz = sz * eb + tl.sum(kd, 0)
    if STORE_HT:  # padded rows past T carry no decay (gl is padded with zeros) and no token
        tl.store(HT + st, S, mask=stmask)
        if pid_v == 0:
            tl.store(HTZ + pid_bh * F + offs_k, sz, mask=kmask)


@triton.jit
def _lin_fwd_o(
    FQ, FK, Vv, GL, GW, Hs, HZ, O, Y, YG, ZB, ALPHA,
    T, TP, H, G, NT,
    W: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BF: tl.constexpr, BVL: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr, SUM: tl.constexpr,
):
    """Linear branch of one chunk, combined with the window output: y = (o + N) / (1 + Z), or with
    SUM y = N / (Z + eps) + alpha_h o (ALPHA per head, float32) and the linear branch y_gla =
    N / (Z + eps) in YG (the backward's dZ reads it: forming it as y - alpha o from two 16-bit
    tensors cancels); ZB holds Z, or Z + eps with SUM."""
    c = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    kvh = b * (H // G) + h // G
    offs_t = c * BT + tl.arange(0, BT)
    offs_f = tl.arange(0, BF)
    tmask = offs_t < T
    fmask = offs_f < F
    gl = tl.load(GL + pid_bh * TP + offs_t)
    gw = tl.load(GW + pid_bh * T + offs_t, mask=tmask, other=0.0)
    src = offs_t - W
    srow = tl.maximum(src, 0)  # masked rows keep in-bounds addresses
    valid = (src >= 0) & tmask
    fq = tl.load(FQ + pid_bh * T * F + offs_t[:, None] * F + offs_f[None, :], mask=tmask[:, None] & fmask[None, :], other=0.0)
    fk = tl.load(FK + kvh * T * F + srow[:, None] * F + offs_f[None, :], mask=valid[:, None] & fmask[None, :], other=0.0)
    kp = (fk.to(tl.float32) * tl.exp(gw)[:, None]).to(fq.dtype)
    causal = offs_t[:, None] >= offs_t[None, :]
    dec = tl.where(causal, tl.exp(gl[:, None] - gl[None, :]), 0.0)
    A = tl.dot(fq, tl.trans(kp), input_precision=PREC) * dec
    hz = tl.load(HZ + (pid_bh * NT + c) * F + offs_f, mask=fmask, other=0.0)
    qe = fq.to(tl.float32) * tl.exp(gl)[:, None]
    z = tl.sum(qe * hz[None, :], 1) + tl.sum(A, 1)
    if SUM:
        z += _SUM_EPS  # stored so: the backward's 1 / Z is 1 / (Z + eps) too
        rz = 1.0 / z
        a = tl.load(ALPHA + h)
    else:
        rz = 1.0 / (1.0 + z)
    qe = qe.to(fq.dtype)
    A = A.to(fq.dtype)
    for i in range(0, tl.cdiv(DV, BVL)):
        offs_v = i * BVL + tl.arange(0, BVL)
        vmask = offs_v < DV
        v = tl.load(Vv + kvh * T * DV + srow[:, None] * DV + offs_v[None, :], mask=valid[:, None] & vmask[None, :], other=0.0)
        hb = tl.load(Hs + (pid_bh * NT + c) * F * DV + offs_f[:, None] * DV + offs_v[None, :],
                     mask=fmask[:, None] & vmask[None, :], other=0.0)
        n = tl.dot(qe, hb.to(fq.dtype), input_precision=PREC) + tl.dot(A, v, input_precision=PREC)
        omask = tmask[:, None] & vmask[None, :]
        o = tl.load(O + pid_bh * T * DV + offs_t[:, None] * DV + offs_v[None, :], mask=omask, other=0.0)
        if SUM:
            yg = n * rz[:, None]
            tl.store(YG + pid_bh * T * DV + offs_t[:, None] * DV + offs_v[None, :], yg.to(YG.dtype.element_ty), mask=omask)
            y = yg + a * o.to(tl.float32)
        else:
            y = (o.to(tl.float32) + n) * rz[:, None]
        tl.store(Y + pid_bh * T * DV + offs_t[:, None] * DV + offs_v[None, :], y.to(Y.dtype.element_ty), mask=omask)
    tl.store(ZB + pid_bh * T + offs_t, z, mask=tmask)


@triton.jit
def _bwd_pre(
    DY, Y, O, ZB, DO, DZ, DELTA,
    T, H, DV: tl.constexpr, BDV: tl.constexpr, BT: tl.constexpr, SUM: tl.constexpr,
):
    """Shared form: do = dy / (1 + Z) (the gradient of both o and N), dZ = -(dy . y) / (1 + Z),
    Delta = do . o. SUM (y = N / Z + alpha o; Y holds y_gla = N / Z): do = dy / Z (gradient of N),
    dZ = -(dy . y_gla) / Z and Delta = dy . o: the window backward reads dy itself and scales its
    gradients by alpha_h (the gradient of o is alpha dy), and Delta summed is d alpha."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    offs_t = pid_t * BT + tl.arange(0, BT)
    offs_v = tl.arange(0, BDV)
    tmask = offs_t < T
    m2 = tmask[:, None] & (offs_v < DV)[None, :]
    ptrs = pid_bh * T * DV + offs_t[:, None] * DV + offs_v[None, :]
    dy = tl.load(DY + ptrs, mask=m2, other=0.0).to(tl.float32)
    y = tl.load(Y + ptrs, mask=m2, other=0.0).to(tl.float32)
    o = tl.load(O + ptrs, mask=m2, other=0.0).to(tl.float32)
    z = tl.load(ZB + pid_bh * T + offs_t, mask=tmask, other=1.0)
    if SUM:
        r = 1.0 / z
        do = dy * r[:, None]
        tl.store(DO + ptrs, do.to(DO.dtype.element_ty), mask=m2)
        tl.store(DZ + pid_bh * T + offs_t, -r * tl.sum(dy * y, 1), mask=tmask)
        tl.store(DELTA + pid_bh * T + offs_t, tl.sum(dy * o, 1), mask=tmask)
    else:
        r = 1.0 / (1.0 + z)
        do = dy * r[:, None]
        tl.store(DO + ptrs, do.to(DO.dtype.element_ty), mask=m2)
        tl.store(DZ + pid_bh * T + offs_t, -r * tl.sum(dy * y, 1), mask=tmask)
        tl.store(DELTA + pid_bh * T + offs_t, tl.sum(do * o, 1), mask=tmask)


@triton.jit
def _lin_bwd_dh(
    FQ, DO, DZ, GL, DH, DHZ,
    T, TP, NT,
    F: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """Gradient with respect to the state *leaving* each chunk: DH (B*H, NT, F, DV), DHZ (B*H, NT, F)."""
    pid_k = tl.program_id(0)
    pid_v = tl.program_id(1)
    pid_bh = tl.program_id(2).to(tl.int64)
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    kmask = offs_k < F
    vmask = offs_v < DV
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    dsz = tl.zeros([BK], dtype=tl.float32)
    for i in range(0, NT):
        c = NT - 1 - i
        tl.store(DH + (pid_bh * NT + c) * F * DV + offs_k[:, None] * DV + offs_v[None, :], dS.to(DH.dtype.element_ty),
                 mask=kmask[:, None] & vmask[None, :])
        if pid_v == 0:
            tl.store(DHZ + (pid_bh * NT + c) * F + offs_k, dsz, mask=kmask)
        offs_t = c * BT + tl.arange(0, BT)
        tmask = offs_t < T
        gl = tl.load(GL + pid_bh * TP + offs_t)
        bc = tl.load(GL + pid_bh * TP + c * BT + BT - 1)
        fq = tl.load(FQ + pid_bh * T * F + offs_t[:, None] * F + offs_k[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0)
        do = tl.load(DO + pid_bh * T * DV + offs_t[:, None] * DV + offs_v[None, :], mask=tmask[:, None] & vmask[None, :], other=0.0)
        dz = tl.load(DZ + pid_bh * T + offs_t, mask=tmask, other=0.0)
        qe = fq.to(tl.float32) * tl.exp(gl)[:, None]
        eb = tl.exp(bc)
        dS = dS * eb + tl.dot(tl.trans(qe.to(do.dtype)), do, input_precision=PREC)
        dsz = dsz * eb + tl.sum(qe * dz[:, None], 0)


@triton.jit
def _lin_bwd(
    FQ, FK, Vv, GL, GW, Hs, HZ, DH, DHZ, DO, DZ,
    DFQ, DFK, DVL, DGQ, DGK,
    T, TP, H, G, NT,
    W: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BF: tl.constexpr, BVL: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr, QS: tl.constexpr, KS: tl.constexpr, FT: tl.constexpr,
):
    """Gradients of the linear branch for one chunk: with QS the query side, dfq (rows t) and fq.dfq;
    with KS the key side, dfk and dv (rows t - w) and fk.dfk (the log-decay gradient is
    dG_t = fq_t.dfq_t - fk_t.dfk_t). One launch with both, or one launch per side: each side then
    keeps about half the live tiles (and recomputes dA = do v'^T).
    The value dimension is walked in blocks of BVL (reductions over it accumulate in fp32).
    With FT, program axis 2 walks feature tiles of BF columns: every term is a sum over features or
    per feature, so a tile writes its own dfq / dfk columns and its partial dv, fq.dfq and fk.dfk
    into slice ``fg`` of DVL, DGQ and DGK (the caller sums them); without FT, BF covers every feature."""
    c = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    kvh = b * (H // G) + h // G
    offs_t = c * BT + tl.arange(0, BT)
    offs_f = tl.arange(0, BF)
    if FT:
        fg = tl.program_id(2).to(tl.int64)
        part = fg * tl.num_programs(1).to(tl.int64) * T
        DVL += part * DV
        DGQ += part
        DGK += part
        offs_f += fg * BF
    tmask = offs_t < T
    fmask = offs_f < F
    gl = tl.load(GL + pid_bh * TP + offs_t)
    bc = tl.load(GL + pid_bh * TP + c * BT + BT - 1)
    gw = tl.load(GW + pid_bh * T + offs_t, mask=tmask, other=0.0)
    src = offs_t - W
    srow = tl.maximum(src, 0)  # masked rows keep in-bounds addresses
    valid = (src >= 0) & tmask
    fq = tl.load(FQ + pid_bh * T * F + offs_t[:, None] * F + offs_f[None, :], mask=tmask[:, None] & fmask[None, :], other=0.0)
    fk = tl.load(FK + kvh * T * F + srow[:, None] * F + offs_f[None, :], mask=valid[:, None] & fmask[None, :], other=0.0)
    dz = tl.load(DZ + pid_bh * T + offs_t, mask=tmask, other=0.0)
    egw = tl.exp(gw)
    kp = (fk.to(tl.float32) * egw[:, None]).to(fq.dtype)
    causal = offs_t[:, None] >= offs_t[None, :]
    dec = tl.where(causal, tl.exp(gl[:, None] - gl[None, :]), 0.0)
    if KS:
        A = (tl.dot(fq, tl.trans(kp), input_precision=PREC) * dec).to(fq.dtype)
        eo = tl.exp(bc - gl)
        dk_h = tl.zeros([BT, BF], dtype=tl.float32)  # v dh^T
    if QS:
        eg = tl.exp(gl)
        dq_h = tl.zeros([BT, BF], dtype=tl.float32)  # do h^T
    dA = tl.zeros([BT, BT], dtype=tl.float32)
    for i in range(0, tl.cdiv(DV, BVL)):
        offs_v = i * BVL + tl.arange(0, BVL)
        vmask = offs_v < DV
        v = tl.load(Vv + kvh * T * DV + srow[:, None] * DV + offs_v[None, :], mask=valid[:, None] & vmask[None, :], other=0.0)
        do = tl.load(DO + pid_bh * T * DV + offs_t[:, None] * DV + offs_v[None, :], mask=tmask[:, None] & vmask[None, :], other=0.0)
        hfv = (pid_bh * NT + c) * F * DV + offs_f[:, None] * DV + offs_v[None, :]
        dA += tl.dot(do, tl.trans(v), input_precision=PREC)
        if QS:
            hb = tl.load(Hs + hfv, mask=fmask[:, None] & vmask[None, :], other=0.0).to(do.dtype)
            dq_h += tl.dot(do, tl.trans(hb), input_precision=PREC)
        if KS:
            dhb = tl.load(DH + hfv, mask=fmask[:, None] & vmask[None, :], other=0.0).to(do.dtype)
            dk_h += tl.dot(v, tl.trans(dhb), input_precision=PREC)
            dvp = tl.dot(tl.trans(A), do, input_precision=PREC) + eo[:, None] * tl.dot(kp, dhb, input_precision=PREC)
            tl.store(DVL + pid_bh * T * DV + srow[:, None] * DV + offs_v[None, :], dvp.to(DVL.dtype.element_ty),
                     mask=valid[:, None] & vmask[None, :])
    dAc = ((dA + dz[:, None]) * dec).to(fq.dtype)
    if QS:
        hz = tl.load(HZ + (pid_bh * NT + c) * F + offs_f, mask=fmask, other=0.0)
        dfq = tl.dot(dAc, kp, input_precision=PREC) + eg[:, None] * (dq_h + dz[:, None] * hz[None, :])
        tl.store(DFQ + pid_bh * T * F + offs_t[:, None] * F + offs_f[None, :], dfq.to(DFQ.dtype.element_ty),
                 mask=tmask[:, None] & fmask[None, :])
        tl.store(DGQ + pid_bh * T + offs_t, tl.sum(fq.to(tl.float32) * dfq, 1), mask=tmask)
    if KS:
        dhz = tl.load(DHZ + (pid_bh * NT + c) * F + offs_f, mask=fmask, other=0.0)
        dkp = tl.dot(tl.trans(dAc), fq, input_precision=PREC) + eo[:, None] * (dk_h + dhz[None, :])
        dfk = dkp * egw[:, None]
        tl.store(DFK + pid_bh * T * F + srow[:, None] * F + offs_f[None, :], dfk.to(DFK.dtype.element_ty),
                 mask=valid[:, None] & fmask[None, :])
        tl.store(DGK + pid_bh * T + srow, tl.sum(fk.to(tl.float32) * dfk, 1), mask=valid)


@triton.jit
def _meta_bwd(
    q, do, lse, delta, mmask, MK, MV, MB, DMETA, h, M, slot, nstore, qk_scale, a, offs_d, offs_dv, dmask, dvmask,
    D: tl.constexpr, DV: tl.constexpr, BMETA: tl.constexpr, PREC: tl.constexpr,
):
    """Meta-slot part of one query block's window backward: returns its dq term (unscaled, without
    the factor ``a``) and stores the block's partial dmk, dmv (unscaled) and dmb, each times ``a``
    (the branch weight alpha_h of the sum form, else 1), in row ``slot`` of DMETA (rows of
    M * (D + DV + 1): dmk, dmv, dmb; first ``nstore`` meta slots)."""
    offs_e = tl.arange(0, BMETA)
    emask = offs_e < M
    mk = tl.load(MK + h * M * D + offs_e[:, None] * D + offs_d[None, :], mask=emask[:, None] & dmask[None, :], other=0.0).to(q.dtype)
    mv = tl.load(MV + h * M * DV + offs_e[:, None] * DV + offs_dv[None, :], mask=emask[:, None] & dvmask[None, :], other=0.0).to(q.dtype)
    mb = tl.load(MB + h * M + offs_e, mask=emask, other=0.0).to(tl.float32)
    s_e = tl.dot(q, tl.trans(mk), input_precision=PREC) * qk_scale + mb[None, :] * 1.4426950408889634
    p_e = tl.where(emask[None, :] & mmask[:, None], tl.exp2(s_e - lse[:, None]), 0.0)
    dp_e = tl.dot(do, tl.trans(mv), input_precision=PREC)
    ds_e = p_e * (dp_e - delta[:, None])
    dmk = tl.dot(tl.trans(ds_e.to(q.dtype)), q, input_precision=PREC)
    dmv = tl.dot(tl.trans(p_e.to(do.dtype)), do, input_precision=PREC)
    smask = offs_e < nstore
    row = DMETA + slot * M * (D + DV + 1)
    tl.store(row + offs_e[:, None] * D + offs_d[None, :], dmk * a, mask=smask[:, None] & dmask[None, :])
    tl.store(row + M * D + offs_e[:, None] * DV + offs_dv[None, :], dmv * a, mask=smask[:, None] & dvmask[None, :])
    tl.store(row + M * (D + DV) + offs_e, tl.sum(ds_e, 0) * a, mask=smask)
    return tl.dot(ds_e.to(q.dtype), mk, input_precision=PREC)


@triton.jit
def _query_rows(q_base, do_base, lse_base, delta_base, rows, mask, offs_d, offs_dv, dmask, dvmask,
                D: tl.constexpr, DV: tl.constexpr):
    """q, do, lse and Delta of the query ``rows`` (in-bounds addresses) where ``mask``, zeros elsewhere."""
    q = tl.load(q_base + rows[:, None] * D + offs_d[None, :], mask=mask[:, None] & dmask[None, :], other=0.0)
    do = tl.load(do_base + rows[:, None] * DV + offs_dv[None, :], mask=mask[:, None] & dvmask[None, :], other=0.0)
    lse = tl.load(lse_base + rows, mask=mask, other=0.0)
    delta = tl.load(delta_base + rows, mask=mask, other=0.0)
    return q, do, lse, delta


@triton.jit
def _dq_block(
    q, do, lse, delta, offs_m, mmask, offs_n, k_base, v_base, T, qk_scale, offs_d, offs_dv, dmask, dvmask,
    W: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, PREC: tl.constexpr,
):
    """dq term (unscaled) of query rows ``offs_m`` from the window keys among rows ``offs_n`` (rows
    outside [0, T) masked): ds = p (dp - Delta), p = exp2(s - lse), dq += ds k."""
    nmask = (offs_n < T) & (offs_n >= 0)
    rows = tl.maximum(offs_n, 0)  # masked rows keep in-bounds addresses
    k = tl.load(k_base + rows[:, None] * D + offs_d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0)
    v = tl.load(v_base + rows[:, None] * DV + offs_dv[None, :], mask=nmask[:, None] & dvmask[None, :], other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    valid = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] > offs_m[:, None] - W) & nmask[None, :] & mmask[:, None]
    p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, input_precision=PREC)


@triton.jit
def _win_bwd(
    Q, K, Vv, MK, MV, MB, DO, LSE, DELTA, DVL, DQ, DK, DVW, DMETA, ALPHA,
    T, H, G, M, NB, scale,
    W: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    BM: tl.constexpr, NBW: tl.constexpr, BMETA: tl.constexpr, HAS_META: tl.constexpr, PREC: tl.constexpr, LS: tl.constexpr,
    SUM: tl.constexpr, LIN_DV: tl.constexpr, KVS: tl.constexpr, QS: tl.constexpr,
):
    """Window-branch gradients. Program j: with KVS, dk, dv of key block j (dv plus the linear
    branch's DVL, rows n < T - LS); with QS, dq of query block j and its partial meta gradients
    (DMETA (B, NB, H, M * (D + DV + 1)): dmk and dmv unscaled, then the meta logit biases; summed
    over the leading two dimensions by the caller, one contiguous reduction). One launch with both
    sides, or one per side (fewer live tiles, more programs per SM). SUM: DO holds dy and DELTA
    dy . o; the branch weight alpha_h multiplies every window gradient as it is stored
    (y = y_gla + alpha o, so d o = alpha dy and every window gradient is linear in d o). Without
    LIN_DV (a value map: the linear branch reads values of its own) DVL is not added."""
    j = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    kvh = b * (H // G) + h // G
    q_base = Q + pid_bh * T * D
    do_base = DO + pid_bh * T * DV
    k_base = K + kvh * T * D
    v_base = Vv + kvh * T * DV
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    dmask = offs_d < D
    dvmask = offs_dv < DV
    qk_scale = scale * 1.4426950408889634
    a = 1.0
    if SUM:
        a = tl.load(ALPHA + h)
    if KVS:  # ---- key block j: dk, dv
        offs_n = j * BM + tl.arange(0, BM)
        nmask = offs_n < T
        k = tl.load(k_base + offs_n[:, None] * D + offs_d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * DV + offs_dv[None, :], mask=nmask[:, None] & dvmask[None, :], other=0.0)
        dk = tl.zeros([BM, BD], dtype=tl.float32)
        dv = tl.zeros([BM, BDV], dtype=tl.float32)
        for i in range(0, NBW + 1):
            offs_m = (j + i) * BM + tl.arange(0, BM)
            mmask = offs_m < T
            q, do, lse, delta = _query_rows(q_base, do_base, LSE + pid_bh * T, DELTA + pid_bh * T, offs_m, mmask,
                                            offs_d, offs_dv, dmask, dvmask, D=D, DV=DV)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            valid = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] > offs_m[:, None] - W) & nmask[None, :] & mmask[:, None]
            p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
        tl.store(DK + pid_bh * T * D + offs_n[:, None] * D + offs_d[None, :], (dk * (scale * a)).to(DK.dtype.element_ty),
                 mask=nmask[:, None] & dmask[None, :])
        lmask = (offs_n < T - LS)[:, None] & dvmask[None, :]
        dv = dv * a
        if LIN_DV:
            dv += tl.load(DVL + pid_bh * T * DV + offs_n[:, None] * DV + offs_dv[None, :], mask=lmask, other=0.0)
        tl.store(DVW + pid_bh * T * DV + offs_n[:, None] * DV + offs_dv[None, :], dv.to(DVW.dtype.element_ty),
                 mask=nmask[:, None] & dvmask[None, :])
    if QS:  # ---- query block j: dq (+ meta)
        offs_m = j * BM + tl.arange(0, BM)
        mmask = offs_m < T
        q, do, lse, delta = _query_rows(q_base, do_base, LSE + pid_bh * T, DELTA + pid_bh * T, offs_m, mmask,
                                        offs_d, offs_dv, dmask, dvmask, D=D, DV=DV)
        dq = tl.zeros([BM, BD], dtype=tl.float32)
        if HAS_META:
            dq += _meta_bwd(q, do, lse, delta, mmask, MK, MV, MB, DMETA, h, M, (b * NB + j) * H + h, M, qk_scale, a,
                            offs_d, offs_dv, dmask, dvmask, D=D, DV=DV, BMETA=BMETA, PREC=PREC)
        for i in range(0, NBW + 1):
            dq += _dq_block(q, do, lse, delta, offs_m, mmask, (j - NBW + i) * BM + tl.arange(0, BM), k_base, v_base, T,
                            qk_scale, offs_d, offs_dv, dmask, dvmask, W=W, D=D, DV=DV, PREC=PREC)
        tl.store(DQ + pid_bh * T * D + offs_m[:, None] * D + offs_d[None, :], (dq * (scale * a)).to(DQ.dtype.element_ty),
                 mask=mmask[:, None] & dmask[None, :])


@triton.jit
def _win_bwd_pairs(
    Q, K, Vv, MK, MV, MB, DO, LSE, DELTA, DVL, DQ, DK, DVW, DMETA, ALPHA,
    T, H, G, M, NB, scale,
    W: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    BM: tl.constexpr, BMETA: tl.constexpr, HAS_META: tl.constexpr, PREC: tl.constexpr, LS: tl.constexpr,
    SUM: tl.constexpr, LIN_DV: tl.constexpr,
):
    """Window-branch gradients when the window reaches at most one block back (W <= BM + 1).
    Program p (0 <= p <= NB) evaluates the block pairs (query, key) = (p-1, p-1), (p, p-1), (p, p):
    dk, dv of key block p - 1 (dv plus the linear branch's DVL, rows n < T - LS) and dq (+ meta
    partials, as in ``_win_bwd``) of query block p. The shared pair (p, p-1) is computed once:
    12 block products per program instead of ``_win_bwd``'s 14, 8 tile loads instead of 12.
    Blocks -1 and NB are empty (masked), so the code runs straight through. SUM and LIN_DV as in ``_win_bwd``."""
    p = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    kvh = b * (H // G) + h // G
    q_base = Q + pid_bh * T * D
    do_base = DO + pid_bh * T * DV
    k_base = K + kvh * T * D
    v_base = Vv + kvh * T * DV
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    dmask = offs_d < D
    dvmask = offs_dv < DV
    qk_scale = scale * 1.4426950408889634
    a = 1.0
    if SUM:
        a = tl.load(ALPHA + h)
    # ---- key block p - 1 against its own query block
    offs_n = (p - 1) * BM + tl.arange(0, BM)
    nmask = (offs_n >= 0) & (offs_n < T)
    rows_n = tl.maximum(offs_n, 0)  # masked rows keep in-bounds addresses
    k = tl.load(k_base + rows_n[:, None] * D + offs_d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0)
    v = tl.load(v_base + rows_n[:, None] * DV + offs_dv[None, :], mask=nmask[:, None] & dvmask[None, :], other=0.0)
    qi, doi, lse_i, delta_i = _query_rows(q_base, do_base, LSE + pid_bh * T, DELTA + pid_bh * T, rows_n, nmask,
                                          offs_d, offs_dv, dmask, dvmask, D=D, DV=DV)
    s = tl.dot(qi, tl.trans(k), input_precision=PREC) * qk_scale
    valid = (offs_n[None, :] <= offs_n[:, None]) & (offs_n[None, :] > offs_n[:, None] - W) & nmask[None, :] & nmask[:, None]
    pr = tl.where(valid, tl.exp2(s - lse_i[:, None]), 0.0)
    dv = tl.dot(tl.trans(pr.to(doi.dtype)), doi, input_precision=PREC)
    dp = tl.dot(doi, tl.trans(v), input_precision=PREC)
    ds = pr * (dp - delta_i[:, None])
    dk = tl.dot(tl.trans(ds.to(qi.dtype)), qi, input_precision=PREC)
    # ---- query block p against key block p - 1 (shared by dk, dv and dq)
    offs_m = p * BM + tl.arange(0, BM)
    mmask = offs_m < T
    q, do, lse, delta = _query_rows(q_base, do_base, LSE + pid_bh * T, DELTA + pid_bh * T, offs_m, mmask,
                                    offs_d, offs_dv, dmask, dvmask, D=D, DV=DV)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    valid = (offs_n[None, :] > offs_m[:, None] - W) & nmask[None, :] & mmask[:, None]
    pr = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
    dv += tl.dot(tl.trans(pr.to(do.dtype)), do, input_precision=PREC)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    dsb = (pr * (dp - delta[:, None])).to(q.dtype)
    dk += tl.dot(tl.trans(dsb), q, input_precision=PREC)
    tl.store(DK + pid_bh * T * D + rows_n[:, None] * D + offs_d[None, :], (dk * (scale * a)).to(DK.dtype.element_ty),
             mask=nmask[:, None] & dmask[None, :])
    lmask = (nmask & (offs_n < T - LS))[:, None] & dvmask[None, :]
    dv = dv * a
    if LIN_DV:
        dv += tl.load(DVL + pid_bh * T * DV + rows_n[:, None] * DV + offs_dv[None, :], mask=lmask, other=0.0)
    tl.store(DVW + pid_bh * T * DV + rows_n[:, None] * DV + offs_dv[None, :], dv.to(DVW.dtype.element_ty),
             mask=nmask[:, None] & dvmask[None, :])
    dq = tl.dot(dsb, k, input_precision=PREC)
    # ---- query block p: meta partials and the diagonal pair (p, p)
    if HAS_META:  # program NB has no query block: its (zero) partials are not stored
        dq += _meta_bwd(q, do, lse, delta, mmask, MK, MV, MB, DMETA, h, M, (b * NB + tl.minimum(p, NB - 1)) * H + h,
                        tl.where(p < NB, M, 0), qk_scale, a, offs_d, offs_dv, dmask, dvmask, D=D, DV=DV, BMETA=BMETA, PREC=PREC)
    dq += _dq_block(q, do, lse, delta, offs_m, mmask, offs_m, k_base, v_base, T, qk_scale, offs_d, offs_dv, dmask, dvmask,
                    W=W, D=D, DV=DV, PREC=PREC)
    tl.store(DQ + pid_bh * T * D + offs_m[:, None] * D + offs_d[None, :], (dq * (scale * a)).to(DQ.dtype.element_ty),
             mask=mmask[:, None] & dmask[None, :])
