"""The fused Triton decoding step against the torch step, on the device. Skipped without CUDA."""

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("triton")

from lizardlm.ops import lizard_attention_chunk, lizard_attention_step  # noqa: E402
from lizardlm.ops.triton.step import lizard_step_cuda  # noqa: E402


@pytest.mark.parametrize("mapped", [False, True], ids=["", "value-map"])
@pytest.mark.parametrize("form", ["shared", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [
    # B, H, Hk, prefill, D, V, F, w, m, gate
    (1, 9, 3, 20, 64, 64, 128, 64, 4, True),     # SmolLM2 heads, window still filling
    (2, 4, 2, 100, 128, 128, 128, 64, 4, True),  # full window: the oldest token folds in
    (1, 4, 4, 40, 64, 96, 64, 16, 0, False),     # no meta slots, no gate, V != D
])
@torch.no_grad()
def test_fused_step_matches_torch_step(case, dtype, form, mapped):
    """Our form with meta key/value slots, the paper's with sink logits and alpha; with and without a value map."""
    B, H, Hk, T0, D, V, Fd, w, m, gate = case
    gen = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, device="cuda")  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=gen, device="cuda") * 2 / Fd**0.5  # noqa: E731

    def tokens(T):
        return [r(B, H, T, D).to(dtype), r(B, Hk, T, D).to(dtype), r(B, Hk, T, V).to(dtype), u(B, H, T, Fd).to(dtype),
                u(B, Hk, T, Fd).to(dtype), F.logsigmoid(r(B, H, T) + 3) if gate else None]

    if form == "sum":
        meta = dict(meta_bias=r(H, m)) if m else {}
        meta.update(combine="sum", alpha=r(H))
    else:
        meta = dict(meta_k=r(H, m, D).to(dtype), meta_v=r(H, m, V).to(dtype), meta_bias=r(H, m)) if m else {}
    if mapped:
        meta["value_map"] = (r(Hk, V, V) / V**0.5).to(dtype)
    kw = dict(window=w, scale=D**-0.5, **meta)
    _, state = lizard_attention_chunk(*tokens(T0), **kw)
    ref_state = state
    for _ in range(max(w - T0, 0) + 3):  # crosses from filling to folding when T0 < w
        x = tokens(1)
        y, state = lizard_step_cuda(*x, state=state, **kw)
        y_ref, ref_state = lizard_attention_step(*x, state=ref_state, **kw)
        tol = 1e-4 if dtype == torch.float32 else 2e-2  # the torch step rounds the window output to bf16 first
        torch.testing.assert_close(y.float(), y_ref.float(), rtol=tol, atol=tol)
        for a, b in zip(state.tensors(), ref_state.tensors()):
            assert a.shape == b.shape and a.dtype == b.dtype
            torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5)
