"""Naive, chunked and recurrent forms of every op compute the same function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lizardlm.ops import (
    gla_chunk,
    gla_naive,
    gla_recurrent,
    lizard_attention_chunk,
    lizard_attention_naive,
    lizard_attention_recurrent,
    window_attention_chunk,
    window_attention_naive,
    window_attention_recurrent,
)
from lizardlm.ops.lizard import SUM_EPS

# (B, H, Hk, T, D, F, window, meta, chunk): T not a multiple of the chunk, T shorter and longer
# than the window, GQA groups of 1, 2 and 3, batch > 1, no meta memory.
SHAPES = [
    (2, 4, 2, 37, 8, 6, 5, 3, 8),
    (1, 3, 1, 10, 4, 4, 16, 2, 4),
    (2, 2, 2, 70, 8, 4, 7, 0, 16),
    (3, 6, 2, 45, 16, 8, 12, 4, 32),
    (1, 2, 1, 1, 8, 4, 4, 1, 8),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


# (combine, meta): our form, the paper's, and the two mixed ones
FORMS = [("shared", "kv"), ("sum", "sink"), ("shared", "sink"), ("sum", "kv")]


def make_inputs(B, H, Hk, T, D, F_, m, dtype, gen, form=("shared", "kv")):
    """Random op inputs; ``form`` picks meta key/value slots or sink logits (meta_bias alone) and
    adds ``alpha`` for the sum form (pass :func:`combine_of` as ``combine``)."""

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    combine, meta = form
    x = dict(
        q=r(B, H, T, D),
        k=r(B, Hk, T, D),
        v=r(B, Hk, T, D),
        fq=r(B, H, T, F_).softmax(-1),
        fk=r(B, Hk, T, F_).softmax(-1),
        g=F.logsigmoid(r(B, H, T) + 2.0),
        meta_k=r(H, m, D) if m and meta == "kv" else None,
        meta_v=r(H, m, D) if m and meta == "kv" else None,
        meta_bias=r(H, m) if m else None,
    )
    if combine == "sum":
        x["alpha"] = r(H)
    return x


def combine_of(x: dict) -> str:
    return "sum" if "alpha" in x else "shared"


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(torch.seed() % 2**31)  # fresh inputs each run


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_lizard_forms_agree_float32(shape, form, gen):
    B, H, Hk, T, D, F_, w, m, C = shape
    x64 = make_inputs(B, H, Hk, T, D, F_, m, torch.float64, gen, form)
    x32 = {k: None if v is None else v.float() for k, v in x64.items()}
    kw = dict(window=w, scale=D**-0.5, combine=combine_of(x64))
    ref = lizard_attention_naive(**x64, **kw)
    y_chunk, s_chunk = lizard_attention_chunk(**x32, chunk_size=C, **kw)
    y_rec, s_rec = lizard_attention_recurrent(**x32, **kw)
    assert y_chunk.dtype == torch.float32
    assert rel_err(y_chunk, ref) <= 1e-4
    assert rel_err(y_rec, ref) <= 1e-4
    for a, b in zip(s_chunk.tensors(), s_rec.tensors()):
        assert a.shape == b.shape
        assert torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", SHAPES[:4])
def test_lizard_chunk_continues_from_state(shape, form, gen):
    """Splitting a sequence at any point and carrying the state gives the same outputs."""
    B, H, Hk, T, D, F_, w, m, C = shape
    x = make_inputs(B, H, Hk, T, D, F_, m, torch.float64, gen, form)
    kw = dict(window=w, scale=D**-0.5, meta_k=x["meta_k"], meta_v=x["meta_v"], meta_bias=x["meta_bias"],
              combine=combine_of(x), alpha=x.get("alpha"))
    ref = lizard_attention_naive(**x, window=w, scale=D**-0.5, combine=combine_of(x))
    seq = {k: x[k] for k in ("q", "k", "v", "fq", "fk", "g")}
    cut1, cut2 = sorted(torch.randint(1, T, (2,), generator=gen).tolist()) if T > 2 else (1, 1)
    outs, state = [], None
    for lo, hi in ((0, cut1), (cut1, cut2), (cut2, T)):
        if hi > lo:
            y, state = lizard_attention_chunk(**{k: v[:, :, lo:hi] for k, v in seq.items()}, state=state, chunk_size=C, **kw)
            outs.append(y)
    assert rel_err(torch.cat(outs, dim=2), ref) <= 1e-10
    assert state.keys.shape[2] == min(T, w)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", SHAPES[:4])
def test_left_padding_gives_each_row_what_it_gives_alone(shape, form, gen):
    """A left-padded batch (``key_start``: each row's padding count): the naive, chunked (split into
    calls that carry the state) and recurrent forms give every row's real tokens, in float64, what the
    row gives without its padding; padding positions stay finite."""
    B, H, Hk, T, D, F_, w, m, C = shape
    B = max(B, 3)
    x = make_inputs(B, H, Hk, T, D, F_, m, torch.float64, gen, form)
    pads = torch.tensor([0, min(w + 2, T - 1), *torch.randint(0, T - 1, (B - 2,), generator=gen).tolist()])
    names = ("q", "k", "v", "fq", "fk", "g")
    kw = dict(window=w, scale=D**-0.5, meta_k=x["meta_k"], meta_v=x["meta_v"], meta_bias=x["meta_bias"],
              combine=combine_of(x), alpha=x.get("alpha"))
    seq = [x[n] for n in names]
    y_naive = lizard_attention_naive(*seq, **kw, key_start=pads)
    y_rec, _ = lizard_attention_recurrent(*seq, **kw, key_start=pads)
    cut1, cut2 = sorted(torch.randint(1, T, (2,), generator=gen).tolist())
    outs, state = [], None
    for lo, hi in ((0, cut1), (cut1, cut2), (cut2, T)):
        if hi > lo:
            held = 0 if state is None else state.keys.shape[2]
            y, state = lizard_attention_chunk(*(t[:, :, lo:hi] for t in seq), state=state, chunk_size=C, **kw,
                                              key_start=pads - (lo - held))
            outs.append(y)
    y_chunk = torch.cat(outs, dim=2)
    for b in range(B):
        p = int(pads[b])
        alone = lizard_attention_naive(*(t[b:b + 1, :, p:] for t in seq), **kw)
        for y in (y_naive, y_chunk, y_rec):
            assert rel_err(y[b:b + 1, :, p:], alone) <= 1e-10
    assert all(torch.isfinite(y).all() for y in (y_naive, y_chunk, y_rec))


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", SHAPES[:4])
def test_state_as_prefix_continues_a_state_from_its_linear_memory_alone(shape, form, gated, gen):
    """What the Triton path does with a prefilled state: the window tokens put before the chunk and
    the op started from the memory alone give the stateful op's outputs, gradients and next memory, in
    float64, where the state holds fewer than ``w`` tokens and where it holds ``w``."""
    from lizardlm.ops import linear_state
    from lizardlm.ops.lizard import state_as_prefix

    B, H, Hk, T, D, F_, w, m, C = shape
    x = make_inputs(B, H, Hk, T + w + 3, D, F_, m, torch.float64, gen, form)
    if not gated:
        x["g"] = None
    kw = dict(window=w, scale=D**-0.5, meta_k=x["meta_k"], meta_v=x["meta_v"], meta_bias=x["meta_bias"],
              combine=combine_of(x), alpha=x.get("alpha"))
    names = ("q", "k", "v", "fq", "fk", "g")
    memory = torch.rand(B, H, F_, D + 1, generator=gen, dtype=torch.float64)
    # L = cut < w, then L = w; the first also after a linear memory (a state-passing row going on)
    for cut, start in ((max(1, w // 2), None), (max(1, w // 2), memory), (w + 3, None)):
        head = {n: None if x[n] is None else x[n][:, :, :cut] for n in names}
        row = {n: None if x[n] is None else x[n][:, :, cut:cut + T].clone().requires_grad_() for n in names}
        before = None if start is None else linear_state(start, head["q"], head["k"], head["v"], head["fk"])
        _, state = lizard_attention_chunk(**head, state=before, chunk_size=C, **kw)
        ref, after = lizard_attention_chunk(**row, state=state, chunk_size=C, **kw)
        longer, L = state_as_prefix(state, *(row[n] for n in names), combine=combine_of(x))
        assert L == state.keys.shape[2] == min(cut, w)
        start = linear_state(state.kv_state, *longer[:3], longer[4])
        y_chunk, after_prefix = lizard_attention_chunk(*longer, state=start, chunk_size=C, **kw)
        y_naive = lizard_attention_naive(*longer, **kw, kv_state=state.kv_state)
        assert rel_err(y_chunk[:, :, L:], ref) <= 1e-10 and rel_err(y_naive[:, :, L:], ref) <= 1e-10
        assert rel_err(after_prefix.kv_state, after.kv_state) <= 1e-10
        graded = [t for t in row.values() if t is not None]
        dy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        g_ref = torch.autograd.grad((ref * dy).sum(), graded)
        g_prefix = torch.autograd.grad((y_naive[:, :, L:] * dy).sum(), graded)
        assert all(rel_err(a, b) <= 1e-10 for a, b in zip(g_prefix, g_ref))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_lizard_forms_agree_from_a_linear_state(shape, form, gen):
    """A row that starts from a linear memory alone (stage 2's state passing): the naive reference's
    ``exp(G_t) fq_t . S0`` term, the chunked and the recurrent forms agree in float64, gradients
    included. In the sum form every token is in the memory at once, so the row's final memory is
    that of the whole sequence; the shared form drops the head's last ``w`` tokens (never in its memory)."""
    from lizardlm.ops import linear_state

    B, H, Hk, T, D, F_, w, m, C = shape
    x = make_inputs(B, H, Hk, 2 * T + w, D, F_, m, torch.float64, gen, form)
    kw = dict(window=w, scale=D**-0.5, meta_k=x["meta_k"], meta_v=x["meta_v"], meta_bias=x["meta_bias"],
              combine=combine_of(x), alpha=x.get("alpha"))
    seq = {k: x[k] for k in ("q", "k", "v", "fq", "fk", "g")}
    head = {k: v[:, :, : T + w] for k, v in seq.items()}
    row = {k: v[:, :, T + w :].clone().requires_grad_() for k, v in seq.items()}
    _, before = lizard_attention_chunk(**head, chunk_size=C, **kw)
    s0 = before.kv_state.detach()
    start = linear_state(s0, row["q"], row["k"], row["v"], row["fk"])
    ref = lizard_attention_naive(**row, **kw, kv_state=s0)
    y_chunk, after = lizard_attention_chunk(**row, state=start, chunk_size=C, **kw)
    y_rec, after_rec = lizard_attention_recurrent(**row, state=start, **kw)
    assert rel_err(y_chunk, ref) <= 1e-10 and rel_err(y_rec, ref) <= 1e-10
    assert rel_err(after.kv_state, after_rec.kv_state) <= 1e-10
    if combine_of(x) == "sum":
        _, whole = lizard_attention_chunk(**seq, chunk_size=C, **kw)
        assert rel_err(after.kv_state, whole.kv_state) <= 1e-10
    assert rel_err(lizard_attention_naive(**row, **kw), ref) > 1e-6  # the memory matters
    dy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    g_ref = torch.autograd.grad((ref * dy).sum(), list(row.values()))
    g_chunk = torch.autograd.grad((y_chunk * dy).sum(), list(row.values()))
    assert all(rel_err(a, b) <= 1e-10 for a, b in zip(g_chunk, g_ref))


@pytest.mark.parametrize("form", FORMS)
def test_lizard_gradients_match_reference(form, gen):
    B, H, Hk, T, D, F_, w, m, C = 2, 4, 2, 29, 8, 6, 6, 2, 8
    x = {k: v for k, v in make_inputs(B, H, Hk, T, D, F_, m, torch.float64, gen, form).items() if v is not None}
    for v in x.values():
        v.requires_grad_(True)
    kw = dict(window=w, scale=D**-0.5, combine=combine_of(x))
    names = list(x)
    grads_ref = torch.autograd.grad(lizard_attention_naive(**x, **kw).square().sum(), [x[n] for n in names])
    y, _ = lizard_attention_chunk(**x, chunk_size=C, **kw)
    grads = torch.autograd.grad(y.square().sum(), [x[n] for n in names])
    for n, a, b in zip(names, grads, grads_ref):
        assert rel_err(a, b) <= 1e-10, n
    y_rec, _ = lizard_attention_recurrent(**x, **kw)
    grads_rec = torch.autograd.grad(y_rec.square().sum(), [x[n] for n in names])
    for n, a, b in zip(names, grads_rec, grads_ref):
        assert rel_err(a, b) <= 1e-10, n


def test_meta_bias_switches_a_slot_off(gen):
    """A very negative logit bias removes a meta slot whatever the query."""
    x = make_inputs(1, 2, 1, 16, 4, 4, 2, torch.float64, gen)
    kw = dict(window=4, scale=0.5)
    off = torch.tensor([[0.0, -1e4], [0.0, -1e4]], dtype=torch.float64)
    one_slot = {**x, "meta_k": x["meta_k"][:, :1], "meta_v": x["meta_v"][:, :1], "meta_bias": off[:, :1]}
    assert rel_err(lizard_attention_naive(**{**x, "meta_bias": off}, **kw), lizard_attention_naive(**one_slot, **kw)) < 1e-12


def test_no_gate_equals_zero_log_decay(gen):
    x = make_inputs(1, 2, 1, 20, 4, 4, 1, torch.float64, gen)
    kw = dict(window=5, scale=0.5)
    with_none = lizard_attention_naive(**{**x, "g": None}, **kw)
    with_zero = lizard_attention_naive(**{**x, "g": torch.zeros_like(x["g"])}, **kw)
    assert torch.equal(with_none, with_zero)


def test_window_larger_than_sequence_is_plain_softmax(gen):
    """With the whole sequence inside the window and no meta slots, Lizard is causal softmax."""
    x = make_inputs(2, 4, 2, 12, 8, 4, 0, torch.float64, gen)
    y = lizard_attention_naive(**x, window=64, scale=8**-0.5)
    sdpa = F.scaled_dot_product_attention(
        x["q"], x["k"].repeat_interleave(2, 1), x["v"].repeat_interleave(2, 1), is_causal=True
    )
    assert rel_err(y, sdpa) <= 1e-12


@pytest.mark.parametrize("shape", SHAPES)
def test_gla_forms_agree(shape, gen):
    B, H, _, T, D, F_, _, _, C = shape
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    q, k, v, s0 = r(B, H, T, F_), r(B, H, T, F_), r(B, H, T, D), r(B, H, F_, D)
    g = F.logsigmoid(r(B, H, T) + 2.0)
    o_ref, s_ref = gla_naive(q, k, v, g, s0)
    for fn in (lambda: gla_chunk(q.float(), k.float(), v.float(), g.float(), s0.float(), chunk_size=C),
               lambda: gla_recurrent(q.float(), k.float(), v.float(), g.float(), s0.float())):
        o, s = fn()
        assert rel_err(o, o_ref) <= 1e-4
        assert rel_err(s, s_ref) <= 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_window_forms_agree(shape, gen):
    B, H, Hk, T, D, F_, w, m, C = shape
    x = make_inputs(B, H, Hk, T, D, F_, m, torch.float64, gen)
    args = (x["q"], x["k"], x["v"], w, D**-0.5, x["meta_k"], x["meta_v"])
    o_ref, lse_ref = window_attention_naive(*args, x["meta_bias"])
    for o, lse in (
        window_attention_chunk(*args, chunk_size=C, meta_bias=x["meta_bias"]),
        window_attention_recurrent(*args, x["meta_bias"]),
    ):
        assert rel_err(o, o_ref) <= 1e-12
        assert rel_err(lse, lse_ref) <= 1e-12


def test_window_chunk_gradients_with_padding_past_the_window(gen):
    """No meta slots and more padding rows in the last block than the window: those rows have no
    key, and their gradients used to come back NaN (regression)."""
    x = make_inputs(1, 2, 1, 70, 8, 4, 0, torch.float64, gen)
    kw = dict(window=20, scale=8**-0.5)
    names = ("q", "k", "v", "fq", "fk", "g")
    for n in names:
        x[n].requires_grad_()
    ref = torch.autograd.grad(lizard_attention_naive(**x, **kw).square().sum(), [x[n] for n in names])
    y, _ = lizard_attention_chunk(**x, chunk_size=64, **kw)
    got = torch.autograd.grad(y.square().sum(), [x[n] for n in names])
    for n, a, b in zip(names, got, ref):
        assert torch.isfinite(a).all(), n
        assert rel_err(a, b) <= 1e-10, n


def test_window_queries_after_cached_prefix(gen):
    """Tq < Tk: queries sit at the end of the key sequence (decoding after a prefix)."""
    x = make_inputs(2, 4, 2, 30, 8, 4, 2, torch.float64, gen)
    full, _ = window_attention_naive(x["q"], x["k"], x["v"], 7, 0.3, x["meta_k"], x["meta_v"], x["meta_bias"])
    tail, _ = window_attention_chunk(
        x["q"][:, :, 21:], x["k"], x["v"], 7, 0.3, x["meta_k"], x["meta_v"], chunk_size=4, meta_bias=x["meta_bias"]
    )
    assert rel_err(tail, full[:, :, 21:]) <= 1e-12


@pytest.mark.parametrize("form", [lizard_attention_naive, lizard_attention_chunk, lizard_attention_recurrent])
def test_lizard_forms_return_the_input_dtype(form, gen):
    """bfloat16 in, bfloat16 out (the math runs in float32), also for single-token decoding steps."""
    B, H, Hk, T, D, F_, w, m, C = SHAPES[0]
    x = make_inputs(B, H, Hk, T, D, F_, m, torch.bfloat16, gen)
    out = form(**x, window=w, scale=D**-0.5)
    y = out[0] if isinstance(out, tuple) else out
    assert y.dtype == torch.bfloat16
    ref = lizard_attention_naive(**{k: (v.double() if v is not None else None) for k, v in x.items()},
                                 window=w, scale=D**-0.5)
    assert rel_err(y, ref) < 2e-2


def test_sink_logits_are_meta_slots_without_keys_or_values(gen):
    """Sink logits (meta_bias alone) equal meta slots whose keys and values are zero."""
    x = make_inputs(2, 4, 2, 19, 8, 4, 3, torch.float64, gen, ("sum", "sink"))
    zeros = torch.zeros(4, 3, 8, dtype=torch.float64)
    kw = dict(window=5, scale=8**-0.5, combine="sum")
    assert x["meta_k"] is None
    sinks = lizard_attention_naive(**x, **kw)
    slots = lizard_attention_naive(**{**x, "meta_k": zeros, "meta_v": zeros}, **kw)
    assert rel_err(sinks, slots) <= 1e-12
    args = (x["q"], x["k"], x["v"], 5, 8**-0.5)
    o_ref, lse_ref = window_attention_naive(*args, None, None, x["meta_bias"])
    o, lse = window_attention_chunk(*args, None, None, chunk_size=8, meta_bias=x["meta_bias"])
    assert rel_err(o, o_ref) <= 1e-12 and rel_err(lse, lse_ref) <= 1e-12


def test_sum_form_is_the_papers_equation(gen):
    """y_i = phi_q S_i / (phi_q z_i + eps) + alpha sum_win e^s v / (sum e^tau + sum_win e^s), S and z over
    all tokens 1..i with the per-token decay, written out token by token."""
    B, H, Hk, T, D, F_, w, m = 1, 2, 1, 23, 4, 5, 6, 2
    x = make_inputs(B, H, Hk, T, D, F_, m, torch.float64, gen, ("sum", "sink"))
    y = lizard_attention_naive(**x, window=w, scale=D**-0.5, combine="sum")
    for h in range(H):
        S = torch.zeros(F_, D, dtype=torch.float64)
        z = torch.zeros(F_, dtype=torch.float64)
        for i in range(T):
            a = x["g"][0, h, i].exp()
            S = a * S + x["fk"][0, 0, i, :, None] * x["v"][0, 0, i, None, :]
            z = a * z + x["fk"][0, 0, i]
            fq = x["fq"][0, h, i]
            lin = fq @ S / (fq @ z + SUM_EPS)
            lo = max(0, i - w + 1)
            e = (x["q"][0, h, i] @ x["k"][0, 0, lo : i + 1].T * D**-0.5).exp()
            win = e @ x["v"][0, 0, lo : i + 1] / (x["meta_bias"][h].exp().sum() + e.sum())
            assert rel_err(y[0, h, i], lin + x["alpha"][h] * win) <= 1e-12


def test_sum_form_state_carries_the_normaliser(gen):
    """After a long prefix, decoding from the state alone matches the full sequence (the normaliser
    z lives in the state's last column)."""
    x = make_inputs(1, 2, 1, 40, 4, 4, 2, torch.float64, gen, ("sum", "sink"))
    kw = dict(window=6, scale=0.5, combine="sum", alpha=x["alpha"], meta_bias=x["meta_bias"])
    seq = {k: x[k] for k in ("q", "k", "v", "fq", "fk", "g")}
    ref = lizard_attention_naive(**seq, window=6, scale=0.5, combine="sum", alpha=x["alpha"], meta_bias=x["meta_bias"])
    _, state = lizard_attention_chunk(**{k: v[:, :, :39] for k, v in seq.items()}, chunk_size=8, **kw)
    assert state.keys.shape[2] == 6 and state.key_features.shape[2] == 0
    last, _ = lizard_attention_recurrent(**{k: v[:, :, 39:] for k, v in seq.items()}, state=state, **kw)
    assert rel_err(last, ref[:, :, 39:]) <= 1e-12
    assert state.kv_state[..., -1].min() > 0


@pytest.mark.parametrize("op", [lizard_attention_naive, lizard_attention_chunk, lizard_attention_recurrent])
def test_sum_form_stays_finite_where_its_normaliser_underflows(op):
    """Peaked feature maps with disjoint supports and a gate that forgets at once make phi_q . z
    underflow to 0 in float32 (seen training the paper form: its gradient, ~1/Z^2, overflowed);
    the normaliser's eps keeps the output and every gradient finite, the linear branch then ~0."""
    B, H, T, D, F_ = 1, 2, 20, 4, 4
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=gen, requires_grad=True) for _ in range(3))
    logits = torch.full((B, H, T, F_), -120.0)
    fq = logits.clone().index_fill_(-1, torch.tensor([0]), 0.0).softmax(-1).requires_grad_()
    fk = logits.clone().index_fill_(-1, torch.tensor([1]), 0.0).softmax(-1).requires_grad_()
    g = torch.full((B, H, T), -100.0, requires_grad=True)
    alpha = torch.ones(H, requires_grad=True)
    out = op(q, k, v, fq, fk, g, window=4, scale=D**-0.5, combine="sum", alpha=alpha,
             **({"chunk_size": 8} if op is lizard_attention_chunk else {}))
    y = out[0] if isinstance(out, tuple) else out
    assert (fq * fk).sum(-1).max() == 0  # the normaliser really underflows
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, fq, fk, g, alpha))
