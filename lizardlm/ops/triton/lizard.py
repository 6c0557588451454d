"""Autograd function and entry point of the Triton (CUDA) Lizard attention op.

Forward: window kernel (o, lse) -> chunk states of the linear branch -> per-chunk output kernel
that adds the linear branch and normalises, y = (o + N) / (1 + Z) (shared form) or
y = N / (Z + eps) + alpha o (sum form: the same kernels with shift 0, no extra pass). With a value
map the linear kernels read the mapped values ``v W`` (formed in torch) and the window kernels ``v``;
the backward then returns the two value gradients apart.
Backward: prelude (do, dZ, Delta; in the sum form Delta = dy . o, also d alpha's summand) ->
reverse chunk-state gradients -> linear-branch gradients -> window-branch gradients (the sum
form's window kernels read dy and scale what they store by alpha_h); the log-decay gradient is a
reverse cumulative sum of ``fq.dfq - fk.dfk`` (done in torch), group sums for grouped-query
attention likewise. Sink logits run as meta slots with zero keys and values (their gradient is
the meta-bias gradient).

The paper folds the cumulative log-gate into the exponent of the feature map so the gated product
is one bf16 GEMM per chunk; these kernels do the equivalent chunked log-space scheme: the
chunk-local cumulative log-decay scales fq and fk by exp(+-gl) in float32 registers before each
16-bit GEMM, and the state crosses chunks in float32.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
import triton
from triton.runtime.errors import OutOfResources

from lizardlm.ops.dispatch import padding_refusal, state_refusal
from lizardlm.ops.lizard import LizardState, drop_padding, empty_state, map_values, state_as_prefix
from lizardlm.ops.triton import kernels as K
from lizardlm.ops.utils import compute_dtype

R = TypeVar("R")


POISON = False
"""Tests set this: every output buffer the kernels must fill starts as NaN instead of uninitialised."""


def _empty(*shape, device, dtype) -> torch.Tensor:
    if POISON:
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(*shape, device=device, dtype=dtype)


CFG: dict[str, dict] = {}
"""Launch overrides per kernel, e.g. ``CFG["win_bwd"] = {"num_warps": 4, "num_stages": 2}``, and
other knobs (``lin_bwd_split``, ``bvl_bwd``, ``h_block``, ...), for tuning. The defaults below won
``benchmarks/attention.py --tune`` on an H100 (bf16, D = F = 128) and were re-checked on an H200
with ``benchmarks/variants.py``; in Triton 3.6 the window forward with num_warps=8, num_stages=1
hit an illegal memory access once (see benchmarks/NOTES.md): keep to tried settings."""


def _cfg(name: str, **default) -> dict:
    return {**default, **CFG.get(name, {})}


def _wide_features(Fd: int) -> dict:
    """Launch settings of the kernels that hold whole feature rows (``_lin_fwd_o``; ``_lin_bwd`` when
    ``CFG["lin_bwd_bf"]`` asks for whole rows) for a feature width over 256 (``feature_dim`` 256 and
    up): 8 warps, 1 stage. On the H200 (bf16, 8 x 9 heads x 2K, D 64, F 512) the op's fwd+bwd took
    3.22 ms against 4.29 with the narrow defaults, same gradients; at F 128 the two settings were
    within noise (1.82 / 1.86 ms)."""
    return dict(num_warps=8, num_stages=1) if Fd > 256 else {}


_FITTING: dict[tuple, int] = {}
"""(kernel group, shapes, dtype, CFG) -> the chunk or tile size that fitted."""


def _first_fitting(key: tuple, options: list[int], launch: Callable[[int], R]) -> R:
    """``launch(option)`` for the first option (chunk or tile sizes, largest first) whose kernels fit
    the GPU's shared memory, as Triton's autotuner skips configs that raise ``OutOfResources``; the
    option that fitted is remembered per ``key``. Triton raises before the kernel runs and each option
    rewrites all it returns, so a retry is exact. The defaults suit 64-256 features; 512 features
    in float32, or beside 128-wide heads, need smaller tiles on the H200."""
    key = (*key, repr(sorted(CFG.items())))
    if key in _FITTING:
        return launch(_FITTING[key])
    err = None
    for opt in options:
        try:
            out = launch(opt)
        except OutOfResources as e:
            err = e
            continue
        _FITTING[key] = opt
        return out
    raise RuntimeError(f"lizard_attention_cuda: no size in {options} fits this GPU's shared memory "
                       f"for {key[:-1]}: {err}") from err


def _halvings(n: int, least: int = 16) -> list[int]:
    """n, n / 2, ... down to ``least`` (n itself when it is smaller)."""
    return [n >> i for i in range(n.bit_length()) if n >> i >= least] or [n]


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _prec(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _scan_blocks(BH: int, Fd: int, DV: int, device, narrow_features: bool = False) -> tuple[int, int]:
    """(feature, value) tile of one program of the sequential chunk scans: whole value rows (each
    chunk's rows are loaded once per feature tile) while that leaves two programs per SM, else
    64 x 64 (more programs: the scans are sequential over chunks, parallel only over tiles and b, h).
    With ``narrow_features`` the fallback keeps whole value rows and takes 32 features instead, 16
    where 32 still leaves fewer than two programs per SM: on the H200 the state-gradient scan at
    T = 8K (B * H = 128) ran in 0.49 ms with 32 features against 0.67 ms with 64 x 64 tiles, and at
    32K (B * H = 32, F = 128) in 0.94 ms with 16 features against 1.09 with 32."""
    bk, bv = min(64, _pow2(Fd)), _pow2(DV)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if bv > 128 or BH * triton.cdiv(Fd, bk) < 2 * sms:
        if narrow_features and bv <= 128:
            bk = min(32, bk)
            if BH * triton.cdiv(Fd, bk) < 2 * sms:
                bk = 16
        else:
            bv = min(64, bv)
    return bk, bv


def _pairs_window_bwd(window: int, block: int, dtype: torch.dtype) -> bool:
    """Whether the window backward takes ``_win_bwd_pairs`` (the block pair that serves both dk/dv
    and dq is evaluated once; about 0.1 ms less than ``_win_bwd`` at 32K tokens x 32 heads on an
    H100). It covers windows reaching one block back (the Lizard default w = 64) in 16-bit dtypes;
    ``_win_bwd`` serves the rest (``CFG["win_bwd_general"]`` forces it; ``CFG["win_bwd_pairs"]``
    takes the pair kernel in any dtype, which the interpreter tests do in float32). Measured on the H100
    (Triton 3.6, benchmarks/NOTES.md): the pair-sharing form generalised to any window gave wrong
    dq in bfloat16 with two blocks back (exact in the interpreter), and its float32 build (dots on
    FMA units, about 5700 registers spilled) did not finish compiling a D = 128 case in 8 minutes."""
    return window <= block + 1 and dtype in (torch.bfloat16, torch.float16)


def _gates(g: torch.Tensor, shift: int, chunk: int):
    """Chunk-local inclusive cumsum gl (padded to whole chunks) and shift sums gw_t = G_t - G_{t-shift}
    of G = cumsum(g). G is formed in float64 (over a long sequence it grows large, and the
    difference would cancel in float32) as the earlier chunks' totals plus gl: no sequence-long scan."""
    BH, T = g.shape
    nt = triton.cdiv(T, chunk)
    gl = F.pad(g.float(), (0, nt * chunk - T)).view(BH, nt, chunk).cumsum(-1)
    before = F.pad(gl[:, :-1, -1].double().cumsum(-1), (1, 0))  # sum of the chunks before each chunk
    G = (before[:, :, None] + gl).view(BH, nt * chunk)[:, :T]
    gw = (G - F.pad(G, (shift, 0))[:, :T]).float()
    return gl.view(BH, nt * chunk), gw


def _fwd(q, k, v, vl, fq, fk, g, mk, mv, mb, alpha, h0, window, shift, scale, chunk, final, pad):
    """``vl``: the values the linear kernels read (``v`` itself without a value map)."""
    B, H, T, D = q.shape
    Hk, DV, Fd = k.shape[1], v.shape[-1], fq.shape[-1]
    G = H // Hk
    BH = B * H
    prec = _prec(q)
    has_meta = mk is not None and mk.shape[1] > 0
    M = mk.shape[1] if has_meta else 0
    dummy = q.new_empty(1)
    BM = 64
    o = _empty(B, H, T, DV, device=q.device, dtype=q.dtype)
    lse = _empty(BH, T, device=q.device, dtype=torch.float32)
    K._win_fwd[(triton.cdiv(T, BM), BH)](
        q, k, v, mk if has_meta else dummy, mv if has_meta else dummy, mb if has_meta else dummy, o, lse,
        pad if pad is not None else dummy, T, H, G, M, scale,
        W=window, D=D, DV=DV, BD=_pow2(D), BDV=_pow2(DV), BM=BM, BN=BM, NBW=triton.cdiv(window - 1, BM), BMETA=_pow2(max(M, 1)),
        HAS_META=has_meta, PREC=prec, HAS_PAD=pad is not None, **_cfg("win_fwd", num_warps=4, num_stages=1),
    )
    gl, gw = _gates(g.reshape(BH, T), shift, chunk)
    TP = gl.shape[1]
    NT = TP // chunk
    hs = _empty(BH, NT, Fd, DV, device=q.device, dtype=q.dtype)
    hz = _empty(BH, NT, Fd, device=q.device, dtype=torch.float32)
    # the state before the first token (float32, (B*H, F, DV + 1)), and the one after the last
    h0s, h0z = (h0[..., :DV].contiguous(), h0[..., DV].contiguous()) if h0 is not None else (dummy, dummy)
    f32 = torch.float32
    hts, htz = (_empty(BH, Fd, DV, device=q.device, dtype=f32), _empty(BH, Fd, device=q.device, dtype=f32)) \
        if final else (dummy, dummy)
    BK, BV = CFG.get("h_block") or _scan_blocks(BH, Fd, DV, q.device)
    K._lin_fwd_h[(triton.cdiv(Fd, BK), triton.cdiv(DV, BV), BH)](
        fk, vl, gl, gw, hs, hz, h0s, h0z, hts, htz, T, TP, H, G, NT,
        W=shift, F=Fd, DV=DV, BT=chunk, BK=BK, BV=BV, PREC=prec, HAS_H0=h0 is not None, STORE_HT=final,
        **_cfg("lin_h", num_warps=4, num_stages=3),
    )
    y = _empty(*o.shape, device=o.device, dtype=o.dtype)
    yg = _empty(*o.shape, device=o.device, dtype=o.dtype) if alpha is not None else dummy  # sum form: y_gla
    zb = _empty(BH, T, device=q.device, dtype=torch.float32)
    K._lin_fwd_o[(NT, BH)](
        fq, fk, vl, gl, gw, hs, hz, o, y, yg, zb, alpha if alpha is not None else dummy, T, TP, H, G, NT,
        W=shift, F=Fd, DV=DV, BF=_pow2(Fd), BVL=min(CFG.get("bvl_o", 64), _pow2(DV)), BT=chunk, PREC=prec,
        SUM=alpha is not None, **_cfg("lin_o", **{"num_warps": 4, "num_stages": 1, **_wide_features(Fd)}),
    )
    ht = torch.cat([hts, htz[..., None]], dim=-1) if final else None
    return y, yg if alpha is not None else y, o, lse, gl, gw, hs, hz, zb, ht


def _group_sum(x: torch.Tensor, Hk: int) -> torch.Tensor:
    B, H = x.shape[:2]
    return x if H == Hk else x.view(B, Hk, H // Hk, *x.shape[2:]).sum(2)


class LizardAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, vl, fq, fk, g, mk, mv, mb, alpha, h0, window, scale, chunk, g_given, final, pad):
        """``vl``: None, or the values the linear branch reads (``v W``, value map), whose gradient is then
        returned apart from ``v``'s (the window's). ``alpha`` None: shared form (linear shift w); a float32
        ``(H,)`` tensor: sum form (shift 0).
        ``h0``: None or the float32 ``(B*H, F, DV + 1)`` linear state before the first token, a constant.
        ``pad``: None or each row's left-padding count, int32 ``(B,)`` (forward only: padding's key
        features come zeroed). Returns y and, if ``final``, the linear state after the last token (else
        an empty tensor)."""
        ctx.g_dtype = g.dtype
        ctx.padded = pad is not None
        shift = window if alpha is None else 0
        # a smaller chunk where the output kernel's (chunk x features) tiles exceed shared memory
        key = ("fwd", q.dtype, q.shape[-1], v.shape[-1], fq.shape[-1], chunk, alpha is None)
        chunk, (y, yz, o, lse, gl, gw, hs, hz, zb, ht) = _first_fitting(
            key, _halvings(chunk),
            lambda c: (c, _fwd(q, k, v, v if vl is None else vl, fq, fk, g, mk, mv, mb, alpha, h0, window, shift, scale,
                               c, final, pad)))
        # yz: what dZ is formed from: y in the shared form, the linear branch y_gla in the sum form.
        # hs/hz hold h0's share of every chunk's state, so the backward needs nothing more for it: the
        # query-side gradients read hs/hz, and d log-decay stays the reverse cumsum of fq.dfq - fk.dfk
        ctx.save_for_backward(q, k, v, vl, fq, fk, mk, mv, mb, alpha, yz, o, lse, gl, gw, hs, hz, zb)
        ctx.cfg = (window, shift, scale, chunk, g_given)
        ht = ht if final else y.new_empty(0)
        ctx.mark_non_differentiable(ht)
        return y, ht

    @staticmethod
    def backward(ctx, dy, _dht):
        if ctx.padded:
            raise RuntimeError("the Triton op takes left-padded batches in inference only")
        q, k, v, vl, fq, fk, mk, mv, mb, alpha, yz, o, lse, gl, gw, hs, hz, zb = ctx.saved_tensors
        window, shift, scale, chunk, g_given = ctx.cfg
        summed = alpha is not None
        B, H, T, D = q.shape
        Hk, DV, Fd = k.shape[1], v.shape[-1], fq.shape[-1]
        G = H // Hk
        BH = B * H
        prec = _prec(q)
        dev = q.device
        dy = dy.contiguous()
        TP = gl.shape[1]
        NT = TP // chunk
        f32 = torch.float32
        # prelude
        do = _empty(*o.shape, device=o.device, dtype=o.dtype)
        dz = _empty(BH, T, device=dev, dtype=f32)
        delta = _empty(BH, T, device=dev, dtype=f32)
        dummy = q.new_empty(1)
        K._bwd_pre[(triton.cdiv(T, 64), BH)](
            dy, yz, o, zb, do, dz, delta, T, H, DV=DV, BDV=_pow2(DV), BT=64, SUM=summed, **_cfg("pre", num_warps=8),
        )
        # linear branch
        dh = _empty(*hs.shape, device=dev, dtype=hs.dtype)
        dhz = _empty(*hz.shape, device=dev, dtype=hz.dtype)
        BK, BV = CFG.get("dh_block") or _scan_blocks(BH, Fd, DV, dev, narrow_features=True)
        K._lin_bwd_dh[(triton.cdiv(Fd, BK), triton.cdiv(DV, BV), BH)](
            fq, do, dz, gl, dh, dhz, T, TP, NT, F=Fd, DV=DV, BT=chunk, BK=BK, BV=BV, PREC=prec,
            **_cfg("lin_dh", num_warps=4, num_stages=3),
        )
        gdt = f32 if G > 1 else q.dtype  # per-query-head key-side gradients are summed in float32
        dfq = _empty(*fq.shape, device=dev, dtype=fq.dtype)
        # rows t >= T - shift of the key-side linear gradients get nothing from the linear branch
        tail = max(T - shift, 0)
        dfk = _empty(B, H, T, Fd, device=dev, dtype=gdt)
        dfk[:, :, tail:].zero_()
        # whole value rows per step in 16-bit dtypes (H200, 2K: 1.30 -> 1.28 ms); float32 keeps 64
        bvl = CFG.get("bvl_bwd", 64 if q.dtype == torch.float32 else 128)

        def lin_bwd(BFT: int):
            """The linear branch's backward in feature tiles of BFT (whole rows by default): each tile's
            partial dv, fq.dfq and fk.dfk in a slice of its own (float32), summed after the launches."""
            NFT = triton.cdiv(Fd, BFT)
            dvl = _empty(NFT, B, H, T, DV, device=dev, dtype=gdt if NFT == 1 else f32)  # rows >= T - shift are never read
            dgq = _empty(NFT, BH, T, device=dev, dtype=f32)
            dgk = _empty(NFT, BH, T, device=dev, dtype=f32)
            dgk[..., tail:].zero_()
            lin_args = (fq, fk, v if vl is None else vl, gl, gw, hs, hz, dh, dhz, do, dz, dfq, dfk, dvl, dgq, dgk, T, TP, H, G, NT)
            lin_meta = dict(W=shift, F=Fd, DV=DV, BF=BFT, BVL=min(bvl, _pow2(DV)), BT=chunk, PREC=prec, FT=NFT > 1)
            if CFG.get("lin_bwd_split", True):  # one launch per side: about 0.27 ms less at 2K on the H200
                side = {"num_warps": 4, "num_stages": 2, **_wide_features(BFT)}
                K._lin_bwd[(NT, BH, NFT)](*lin_args, **lin_meta, QS=True, KS=False, **_cfg("lin_bwd_q", **side))
                K._lin_bwd[(NT, BH, NFT)](*lin_args, **lin_meta, QS=False, KS=True, **_cfg("lin_bwd_k", **side))
            else:
                K._lin_bwd[(NT, BH, NFT)](*lin_args, **lin_meta, QS=True, KS=True, **_cfg("lin_bwd", num_warps=8, num_stages=2))
            if NFT == 1:
                return dvl[0], dgq[0], dgk[0]
            return dvl.sum(0).to(gdt), dgq.sum(0), dgk.sum(0)

        # whole feature rows up to 256 features, 128-feature tiles above: at 512 (H200, bf16, 2K) the
        # linear backward took 1.04 ms against 3.22 with whole rows (9/3 heads of 64, the op 3.75 against
        # 5.81 ms), and 5.30 against 6.95 (whole rows do not fit; 256-wide tiles) with 32 heads of 128;
        # CFG["lin_bwd_bf"] sets the first width tried, narrower tiles where it exceeds shared memory
        BFT = min(CFG.get("lin_bwd_bf") or (128 if Fd > 256 else _pow2(Fd)), _pow2(Fd))
        key = ("lin_bwd", q.dtype, D, DV, Fd, chunk, G > 1)
        dvl, dgq, dgk = _first_fitting(key, _halvings(BFT), lin_bwd)
        # window branch
        has_meta = mk is not None and mk.shape[1] > 0
        M = mk.shape[1] if has_meta else 0
        BM = CFG.get("win_bwd_bm", 64)
        NB = triton.cdiv(T, BM)
        BMETA = _pow2(max(M, 1))
        dq = _empty(*q.shape, device=dev, dtype=q.dtype)
        dk = _empty(B, H, T, D, device=dev, dtype=gdt)
        dvw = _empty(B, H, T, DV, device=dev, dtype=gdt)
        # per (query block, head) partial meta gradients [dmk | dmv | dmb], summed below
        dmeta_p = _empty(B * NB, H, M * (D + DV + 1), device=dev, dtype=f32) if has_meta else q.new_empty(1)
        # the sum form's window branch reads dy and scales its gradients by alpha_h in the kernel
        args = (q, k, v, mk if has_meta else dummy, mv if has_meta else dummy, mb if has_meta else dummy,
                dy if summed else do, lse, delta, dvl, dq, dk, dvw, dmeta_p, alpha if summed else dummy,
                T, H, G, M, NB, scale)
        meta = dict(W=window, D=D, DV=DV, BD=_pow2(D), BDV=_pow2(DV), BM=BM, BMETA=BMETA, HAS_META=has_meta, PREC=prec,
                    LS=shift, SUM=summed, LIN_DV=vl is None)
        pairs = window <= BM + 1 if CFG.get("win_bwd_pairs") else _pairs_window_bwd(window, BM, q.dtype)
        if pairs and not CFG.get("win_bwd_general"):
            K._win_bwd_pairs[(NB + 1, BH)](*args, **meta, **_cfg("win_pairs", num_warps=4, num_stages=1))
        else:
            meta["NBW"] = triton.cdiv(window - 1, BM)  # key blocks behind each query block
            if CFG.get("win_bwd_split", True):  # one launch per side (H200, paper w128: 1.45 -> 1.40 ms at 2K-32K)
                K._win_bwd[(NB, BH)](*args, **meta, KVS=True, QS=False, **_cfg("win_bwd_kv", num_warps=4, num_stages=2))
                K._win_bwd[(NB, BH)](*args, **meta, KVS=False, QS=True, **_cfg("win_bwd_q", num_warps=4, num_stages=2))
            else:
                K._win_bwd[(NB, BH)](*args, **meta, KVS=True, QS=True, **_cfg("win_bwd", num_warps=4, num_stages=1))
        dk = _group_sum(dk, Hk).to(k.dtype)
        dv = _group_sum(dvw, Hk).to(v.dtype)
        dvl_out = None
        if vl is not None:  # the linear branch's own value gradient; rows t >= T - shift never entered it
            dvl[:, :, tail:].zero_()
            dvl_out = _group_sum(dvl, Hk).to(vl.dtype)
        dfk_out = _group_sum(dfk, Hk).to(fk.dtype)
        dg = None
        if g_given:
            dG = dgq.sub_(dgk)  # per query head: fq.dfq - fk.dfk
            dg = dG.flip(-1).cumsum(-1).flip(-1).view(B, H, T).to(ctx.g_dtype)
        dmk = dmv = dmb = None
        if has_meta:
            dmk, dmv, dmb = dmeta_p.sum(0).split([M * D, M * DV, M], dim=-1)
            dmk = (dmk.reshape(H, M, D) * scale).to(mk.dtype)
            dmv = dmv.reshape(H, M, DV).to(mv.dtype)
            dmb = dmb.to(mb.dtype)
        dalpha = delta.view(B, H, T).sum((0, 2)) if summed else None
        return dq, dk, dv, dvl_out, dfq, dfk_out, dg, dmk, dmv, dmb, dalpha, None, None, None, None, None, None, None


def lizard_attention_cuda(
    q, k, v, fq, fk, g, *, window: int, scale: float, meta_k=None, meta_v=None, meta_bias=None,
    state: LizardState | None = None, need_state: bool = False, chunk_size: int | None = None,
    combine: str = "shared", alpha=None, key_start=None, value_map=None,
) -> tuple[torch.Tensor, LizardState | None]:
    """Triton version of :func:`lizardlm.ops.lizard.lizard_attention_chunk`, from no state, a linear
    state alone (a memory and no window, as stage 2's state passing hands on) or a prefilled state
    (window tokens too: they run before the chunk, :func:`~lizardlm.ops.lizard.state_as_prefix`);
    returns ``(y, state after the last token if need_state else None)``, the state as the torch op
    builds it. Differentiable in q, k, v, fq, fk, g, meta_k, meta_v, meta_bias (sink logits when
    given alone), alpha (``combine="sum"``) and value_map; the initial state is a constant. A left-padded batch
    (``key_start``) runs in inference only."""
    refusal = state_refusal(state) or padding_refusal(key_start, q, k, v, fq, fk, g, meta_k, meta_v, meta_bias, alpha,
                                                      value_map)
    if refusal is not None:
        raise ValueError(refusal)
    if not q.is_cuda:
        raise ValueError("lizard_attention_cuda needs CUDA tensors")
    if combine not in ("shared", "sum") or (combine == "sum") != (alpha is not None):
        raise ValueError(f"combine={combine!r} with alpha {'given' if alpha is not None else 'None'}: "
                         "'sum' needs alpha, 'shared' takes none")
    if chunk_size is None:  # the chunk size changes only rounding; the kernels pick theirs
        chunk_size = CFG.get("chunk", 64)
    if chunk_size not in (16, 32, 64, 128):
        raise ValueError(f"chunk_size must be 16, 32, 64 or 128 on the Triton path, got {chunk_size}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return run_from_state(q, k, v, fq, fk, g, window=window, scale=scale, meta_k=meta_k, meta_v=meta_v,
                          meta_bias=meta_bias, state=state, need_state=need_state, chunk_size=chunk_size,
                          combine=combine, alpha=alpha, key_start=key_start, value_map=value_map)


def run_from_state(q, k, v, fq, fk, g, *, window: int, scale: float, meta_k, meta_v, meta_bias,
                   state: LizardState | None, need_state: bool, chunk_size: int, combine: str,
                   alpha, key_start=None, value_map=None) -> tuple[torch.Tensor, LizardState | None]:
    """:func:`lizard_attention_cuda` on checked arguments (Triton's CPU interpreter calls this directly)."""
    L = 0 if state is None else state.keys.shape[2]
    fk = drop_padding(fk, key_start, L)
    x = (q, k, v, fq, fk, g)
    if L:
        x, _ = state_as_prefix(state, *x, combine=combine)
    y, kv = apply_op(*x, window=window, scale=scale, meta_k=meta_k, meta_v=meta_v, meta_bias=meta_bias,
                     chunk_size=chunk_size, alpha=alpha, kv_state=state.kv_state if state is not None else None,
                     final=need_state, key_start=key_start, value_map=value_map)
    y = y[:, :, L:]
    if not need_state:
        return y, None
    if L:  # the state keeps its last tokens as given: grouped heads, features without the carried decay
        q, k, v = x[0], torch.cat([state.keys, k], dim=2), torch.cat([state.values, v], dim=2)
        if combine == "shared":
            fk = torch.cat([state.key_features, fk], dim=2)
            g = None if g is None else torch.cat([state.log_gates, g.to(state.log_gates.dtype)], dim=2)
    return y, state_after(q, k, v, fk, g, kv, window=window, combine=combine)


def state_after(q, k, v, fk, g, kv_state, *, window: int, combine: str) -> LizardState:
    """The :class:`LizardState` after a sequence started from a linear state (or none), as
    :func:`lizardlm.ops.lizard.lizard_attention_chunk` returns it: ``kv_state`` and the last
    ``min(T, w)`` tokens (with their features and log-decays in the shared form)."""
    B, H, T = q.shape[:3]
    dtype = compute_dtype(q)
    keep = slice(max(0, T - window), None)
    empty = empty_state(q, k, v, fk)
    shared = combine == "shared"
    gates = (g.to(dtype) if g is not None else q.new_zeros(B, H, T, dtype=dtype))[:, :, keep] if shared else empty.log_gates
    return LizardState(kv_state.view(B, H, *kv_state.shape[1:]).to(dtype), k[:, :, keep], v[:, :, keep],
                       fk[:, :, keep] if shared else empty.key_features, gates)


def apply_op(q, k, v, fq, fk, g, *, window: int, scale: float, meta_k, meta_v, meta_bias, chunk_size: int, alpha,
             kv_state=None, final: bool = False, key_start=None, value_map=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The autograd function on checked arguments (Triton's CPU interpreter calls this directly):
    contiguous inputs in q's dtype, zero log-decays for no gate, sink logits as zero-key/value slots,
    the initial state ``(B, H, F, V + 1)`` (or None) in float32, ``key_start`` (padding counts, as
    int32) or None, ``value_map`` ``(Hk, V, V)`` or None (the linear values ``v W`` are formed here, so
    autograd carries their gradient to v and the map). Returns y and, if ``final``, the float32
    ``(B*H, F, V + 1)`` state after the last token (else None)."""
    B, H, T, D = q.shape
    dt = q.dtype
    k, v, fq, fk = (x.to(dt).contiguous() for x in (k, v, fq, fk))
    q = q.contiguous()
    g_given = g is not None
    gg = g.contiguous() if g_given else q.new_zeros(B, H, T, dtype=torch.float32)
    if meta_k is None and meta_bias is not None and meta_bias.shape[-1] > 0:  # sink logits: slots with zero keys/values
        m = meta_bias.shape[-1]
        meta_k, meta_v = q.new_zeros(H, m, D), q.new_zeros(H, m, v.shape[-1])
    has_meta = meta_k is not None and meta_k.shape[-2] > 0
    mk = meta_k.contiguous() if has_meta else None
    mv = meta_v.contiguous() if has_meta else None
    if has_meta and meta_bias is None:
        meta_bias = q.new_zeros(H, meta_k.shape[-2], dtype=torch.float32)
    mb = meta_bias.contiguous() if has_meta else None
    a = alpha.float().contiguous() if alpha is not None else None
    h0 = kv_state.detach().float().reshape(B * H, *kv_state.shape[2:]).contiguous() if kv_state is not None else None
    pad = key_start.to(device=q.device, dtype=torch.int32).contiguous() if key_start is not None else None
    vl = map_values(v, value_map).contiguous() if value_map is not None else None
    y, ht = LizardAttentionFunction.apply(q, k, v, vl, fq, fk, gg, mk, mv, mb, a, h0, window, float(scale), chunk_size,
                                          g_given, final, pad)
    return y, ht if final else None
