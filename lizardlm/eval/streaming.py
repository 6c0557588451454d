"""Long inputs in chunks through the model's cache: constant memory for Lizard models at any length.

A Lizard model's :class:`~lizardlm.cache.LizardCache` holds a fixed-size state, so a chunked prefill
needs memory for one chunk whatever the length; a teacher gets a ``DynamicCache`` that grows with
the context (the caller catches its out-of-memory error per length). Models without a
``generation_config`` (test stubs) get one plain forward over the whole input instead.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from lizardlm.eval._utils import call_logits, model_device

DEFAULT_CHUNK = 2048


def uses_cache(model: Any) -> bool:
    """Hugging Face causal LMs (teachers and Lizard models) run chunked through a cache."""
    return hasattr(model, "generation_config")


def new_cache(model: Any):
    """An empty cache for ``model``: a LizardCache for Lizard models, else a DynamicCache."""
    from lizardlm.cache import LizardCache
    from lizardlm.models import is_lizard_model

    if is_lizard_model(model):
        return LizardCache.for_model(model)
    from transformers import DynamicCache

    return DynamicCache()


def _step(model: Any, ids: torch.Tensor, cache: Any, last_only: bool) -> torch.Tensor:
    from lizardlm.cache import CACHE_KWARG

    kw = {"logits_to_keep": 1} if last_only else {}
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=True, **{CACHE_KWARG: cache}, **kw).logits


def _prefill(model: Any, x: torch.Tensor, chunk: int) -> tuple[Any, torch.Tensor]:
    """A fresh cache after the prompts ``x`` ``(B, T)``, fed in chunks, and the last position's logits ``(B, 1, V)``."""
    cache = new_cache(model)
    for start in range(0, x.shape[1], chunk):
        logits = _step(model, x[:, start:start + chunk], cache, last_only=True)
    return cache, logits[:, -1:]


def _greedy_from(model: Any, cache: Any, logits: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy tokens ``(B, max_new_tokens)`` (CPU) from a prefilled ``cache`` and its last ``logits``."""
    new: list[torch.Tensor] = []
    for i in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        new.append(nxt)
        if i + 1 < max_new_tokens:
            logits = _step(model, nxt, cache, last_only=True)
    return torch.cat(new, dim=1).cpu()


def _greedy_uncached(model: Any, x: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    new: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        nxt = call_logits(model, x, last_only=True)[:, -1].argmax(-1, keepdim=True)
        new.append(nxt)
        x = torch.cat([x, nxt], dim=1)
    return torch.cat(new, dim=1).cpu()


def greedy_batch(model: Any, input_ids: torch.Tensor, max_new_tokens: int, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Greedy continuations ``(B, max_new_tokens)`` of equal-length prompts ``(B, T)``."""
    x = input_ids.to(model_device(model))
    if not uses_cache(model):
        return _greedy_uncached(model, x, max_new_tokens)
    return _greedy_from(model, *_prefill(model, x, chunk), max_new_tokens)


def greedy_and_nll(model: Any, prompts: torch.Tensor, max_new_tokens: int, continuations: torch.Tensor,
                   chunk: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`greedy_batch` of ``prompts`` ``(B, T)``, and the teacher-forced NLL ``(B, K)`` (float32, CPU)
    of each token of ``continuations`` ``(B, K)`` given its prompt and the continuation before it, from
    one prefill: the continuation runs in one step on a copy of the prefilled cache (a Lizard state is
    fixed-size; a teacher's keys and values are copied). Padding after a shorter continuation cannot
    change the positions before it (causal)."""
    x, c = prompts.to(model_device(model)), continuations.to(model_device(model))
    T, K = x.shape[1], c.shape[1]
    if not uses_cache(model):
        logits = call_logits(model, torch.cat([x, c], dim=1))[:, T - 1 : T - 1 + K]
        new = _greedy_uncached(model, x, max_new_tokens)
    else:
        cache, last = _prefill(model, x, chunk)
        rest = [_step(model, c[:, :-1], copy.deepcopy(cache), last_only=False)] if K > 1 else []
        logits = torch.cat([last, *rest], dim=1)
        new = _greedy_from(model, cache, last, max_new_tokens)
    return new, F.cross_entropy(logits.float().transpose(1, 2), c, reduction="none").cpu()


def token_nll(model: Any, input_ids: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Per-token NLL ``(B, T - 1)`` (float32, CPU) of ``input_ids`` ``(B, T)``, in chunks through the cache."""
    x = input_ids.to(model_device(model))
    if not uses_cache(model):
        chunk = x.shape[1]
    cache = new_cache(model) if uses_cache(model) else None
    out: list[torch.Tensor] = []
    for start in range(0, x.shape[1] - 1, chunk):
        part = x[:, start:start + chunk]
        logits = _step(model, part, cache, last_only=False) if cache is not None else call_logits(model, part)
        target = x[:, start + 1:start + chunk + 1]
        logits = logits[:, : target.shape[1]].float()
        out.append(F.cross_entropy(logits.transpose(1, 2), target, reduction="none").cpu())
    return torch.cat(out, dim=1)
