"""Small helpers shared by the evaluation modules (model calls, OOM detection, progress bars)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

# ``batch_size="auto"`` for lizardlm's own batched evals (perplexity, MQAR, passkey, RULER): the
# first batch size tried; on CUDA a batch that runs out of memory is split (:func:`split_on_oom`).
AUTO_BATCH_CUDA = 16
AUTO_BATCH_CPU = 4


def model_device(model: Any) -> torch.device:
    """Device of the model's first parameter (CPU for parameter-less stubs)."""
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device("cpu")


def _accepted_kwargs(model: Any) -> tuple[set[str], bool]:
    fn = getattr(model, "forward", model)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set(), True
    names = set(sig.parameters)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


def call_logits(model: Any, input_ids: torch.Tensor, last_only: bool = False, **kwargs: Any) -> torch.Tensor:
    """Run ``model(input_ids)`` without building a cache and return ``.logits`` ([B, T, V]).

    ``last_only`` asks for logits of the last position only (``logits_to_keep=1``) when the
    model supports it, which avoids a [T, vocab] logits tensor on long inputs.
    Keyword arguments the model's ``forward`` does not accept are dropped.
    """
    names, var_kw = _accepted_kwargs(model)
    kw = {"use_cache": False, **kwargs}
    if last_only:
        kw["logits_to_keep"] = 1
    if not var_kw:
        kw = {k: v for k, v in kw.items() if k in names}
    with torch.inference_mode():
        out = model(input_ids=input_ids, **kw) if ("input_ids" in names or var_kw) else model(input_ids, **kw)
    logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
    if last_only:
        logits = logits[:, -1:]
    return logits


def is_oom(exc: BaseException) -> bool:
    """True for out-of-memory errors on CPU or GPU."""
    if isinstance(exc, MemoryError):
        return True
    oom_cls = getattr(torch, "OutOfMemoryError", None)
    if oom_cls is not None and isinstance(exc, oom_cls):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg or "cannot allocate memory" in msg
    )


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


OOM_SKIP = "skipped (out of memory)"


@contextlib.contextmanager
def skip_length(rec: dict) -> Iterator[None]:
    """Run one context length's trials: a ValueError (no prompt fits that length) or running out of
    memory ends them and marks ``rec["status"]`` skipped, instead of ending the whole evaluation."""
    try:
        yield
    except ValueError as err:
        rec["status"] = f"skipped ({err})"
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err):
            raise
        free_memory()
        rec["status"] = OOM_SKIP


def resolve_batch_size(batch_size: int | str, model: Any) -> int:
    """An int batch size: ``batch_size`` itself, or for ``"auto"`` :data:`AUTO_BATCH_CUDA` /
    :data:`AUTO_BATCH_CPU` by the model's device."""
    if batch_size != "auto":
        return int(batch_size)
    return AUTO_BATCH_CUDA if model_device(model).type == "cuda" else AUTO_BATCH_CPU


def split_on_oom(fn: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R]:
    """``fn(items)``, one result per item; if that runs out of memory, each half of ``items`` the same
    way (down to one item, whose error is raised). Right for independent items only: the results
    do not depend on how the items are grouped."""
    try:
        return fn(items)
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err) or len(items) < 2:
            raise
    free_memory()
    half = len(items) // 2
    return split_on_oom(fn, items[:half]) + split_on_oom(fn, items[half:])


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (no BOS/EOS)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if callable(tokenizer) else list(
        tokenizer.encode(text, add_special_tokens=False)
    )


def is_full_attention_hf_model(model: Any) -> bool:
    """Heuristic: a stock ``transformers`` model (full softmax attention, memory/time grow with T^2)."""
    return type(model).__module__.startswith("transformers.")
