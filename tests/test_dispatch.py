"""CPU tests of the backend choice in lizardlm.ops.dispatch."""

import pytest
import torch

from lizardlm.ops import LizardState, lizard_attention_chunk, lizard_attention_step
from lizardlm.ops.dispatch import BackendError, lizard_attention, lizard_step


def _inputs(B=2, H=4, Hk=2, T=37, D=16, F=8, m=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    return dict(
        q=r(B, H, T, D), k=r(B, Hk, T, D), v=r(B, Hk, T, D),
        fq=torch.rand(B, H, T, F, generator=gen), fk=torch.rand(B, Hk, T, F, generator=gen),
        g=-torch.rand(B, H, T, generator=gen) * 0.1,
        meta_k=r(H, m, D), meta_v=r(H, m, D),
    )


def _call(x, **kw):
    return lizard_attention(x["q"], x["k"], x["v"], x["fq"], x["fk"], x["g"], window=8, scale=0.25,
                            meta_k=x["meta_k"], meta_v=x["meta_v"], **kw)


def test_auto_on_cpu_is_the_torch_op():
    x = _inputs()
    y, state = _call(x)
    y_ref, state_ref = lizard_attention_chunk(x["q"], x["k"], x["v"], x["fq"], x["fk"], x["g"], window=8,
                                              scale=0.25, meta_k=x["meta_k"], meta_v=x["meta_v"])
    assert y.shape == (2, 4, 37, 16)
    assert torch.equal(y, y_ref)
    assert isinstance(state, LizardState)
    assert torch.equal(state.kv_state, state_ref.kv_state)


def test_torch_backend_forced_and_state_continues():
    x = _inputs(T=20)
    y1, s1 = _call({**x, **{n: x[n][:, :, :12] for n in ("q", "k", "v", "fq", "fk", "g")}}, backend="torch")
    y2, _ = _call({**x, **{n: x[n][:, :, 12:] for n in ("q", "k", "v", "fq", "fk", "g")}}, backend="torch", state=s1)
    y, _ = _call(x, backend="torch")
    torch.testing.assert_close(torch.cat([y1, y2], 2), y, rtol=1e-4, atol=1e-5)


def test_need_state_uses_torch():
    y, state = _call(_inputs(), need_state=True)
    assert isinstance(state, LizardState)


def test_triton_on_cpu_raises_clearly():
    with pytest.raises(BackendError, match="CUDA"):
        _call(_inputs(), backend="triton")


def test_unknown_backend():
    with pytest.raises(BackendError, match="unknown attention backend"):
        _call(_inputs(), backend="cuda")


def test_gradients_flow_on_cpu():
    x = {n: (t.requires_grad_() if t is not None else None) for n, t in _inputs(T=11).items()}
    y, _ = _call(x)
    y.square().sum().backward()
    assert all(x[n].grad is not None for n in x)


def test_step_on_cpu_is_the_torch_step_and_triton_refuses():
    x = _inputs(T=13)
    _, state = _call({**x, **{n: x[n][:, :, :12] for n in ("q", "k", "v", "fq", "fk", "g")}}, need_state=True)
    last = {n: x[n][:, :, 12:] for n in ("q", "k", "v", "fq", "fk", "g")}
    kw = dict(window=8, scale=0.25, meta_k=x["meta_k"], meta_v=x["meta_v"], state=state)
    y, s = lizard_step(*last.values(), **kw)
    y_ref, s_ref = lizard_attention_step(*last.values(), **kw)
    assert torch.equal(y, y_ref) and all(torch.equal(a, b) for a, b in zip(s.tensors(), s_ref.tensors()))
    with pytest.raises(BackendError, match="CUDA"):
        lizard_step(*last.values(), backend="triton", **kw)


def test_triton_takes_a_prefilled_state_and_refuses_one_that_needs_a_gradient():
    """The Triton op starts from no state, a linear state alone or a prefilled one, as a constant; the
    dispatcher routes a state that needs a gradient to torch, and the Triton entry point refuses it in one line."""
    from lizardlm.ops import linear_state
    from lizardlm.ops.dispatch import state_refusal

    x = _inputs(T=12)
    _, prefilled = _call(x, need_state=True)
    memory = linear_state(prefilled.kv_state, x["q"], x["k"], x["v"], x["fk"])
    needs_grad = linear_state(prefilled.kv_state.clone().requires_grad_(), x["q"], x["k"], x["v"], x["fk"])
    assert prefilled.keys.shape[2] > 0
    assert state_refusal(None) is None and state_refusal(memory) is None and state_refusal(prefilled) is None
    assert "as a constant" in state_refusal(needs_grad)
    pytest.importorskip("triton")
    from lizardlm.ops.triton import lizard_attention_cuda

    with pytest.raises(ValueError, match="as a constant"):
        lizard_attention_cuda(x["q"], x["k"], x["v"], x["fq"], x["fk"], x["g"], window=8, scale=0.25, state=needs_grad)
