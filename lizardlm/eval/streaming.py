"""Long inputs in chunks through the model's cache: constant memory for Lizard models at any length.

A Lizard model's :class:`~lizardlm.cache.LizardCache` holds a fixed-size state, so a chunked prefill
needs memory for one chunk whatever the length; a teacher gets a ``DynamicCache`` that grows with
the context (the caller catches its out-of-memory error per length). Models without a
``generation_config`` (test stubs) get one plain forward over the whole input instead.
"""

from __future__ import annotations

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


def greedy_batch(model: Any, input_ids: torch.Tensor, max_new_tokens: int, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Greedy continuations ``(B, max_new_tokens)`` of equal-length prompts ``(B, T)``."""
    x = input_ids.to(model_device(model))
    new: list[torch.Tensor] = []
    if not uses_cache(model):
        for _ in range(max_new_tokens):
            nxt = call_logits(model, x, last_only=True)[:, -1].argmax(-1, keepdim=True)
            new.append(nxt)
            x = torch.cat([x, nxt], dim=1)
        return torch.cat(new, dim=1).cpu()
    cache = new_cache(model)
    for start in range(0, x.shape[1], chunk):
        logits = _step(model, x[:, start:start + chunk], cache, last_only=True)
    for i in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        new.append(nxt)
        if i + 1 < max_new_tokens:
            logits = _step(model, nxt, cache, last_only=True)
    return torch.cat(new, dim=1).cpu()


def continuation_nll(model: Any, prompts: torch.Tensor, continuations: torch.Tensor,
                     chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Teacher-forced NLL ``(B, K)`` (float32, CPU) of each continuation token ``(B, K)`` given its
    prompt ``(B, T)`` and the continuation before it: the prompt prefilled in chunks through the
    cache (last logits only), then the continuation in one step. Padding after a shorter
    continuation cannot change the positions before it (causal)."""
    x, c = prompts.to(model_device(model)), continuations.to(model_device(model))
    T, K = x.shape[1], c.shape[1]
    if not uses_cache(model):
        logits = call_logits(model, torch.cat([x, c], dim=1))[:, T - 1 : T - 1 + K]
    else:
        cache = new_cache(model)
        for start in range(0, T, chunk):
            last = _step(model, x[:, start:start + chunk], cache, last_only=True)[:, -1:]
        rest = [_step(model, c[:, :-1], cache, last_only=False)] if K > 1 else []
        logits = torch.cat([last, *rest], dim=1)
    return F.cross_entropy(logits.float().transpose(1, 2), c, reduction="none").cpu()


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
