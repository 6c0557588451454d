"""Pick the implementation of the Lizard attention op: Triton kernels on CUDA, torch otherwise.

Call::

    y, state = lizard_attention(q, k, v, fq, fk, g, window=w, scale=s, meta_k=mk, meta_v=mv)

* ``backend="auto"`` (default): the Triton path when the inputs are on CUDA, ``triton`` imports
  and ``state`` is a constant: None, a linear state alone (a memory with no window tokens: what
  stage 2's state passing hands on) or a prefilled one (a chunked prefill goes on: its window
  tokens run before the chunk); the torch chunked op otherwise.
* ``backend="triton"``: the Triton path or a :class:`BackendError` saying why it cannot run.
* ``backend="torch"``: always :func:`lizardlm.ops.lizard.lizard_attention_chunk`.

Returns ``(y, state)``. ``state`` is the :class:`LizardState` after the last token when the torch
path ran (it always computes it) or ``need_state=True`` (prefill before decoding, state passing);
None when the Triton path ran without it.
"""

from __future__ import annotations

import functools

import torch

from lizardlm.errors import LizardError
from lizardlm.ops.lizard import LizardState, lizard_attention_chunk, lizard_attention_step

BACKENDS = ("auto", "triton", "torch")


class BackendError(LizardError):
    """The requested attention backend cannot run on these inputs."""


@functools.lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    """None if the Triton path imports, else the reason it does not."""
    try:
        import triton  # noqa: F401

        import lizardlm.ops.triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken triton install
        return f"{type(e).__name__}: {e}"
    return None


def triton_available() -> bool:
    return _triton_import_error() is None


def _triton_refusal(q: torch.Tensor) -> str | None:
    """Why no Triton op can run on inputs like ``q`` (None: they can)."""
    if not q.is_cuda:
        return f"the Triton backend needs CUDA tensors, got device {q.device}"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the Triton backend supports float16, bfloat16 and float32, got {q.dtype}"
    err = _triton_import_error()
    if err is not None:
        return f"triton is not importable ({err})"
    return None


def state_refusal(state: LizardState | None) -> str | None:
    """Why the Triton op cannot start from ``state`` (None: it can): it takes the state as a constant."""
    if state is None:
        return None
    if any(t.requires_grad for t in state.tensors()):
        return "the Triton backend takes the initial state as a constant; a state that needs a gradient needs backend='torch'"
    return None


def padding_refusal(key_start, *tensors) -> str | None:
    """Why the Triton op cannot take the left padding ``key_start`` with these inputs (None: it can): it
    has no backward for it, so it takes padding only where no gradient is asked for."""
    if key_start is None or not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors):
        return None
    return "the Triton backend takes left-padded batches in inference only; training on them needs backend='torch'"


def _use_triton(q: torch.Tensor, backend: str, op_refusal: str | None = None) -> bool:
    """Whether to take the Triton path: ``backend`` allows it and neither the inputs nor the op's own
    ``op_refusal`` rule it out. ``backend='triton'`` that cannot run raises a :class:`BackendError`."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return False
    why = _triton_refusal(q) or op_refusal
    if why is not None and backend == "triton":
        raise BackendError(f"backend='triton' cannot run: {why}")
    return why is None


def lizard_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    fq: torch.Tensor,
    fk: torch.Tensor,
    g: torch.Tensor | None,
    *,
    window: int,
    scale: float,
    meta_k: torch.Tensor | None = None,
    meta_v: torch.Tensor | None = None,
    meta_bias: torch.Tensor | None = None,
    state: LizardState | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
    need_state: bool = False,
    combine: str = "shared",
    alpha: torch.Tensor | None = None,
    key_start: torch.Tensor | None = None,
    value_map: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LizardState | None]:
    """Lizard attention (see :mod:`lizardlm.ops.lizard`) on the fastest backend that can run it.

    Shapes: q ``(B, H, T, D)``; k ``(B, Hk, T, D)``; v ``(B, Hk, T, V)``; fq ``(B, H, T, F)``;
    fk ``(B, Hk, T, F)``; g ``(B, H, T)`` or None; meta_k/meta_v ``(H, m, D|V)``, meta_bias ``(H, m)`` or None
    (meta_bias alone: sink logits); ``combine`` ``shared`` or ``sum`` (with alpha ``(H,)``); ``key_start``
    ``(B,)`` or None: each row's left padding in the key sequence (the state's window tokens, then these);
    ``value_map`` ``(Hk, V, V)`` or None: the linear memory stores ``v W_h``.
    Returns ``(y, state)`` with y ``(B, H, T, V)`` in q's dtype; state is None on the Triton path
    unless ``need_state``.
    """
    if q.is_cuda and torch.is_autocast_enabled("cuda"):  # run in the autocast dtype, as torch's own ops do
        low = torch.get_autocast_dtype("cuda")
        q, k, v, fq, fk = (x.to(low) for x in (q, k, v, fq, fk))
    refusal = state_refusal(state) or padding_refusal(key_start, q, k, v, fq, fk, g, meta_k, meta_v, meta_bias, alpha,
                                                      value_map)
    if _use_triton(q, backend, refusal):
        from lizardlm.ops.triton import lizard_attention_cuda

        return lizard_attention_cuda(
            q, k, v, fq, fk, g, window=window, scale=scale, meta_k=meta_k, meta_v=meta_v, meta_bias=meta_bias,
            state=state, need_state=need_state, combine=combine, alpha=alpha, key_start=key_start, value_map=value_map,
        )  # chunk_size only changes rounding; the kernels use their own
    return lizard_attention_chunk(
        q, k, v, fq, fk, g, window=window, scale=scale, meta_k=meta_k, meta_v=meta_v, meta_bias=meta_bias,
        state=state, chunk_size=chunk_size, combine=combine, alpha=alpha, key_start=key_start, value_map=value_map,
    )


def lizard_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    fq: torch.Tensor,
    fk: torch.Tensor,
    g: torch.Tensor | None,
    *,
    window: int,
    scale: float,
    meta_k: torch.Tensor | None = None,
    meta_v: torch.Tensor | None = None,
    meta_bias: torch.Tensor | None = None,
    state: LizardState,
    backend: str = "auto",
    combine: str = "shared",
    alpha: torch.Tensor | None = None,
    key_start: torch.Tensor | None = None,
    value_map: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LizardState]:
    """One decoding step (all inputs T = 1) from ``state``: one fused Triton kernel on CUDA (``auto``
    or ``triton``), :func:`lizardlm.ops.lizard.lizard_attention_step` otherwise. ``key_start`` and
    ``value_map`` as in :func:`lizard_attention`. Returns ``(y, state)``."""
    kw = dict(window=window, scale=scale, meta_k=meta_k, meta_v=meta_v, meta_bias=meta_bias, state=state,
              combine=combine, alpha=alpha, key_start=key_start, value_map=value_map)
    refusal = "the fused step continues a prefilled state" if state.keys.shape[2] == 0 else None
    if _use_triton(q, backend, refusal):
        from lizardlm.ops.triton import lizard_step_cuda

        return lizard_step_cuda(q, k, v, fq, fk, g, **kw)
    return lizard_attention_step(q, k, v, fq, fk, g, **kw)
