"""Shared by the kernel tests (``tests/gpu``, ``test_triton_interpreter.py``): random inputs of the
Lizard op, its float64 reference with gradients, and the relative error."""

from __future__ import annotations

import torch

from lizardlm.ops.lizard import lizard_attention_chunk, lizard_attention_naive, linear_state

NAMES = ("q", "k", "v", "fq", "fk", "g", "meta_k", "meta_v", "meta_bias", "alpha", "value_map")
FORMS = ("shared", "paper")
"""``shared``: our form (shared normaliser, meta key/value slots); ``paper``: sum form with sink logits."""


def make_inputs(B, H, Hk, T, D, V, F, m, use_g, seed, device="cpu", form="shared",
                value_map: bool = False) -> dict[str, torch.Tensor | None]:
    """float32 inputs from a generator seeded with ``seed`` on ``device``; gates and meta slots
    optional; ``form="paper"`` gives sink logits (meta_bias alone) and a per-head alpha; ``value_map``
    a random map ``(Hk, V, V)`` of the linear branch's values."""
    gen = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, device=device)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=gen, device=device)  # noqa: E731
    paper = form == "paper"
    return {
        "q": r(B, H, T, D), "k": r(B, Hk, T, D), "v": r(B, Hk, T, V),
        "fq": u(B, H, T, F) * 2 / F**0.5, "fk": u(B, Hk, T, F) * 2 / F**0.5,
        "g": torch.nn.functional.logsigmoid(r(B, H, T) + 3.0) if use_g else None,
        "meta_k": r(H, m, D) if m and not paper else None, "meta_v": r(H, m, V) if m and not paper else None,
        "meta_bias": r(H, m) if m else None,
        "alpha": r(H) if paper else None,
        "value_map": r(Hk, V, V) / V**0.5 if value_map else None,
    }


def reference(x: dict, window: int, scale: float, dy: torch.Tensor | None = None):
    """(y, dy, inputs with .grad): the naive op in float64, back-propagated from ``dy`` (a fresh
    ``randn_like(y)`` when None)."""
    ref = {n: (t.double().requires_grad_() if t is not None else None) for n, t in x.items()}
    y = lizard_attention_naive(*(ref[n] for n in NAMES[:6]), window=window, scale=scale,
                               meta_k=ref["meta_k"], meta_v=ref["meta_v"], meta_bias=ref["meta_bias"],
                               combine="shared" if ref["alpha"] is None else "sum", alpha=ref["alpha"],
                               value_map=ref["value_map"])
    dy = torch.randn_like(y) if dy is None else dy
    (y * dy).sum().backward()
    return y, dy, ref


def reference_from_state(x: dict, s0: torch.Tensor, window: int, scale: float, dy: torch.Tensor):
    """(y, inputs with .grad, state after the last token): the naive op in float64 started from the
    linear memory ``s0`` ``(B, H, F, V + 1)``, back-propagated from ``dy``; the state from the float64
    torch chunked op (the naive op keeps none)."""
    combine = "shared" if x["alpha"] is None else "sum"
    ref = {n: (t.double().requires_grad_() if t is not None else None) for n, t in x.items()}
    meta = dict(meta_k=ref["meta_k"], meta_v=ref["meta_v"], meta_bias=ref["meta_bias"], alpha=ref["alpha"],
                value_map=ref["value_map"])
    y = lizard_attention_naive(*(ref[n] for n in NAMES[:6]), window=window, scale=scale, combine=combine,
                               kv_state=s0.double(), **meta)
    (y * dy).sum().backward()
    with torch.no_grad():
        args = [ref[n] for n in NAMES[:6]]
        start = linear_state(s0.double(), args[0], args[1], args[2], args[4])
        _, after = lizard_attention_chunk(*args, window=window, scale=scale, combine=combine, state=start, **meta)
    return y, ref, after


def relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (the absolute error where b is zero)."""
    a, b = a.double(), b.double()
    den = b.norm()
    return ((a - b).norm() / den).item() if den > 0 else (a - b).norm().item()
