"""Triton kernels of the Lizard attention op (see ``lizardlm.ops.lizard`` for the equations).

Layout: every tensor is contiguous ``(B, heads, T, dim)``; query head ``h`` reads key/value head
``h // G``. Program ``bh`` is ``b * H + h``. Gradients with respect to key-side tensors are written
per *query* head and summed over the group by the caller.

Linear branch = chunked gated linear attention over shifted keys ``k'_s = exp(gw_s) fk_{s-w}``,
``v'_s = v_{s-w}`` (zero for ``s < w``), with ``gw_s = G_s - G_{s-w}`` and the chunk-local
inclusive cumulative log-decay ``gl`` (``B_c`` its value at the chunk's last row). ``h_c`` is the
state entering chunk ``c``; the normaliser's state ``hz_c`` is an extra F-vector.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _lin_fwd_h(
    FK, Vv, GL, GW, Hs, HZ,
    T, TP, H, G, NT,
    W: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr,
):
    """States entering each chunk: Hs (B*H, NT, F, DV), HZ (B*H, NT, F) (normaliser)."""
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
    S = tl.zeros([BK, BV], dtype=tl.float32)
    sz = tl.zeros([BK], dtype=tl.float32)
    for c in range(0, NT):
        h_ptr = Hs + (pid_bh * NT + c) * F * DV + offs_k[:, None] * DV + offs_v[None, :]
        tl.store(h_ptr, S.to(Hs.dtype.element_ty), mask=kmask[:, None] & vmask[None, :])
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


@triton.jit
def _fwd_out(
    Q, K, Vv, MK, MV, MB, FQ, FK, GL, GW, Hs, HZ, O, LSE, Y, ZB,
    T, TP, H, G, M, NT, scale,
    W: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, F: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    BF: tl.constexpr, BT: tl.constexpr, NBW: tl.constexpr, BMETA: tl.constexpr, HAS_META: tl.constexpr,
    PREC: tl.constexpr,
):
    """Both branches for one block of BT queries, then y = (o + N) / (1 + Z).

    Window + meta softmax attention (flash-style, key blocks c - NBW .. c) gives o and the base-2
    log-sum-exp; the linear branch reads the state entering the chunk (Hs, HZ) and the shifted keys
    of the chunk. Writes o and LSE (for the backward), y and Z."""
    c = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    kvh = b * (H // G) + h // G
    k_base = K + kvh * T * D
    v_base = Vv + kvh * T * DV
    offs_t = c * BT + tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    offs_f = tl.arange(0, BF)
    dmask = offs_d < D
    dvmask = offs_dv < DV
    fmask = offs_f < F
    tmask = offs_t < T
    # ---- window + meta softmax branch
    q = tl.load(Q + pid_bh * T * D + offs_t[:, None] * D + offs_d[None, :], mask=tmask[:, None] & dmask[None, :], other=0.0)
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([BT], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BT], dtype=tl.float32)
    acc = tl.zeros([BT, BDV], dtype=tl.float32)
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
    for i in range(0, NBW + 1):
        offs_n = (c - NBW + i) * BT + tl.arange(0, BT)
        nmask = (offs_n < T) & (offs_n >= 0)
        rows = tl.maximum(offs_n, 0)  # masked rows keep in-bounds addresses
        k = tl.load(k_base + rows[:, None] * D + offs_d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0)
        v = tl.load(v_base + rows[:, None] * DV + offs_dv[None, :], mask=nmask[:, None] & dvmask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        valid = (offs_n[None, :] <= offs_t[:, None]) & (offs_n[None, :] > offs_t[:, None] - W) & nmask[None, :]
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    o = acc / l_i[:, None]
    omask = tmask[:, None] & dvmask[None, :]
    optrs = pid_bh * T * DV + offs_t[:, None] * DV + offs_dv[None, :]
    tl.store(O + optrs, o.to(O.dtype.element_ty), mask=omask)
    tl.store(LSE + pid_bh * T + offs_t, m_i + tl.log2(l_i), mask=tmask)
    # ---- linear branch over the shifted keys k'_s = exp(gw_s) fk_{s-W}, v'_s = v_{s-W}
    gl = tl.load(GL + pid_bh * TP + offs_t)
    gw = tl.load(GW + pid_bh * T + offs_t, mask=tmask, other=0.0)
    src = offs_t - W
    srow = tl.maximum(src, 0)
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
    vs = tl.load(v_base + srow[:, None] * DV + offs_dv[None, :], mask=valid[:, None] & dvmask[None, :], other=0.0)
    hb = tl.load(Hs + (pid_bh * NT + c) * F * DV + offs_f[:, None] * DV + offs_dv[None, :],
                 mask=fmask[:, None] & dvmask[None, :], other=0.0)
    n = tl.dot(qe.to(fq.dtype), hb.to(fq.dtype), input_precision=PREC) + tl.dot(A.to(fq.dtype), vs, input_precision=PREC)
    y = (o + n) / (1.0 + z)[:, None]
    tl.store(Y + optrs, y.to(Y.dtype.element_ty), mask=omask)
    tl.store(ZB + pid_bh * T + offs_t, z, mask=tmask)


@triton.jit
def _bwd_pre(
    DY, Y, O, ZB, DO, DZ, DELTA,
    T, DV: tl.constexpr, BDV: tl.constexpr, BT: tl.constexpr,
):
    """do = dy / (1 + Z) (the gradient of both o and N), dZ = -(dy . y) / (1 + Z), Delta = do . o."""
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
    z = tl.load(ZB + pid_bh * T + offs_t, mask=tmask, other=0.0)
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
    PREC: tl.constexpr,
):
    """Gradients of the linear branch for one chunk: dfq (rows t), dfk and dv (rows t - w), and the
    pieces fq.dfq, fk.dfk of the log-decay gradient (dG_t = fq_t.dfq_t - fk_t.dfk_t).
    The value dimension is walked in blocks of BVL (reductions over it accumulate in fp32)."""
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
    A = (tl.dot(fq, tl.trans(kp), input_precision=PREC) * dec).to(fq.dtype)
    eg = tl.exp(gl)
    eo = tl.exp(bc - gl)
    dA = tl.zeros([BT, BT], dtype=tl.float32)
    dq_h = tl.zeros([BT, BF], dtype=tl.float32)  # do h^T
    dk_h = tl.zeros([BT, BF], dtype=tl.float32)  # v dh^T
    for i in range(0, tl.cdiv(DV, BVL)):
        offs_v = i * BVL + tl.arange(0, BVL)
        vmask = offs_v < DV
        v = tl.load(Vv + kvh * T * DV + srow[:, None] * DV + offs_v[None, :], mask=valid[:, None] & vmask[None, :], other=0.0)
        do = tl.load(DO + pid_bh * T * DV + offs_t[:, None] * DV + offs_v[None, :], mask=tmask[:, None] & vmask[None, :], other=0.0)
        hfv = (pid_bh * NT + c) * F * DV + offs_f[:, None] * DV + offs_v[None, :]
        hb = tl.load(Hs + hfv, mask=fmask[:, None] & vmask[None, :], other=0.0).to(do.dtype)
        dhb = tl.load(DH + hfv, mask=fmask[:, None] & vmask[None, :], other=0.0).to(do.dtype)
        dA += tl.dot(do, tl.trans(v), input_precision=PREC)
        dq_h += tl.dot(do, tl.trans(hb), input_precision=PREC)
        dk_h += tl.dot(v, tl.trans(dhb), input_precision=PREC)
        dvp = tl.dot(tl.trans(A), do, input_precision=PREC) + eo[:, None] * tl.dot(kp, dhb, input_precision=PREC)
        tl.store(DVL + pid_bh * T * DV + srow[:, None] * DV + offs_v[None, :], dvp.to(DVL.dtype.element_ty),
                 mask=valid[:, None] & vmask[None, :])
    hz = tl.load(HZ + (pid_bh * NT + c) * F + offs_f, mask=fmask, other=0.0)
    dhz = tl.load(DHZ + (pid_bh * NT + c) * F + offs_f, mask=fmask, other=0.0)
    dAc = ((dA + dz[:, None]) * dec).to(fq.dtype)
    dfq = tl.dot(dAc, kp, input_precision=PREC) + eg[:, None] * (dq_h + dz[:, None] * hz[None, :])
    dkp = tl.dot(tl.trans(dAc), fq, input_precision=PREC) + eo[:, None] * (dk_h + dhz[None, :])
    dfk = dkp * egw[:, None]
    tl.store(DFQ + pid_bh * T * F + offs_t[:, None] * F + offs_f[None, :], dfq.to(DFQ.dtype.element_ty),
             mask=tmask[:, None] & fmask[None, :])
    tl.store(DFK + pid_bh * T * F + srow[:, None] * F + offs_f[None, :], dfk.to(DFK.dtype.element_ty),
             mask=valid[:, None] & fmask[None, :])
    tl.store(DGQ + pid_bh * T + offs_t, tl.sum(fq.to(tl.float32) * dfq, 1), mask=tmask)
    tl.store(DGK + pid_bh * T + srow, tl.sum(fk.to(tl.float32) * dfk, 1), mask=valid)


@triton.jit
def _lin_bwd_fused(
    FQ, FK, Vv, GL, GW, Hs, HZ, DO, DZ,
    DFQ, DFK, DVL, DGQ, DGK,
    T, TP, H, G, NT,
    W: tl.constexpr, F: tl.constexpr, DV: tl.constexpr, BF: tl.constexpr, BDV: tl.constexpr, BT: tl.constexpr,
    PREC: tl.constexpr,
):
    """All linear-branch gradients of one (batch, head) in a single reverse scan over chunks: the
    gradient of the state leaving chunk c (dS, F x DV, and dsz for the normaliser) stays in
    registers instead of being stored per chunk (``_lin_bwd_dh``) and read back (``_lin_bwd``).
    Same outputs as ``_lin_bwd``; the choice between them is parallelism (B*H programs here)."""
    pid_bh = tl.program_id(0).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    kvh = b * (H // G) + h // G
    offs_f = tl.arange(0, BF)
    offs_v = tl.arange(0, BDV)
    fmask = offs_f < F
    vmask = offs_v < DV
    dS = tl.zeros([BF, BDV], dtype=tl.float32)
    dsz = tl.zeros([BF], dtype=tl.float32)
    for i in range(0, NT):
        c = NT - 1 - i
        offs_t = c * BT + tl.arange(0, BT)
        tmask = offs_t < T
        gl = tl.load(GL + pid_bh * TP + offs_t)
        bc = tl.load(GL + pid_bh * TP + c * BT + BT - 1)
        gw = tl.load(GW + pid_bh * T + offs_t, mask=tmask, other=0.0)
        src = offs_t - W
        srow = tl.maximum(src, 0)  # masked rows keep in-bounds addresses
        valid = (src >= 0) & tmask
        fq = tl.load(FQ + pid_bh * T * F + offs_t[:, None] * F + offs_f[None, :], mask=tmask[:, None] & fmask[None, :], other=0.0)
        fk = tl.load(FK + kvh * T * F + srow[:, None] * F + offs_f[None, :], mask=valid[:, None] & fmask[None, :], other=0.0)
        v = tl.load(Vv + kvh * T * DV + srow[:, None] * DV + offs_v[None, :], mask=valid[:, None] & vmask[None, :], other=0.0)
        do = tl.load(DO + pid_bh * T * DV + offs_t[:, None] * DV + offs_v[None, :], mask=tmask[:, None] & vmask[None, :], other=0.0)
        dz = tl.load(DZ + pid_bh * T + offs_t, mask=tmask, other=0.0)
        hfv = (pid_bh * NT + c) * F * DV + offs_f[:, None] * DV + offs_v[None, :]
        hb = tl.load(Hs + hfv, mask=fmask[:, None] & vmask[None, :], other=0.0).to(do.dtype)
        hz = tl.load(HZ + (pid_bh * NT + c) * F + offs_f, mask=fmask, other=0.0)
        egw = tl.exp(gw)
        kp = (fk.to(tl.float32) * egw[:, None]).to(fq.dtype)
        causal = offs_t[:, None] >= offs_t[None, :]
        dec = tl.where(causal, tl.exp(gl[:, None] - gl[None, :]), 0.0)
        A = (tl.dot(fq, tl.trans(kp), input_precision=PREC) * dec).to(fq.dtype)
        eg = tl.exp(gl)
        eo = tl.exp(bc - gl)
        dAc = ((tl.dot(do, tl.trans(v), input_precision=PREC) + dz[:, None]) * dec).to(fq.dtype)
        dSl = dS.to(do.dtype)
        dvp = tl.dot(tl.trans(A), do, input_precision=PREC) + eo[:, None] * tl.dot(kp, dSl, input_precision=PREC)
        tl.store(DVL + pid_bh * T * DV + srow[:, None] * DV + offs_v[None, :], dvp.to(DVL.dtype.element_ty),
                 mask=valid[:, None] & vmask[None, :])
        dfq = tl.dot(dAc, kp, input_precision=PREC) + eg[:, None] * (
            tl.dot(do, tl.trans(hb), input_precision=PREC) + dz[:, None] * hz[None, :])
        tl.store(DFQ + pid_bh * T * F + offs_t[:, None] * F + offs_f[None, :], dfq.to(DFQ.dtype.element_ty),
                 mask=tmask[:, None] & fmask[None, :])
        tl.store(DGQ + pid_bh * T + offs_t, tl.sum(fq.to(tl.float32) * dfq, 1), mask=tmask)
        dkp = tl.dot(tl.trans(dAc), fq, input_precision=PREC) + eo[:, None] * (
            tl.dot(v, tl.trans(dSl), input_precision=PREC) + dsz[None, :])
        dfk = dkp * egw[:, None]
        tl.store(DFK + pid_bh * T * F + srow[:, None] * F + offs_f[None, :], dfk.to(DFK.dtype.element_ty),
                 mask=valid[:, None] & fmask[None, :])
        tl.store(DGK + pid_bh * T + srow, tl.sum(fk.to(tl.float32) * dfk, 1), mask=valid)
        # state gradient for chunk c - 1: dS <- exp(B_c) dS + (exp(gl) fq)^T do
        qe = fq.to(tl.float32) * eg[:, None]
        eb = tl.exp(bc)
        dS = dS * eb + tl.dot(tl.trans(qe.to(do.dtype)), do, input_precision=PREC)
        dsz = dsz * eb + tl.sum(qe * dz[:, None], 0)


@triton.jit
def _win_bwd(
    Q, K, Vv, MK, MV, MB, DO, LSE, DELTA, DVL, DQ, DK, DVW, DMK, DMV, DMB,
    T, H, G, M, NB, scale,
    W: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    BM: tl.constexpr, NBW: tl.constexpr, BMETA: tl.constexpr, HAS_META: tl.constexpr, PREC: tl.constexpr,
):
    """Window-branch gradients of block j: dk, dv of key block j (dv plus the linear branch's DVL,
    rows n < T - W) and dq of query block j. The diagonal pair (query block j, key block j) is
    computed once for all three; then query blocks j+1 .. j+NBW feed dk/dv and key blocks
    j-1 .. j-NBW feed dq. Partial meta gradients of query block j: DMK/DMV (B*H, NB, BMETA, ·),
    unscaled; DMB (B*H, NB, BMETA), the meta logit biases."""
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
    offs_j = j * BM + tl.arange(0, BM)
    jmask = offs_j < T
    q = tl.load(q_base + offs_j[:, None] * D + offs_d[None, :], mask=jmask[:, None] & dmask[None, :], other=0.0)
    do = tl.load(do_base + offs_j[:, None] * DV + offs_dv[None, :], mask=jmask[:, None] & dvmask[None, :], other=0.0)
    lse = tl.load(LSE + pid_bh * T + offs_j, mask=jmask, other=0.0)
    delta = tl.load(DELTA + pid_bh * T + offs_j, mask=jmask, other=0.0)
    k = tl.load(k_base + offs_j[:, None] * D + offs_d[None, :], mask=jmask[:, None] & dmask[None, :], other=0.0)
    v = tl.load(v_base + offs_j[:, None] * DV + offs_dv[None, :], mask=jmask[:, None] & dvmask[None, :], other=0.0)
    # ---- diagonal pair
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    valid = (offs_j[None, :] <= offs_j[:, None]) & (offs_j[None, :] > offs_j[:, None] - W) & jmask[None, :] & jmask[:, None]
    p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = (p * (dp - delta[:, None])).to(q.dtype)
    dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
    dk = tl.dot(tl.trans(ds), q, input_precision=PREC)
    dq = tl.dot(ds, k, input_precision=PREC)
    # ---- later query blocks -> dk, dv of key block j
    for i in range(1, NBW + 1):
        offs_m = (j + i) * BM + tl.arange(0, BM)
        mmask = offs_m < T
        rows = tl.minimum(offs_m, T - 1)  # masked rows keep in-bounds addresses
        q2 = tl.load(q_base + rows[:, None] * D + offs_d[None, :], mask=mmask[:, None] & dmask[None, :], other=0.0)
        do2 = tl.load(do_base + rows[:, None] * DV + offs_dv[None, :], mask=mmask[:, None] & dvmask[None, :], other=0.0)
        lse2 = tl.load(LSE + pid_bh * T + rows, mask=mmask, other=0.0)
        delta2 = tl.load(DELTA + pid_bh * T + rows, mask=mmask, other=0.0)
        s = tl.dot(q2, tl.trans(k), input_precision=PREC) * qk_scale
        valid = (offs_j[None, :] > offs_m[:, None] - W) & jmask[None, :] & mmask[:, None]
        p = tl.where(valid, tl.exp2(s - lse2[:, None]), 0.0)
        dv += tl.dot(tl.trans(p.to(do2.dtype)), do2, input_precision=PREC)
        dp = tl.dot(do2, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta2[:, None])
        dk += tl.dot(tl.trans(ds.to(q2.dtype)), q2, input_precision=PREC)
    tl.store(DK + pid_bh * T * D + offs_j[:, None] * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=jmask[:, None] & dmask[None, :])
    lmask = (offs_j < T - W)[:, None] & dvmask[None, :]
    dv += tl.load(DVL + pid_bh * T * DV + offs_j[:, None] * DV + offs_dv[None, :], mask=lmask, other=0.0)
    tl.store(DVW + pid_bh * T * DV + offs_j[:, None] * DV + offs_dv[None, :], dv.to(DVW.dtype.element_ty),
             mask=jmask[:, None] & dvmask[None, :])
    # ---- meta slots and earlier key blocks -> dq of query block j
    if HAS_META:
        offs_e = tl.arange(0, BMETA)
        emask = offs_e < M
        mk = tl.load(MK + h * M * D + offs_e[:, None] * D + offs_d[None, :], mask=emask[:, None] & dmask[None, :], other=0.0).to(q.dtype)
        mv = tl.load(MV + h * M * DV + offs_e[:, None] * DV + offs_dv[None, :], mask=emask[:, None] & dvmask[None, :], other=0.0).to(q.dtype)
        mb = tl.load(MB + h * M + offs_e, mask=emask, other=0.0).to(tl.float32)
        s_e = tl.dot(q, tl.trans(mk), input_precision=PREC) * qk_scale + mb[None, :] * 1.4426950408889634
        p_e = tl.where(emask[None, :] & jmask[:, None], tl.exp2(s_e - lse[:, None]), 0.0)
        dp_e = tl.dot(do, tl.trans(mv), input_precision=PREC)
        ds_e = p_e * (dp_e - delta[:, None])
        dq += tl.dot(ds_e.to(q.dtype), mk, input_precision=PREC)
        dmk = tl.dot(tl.trans(ds_e.to(q.dtype)), q, input_precision=PREC)
        dmv = tl.dot(tl.trans(p_e.to(do.dtype)), do, input_precision=PREC)
        tl.store(DMK + (pid_bh * NB + j) * BMETA * D + offs_e[:, None] * D + offs_d[None, :], dmk, mask=dmask[None, :])
        tl.store(DMV + (pid_bh * NB + j) * BMETA * DV + offs_e[:, None] * DV + offs_dv[None, :], dmv, mask=dvmask[None, :])
        tl.store(DMB + (pid_bh * NB + j) * BMETA + offs_e, tl.sum(ds_e, 0))
    for i in range(1, NBW + 1):
        offs_n = (j - i) * BM + tl.arange(0, BM)
        nmask = offs_n >= 0
        rows = tl.maximum(offs_n, 0)
        k2 = tl.load(k_base + rows[:, None] * D + offs_d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0)
        v2 = tl.load(v_base + rows[:, None] * DV + offs_dv[None, :], mask=nmask[:, None] & dvmask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k2), input_precision=PREC) * qk_scale
        valid = (offs_n[None, :] > offs_j[:, None] - W) & nmask[None, :] & jmask[:, None]
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v2), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k2.dtype), k2, input_precision=PREC)
    tl.store(DQ + pid_bh * T * D + offs_j[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=jmask[:, None] & dmask[None, :])
