"""Fast multiple-choice scoring for lm-eval: :class:`ScoringLM`, HFLM's numbers with less work.

A request ``(context, continuation)`` is tokenized as lm-eval's ``HFLM`` does (``TemplateLM``'s
own code: trailing spaces of the context move to the continuation, ``ctx = enc(context)``,
``cont = enc(context + continuation)[len(ctx):]``, an empty context becomes the prefix token) and
scored on the row ``x = (ctx + cont)[-(L+1):][:-1]`` (left-truncated to the max length ``L``)::

    ll     = sum_j log_softmax(W h_{p+j})[cont_j]        p = |x| - |cont|
    greedy = all_j argmax(W h_{p+j}) == cont_j

with ``h`` the decoder's last hidden states and ``W`` the LM head. Only the work differs from HFLM:

* each distinct string is tokenized once, in batched tokenizer calls (a 5-shot MMLU context
  once, not once per answer);
* requests with the same row ``x`` share one forward (all one-token answers of a question; HFLM's
  logits cache groups these too);
* ``W`` and a float32 log-softmax run only at the scored positions, not at every position;
* rows, longest first, are right-padded to a multiple of :data:`PAD_MULTIPLE` tokens (64 on CUDA,
  so few shapes occur and shape-specialised Triton kernels compile rarely; a causal model's outputs
  at real positions do not depend on right padding); a batch holds rows of one padded length only
  (little padding), up to ``batch_size`` rows or, for ``"auto"``, up to a token and memory budget;
  a batch that runs out of memory is split.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import DEFAULT_MAX_LENGTH, has_bos_prefix, resolve_max_length

from lizardlm.errors import LizardError
from lizardlm.eval._utils import free_memory, model_device, split_on_oom
from lizardlm.progress import progress

PAD_MULTIPLE = {"cuda": 64, "cpu": 8}  # tokens; on CPU no kernel specialises on shapes, padding only adds work
TOKEN_CAP = {"cuda": 1 << 18, "cpu": 1 << 13}  # tokens (rows x padded length) in one "auto" batch
CPU_BYTES = 2 << 30  # memory budget of one "auto" batch on CPU; on CUDA half the free memory
ENCODE_CHUNK = 4096  # strings per batched tokenizer call


@dataclass
class _Row:
    """One model input and the requests scored at its last positions: ``(request index, continuation)``."""

    tokens: list[int]
    items: list[tuple[int, list[int]]]

    @property
    def n_scored(self) -> int:
        return max(len(cont) for _, cont in self.items)


class ScoringLM(TemplateLM):
    """An lm-eval ``LM`` over a transformers causal LM whose logits are ``lm_head(decoder(ids))``."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int | str = "auto", max_length: int | None = None):
        super().__init__()
        if not (hasattr(model, "get_decoder") and hasattr(model, "get_output_embeddings")):
            raise LizardError(f"fast scoring needs a transformers causal LM, got {type(model).__name__}; use the hflm backend")
        self.model, self.tokenizer = model, tokenizer
        self.decoder, self.head = model.get_decoder(), model.get_output_embeddings()
        self.batch_size = batch_size
        self.max_length = max_length or resolve_max_length(model.config, tokenizer, default=DEFAULT_MAX_LENGTH)
        self._device = model_device(model)
        self.pad_multiple = PAD_MULTIPLE["cuda" if self._device.type == "cuda" else "cpu"]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._bos_text = tokenizer.decode(self.prefix_token_id)
        self._encoded: dict[str, list[int]] = {}
        self._check_decomposition()

    # ------------------------------------------------------------------ tokenization (HFLM's)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def _special_kwargs(self, string: str, add_special_tokens: bool | None) -> dict[str, bool]:
        if add_special_tokens is not None:
            return {"add_special_tokens": add_special_tokens}
        return {"add_special_tokens": False} if has_bos_prefix(string, self._bos_text) else {}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """HFLM's ``tok_encode``; strings pre-encoded by :meth:`loglikelihood` come from its cache."""
        if add_special_tokens is None and string in self._encoded:
            return self._encoded[string]
        return self.tokenizer.encode(string, **self._special_kwargs(string, add_special_tokens))

    def _encode_many(self, strings: list[str]) -> dict[str, list[int]]:
        """``{s: tok_encode(s)}`` through batched tokenizer calls."""
        by_kwargs: dict[bool, list[str]] = {}
        for s in strings:
            by_kwargs.setdefault(has_bos_prefix(s, self._bos_text), []).append(s)
        out: dict[str, list[int]] = {}
        for group in by_kwargs.values():
            kw = self._special_kwargs(group[0], None)
            for i in range(0, len(group), ENCODE_CHUNK):
                chunk = group[i : i + ENCODE_CHUNK]
                out.update(zip(chunk, self.tokenizer(chunk, **kw)["input_ids"]))
        return out

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``TemplateLM.loglikelihood`` with every context and context+continuation string encoded once
        beforehand (a cache only: a string it misses is encoded on the spot, the same way)."""
        strings: set[str] = set()
        for context, continuation in (r.args for r in requests):
            if context:  # TemplateLM._encode_pair encodes these two
                strings.update((context.rstrip(), context + continuation))
        self._encoded = self._encode_many(list(strings))
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._encoded = {}

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("ScoringLM scores multiple-choice requests only; use the hflm backend for perplexity tasks")

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError("ScoringLM scores multiple-choice requests only; use the hflm backend for generation tasks")

    # ------------------------------------------------------------------ scoring

    def _check_decomposition(self) -> None:
        """The premise: the model's logits are ``head(decoder(ids).last_hidden_state)`` (no soft-capping etc.)."""
        ids = (torch.arange(64, device=self._device) % self.head.weight.shape[0])[None]
        with torch.inference_mode():
            full = self.model(input_ids=ids, use_cache=False).logits.float()
            split = self.head(self._hidden(ids)).float()
        if not torch.allclose(full, split, rtol=1e-3, atol=1e-3):
            raise LizardError(f"{type(self.model).__name__}: logits are not lm_head(decoder hidden states); use the hflm backend")

    def _hidden(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.decoder(input_ids=ids, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _padded(self, n: int) -> int:
        return min(-(-n // self.pad_multiple) * self.pad_multiple, max(n, self.max_length))

    def _rows(self, requests: list[tuple[Any, list[int], list[int]]]) -> list[_Row]:
        """Requests grouped by model input, longest first (HFLM's left truncation)."""
        rows: dict[tuple[int, ...], _Row] = {}
        for i, (_, ctx, cont) in enumerate(requests):
            if not ctx or not cont:
                raise LizardError(f"request {i}: empty {'context' if not ctx else 'continuation'} after tokenization")
            if len(cont) > self.max_length:
                raise LizardError(f"request {i}: continuation of {len(cont)} tokens exceeds max length {self.max_length}")
            x = (ctx + cont)[-(self.max_length + 1):][:-1]
            rows.setdefault(tuple(x), _Row(x, [])).items.append((i, cont))
        return sorted(rows.values(), key=lambda r: -len(r.tokens))

    def _batches(self, rows: list[_Row]) -> Iterator[list[_Row]]:
        """Consecutive rows of one padded length: at most ``batch_size`` of them, or for ``"auto"`` as many
        as fit the token cap and the memory budget (per row: padded length x activation bytes per token
        + scored positions x vocab x 12 bytes of logits and float32 log-probs)."""
        auto = self.batch_size == "auto"
        if auto:
            free_memory()
            on_cuda = self._device.type == "cuda"
            budget = torch.cuda.mem_get_info(self._device)[0] // 2 if on_cuda else CPU_BYTES
            cap = TOKEN_CAP["cuda" if on_cuda else "cpu"]
            hidden = self.model.config.hidden_size
            inter = getattr(self.model.config, "intermediate_size", 4 * hidden)
            per_token = self.head.weight.element_size() * (16 * hidden + 4 * inter)
            per_scored = 12 * self.head.weight.shape[0]
        i = 0
        while i < len(rows):
            width = self._padded(len(rows[i].tokens))
            n, used = 0, 0
            while i + n < len(rows) and self._padded(len(rows[i + n].tokens)) == width:
                if not auto and n == int(self.batch_size):
                    break
                if auto:
                    used += width * per_token + rows[i + n].n_scored * per_scored
                    if n and (used > budget or (n + 1) * width > cap):
                        break
                n += 1
            yield rows[i : i + n]
            i += n

    def _score(self, rows: Sequence[_Row]) -> list[list[tuple[int, float, bool]]]:
        """``[(request index, log-likelihood, greedy), ...]`` for each row, from one forward."""
        ids = torch.full((len(rows), self._padded(len(rows[0].tokens))), self.pad_id, dtype=torch.long)
        pos_b: list[int] = []  # scored positions (row, token), n_scored per row
        pos_t: list[int] = []
        sel: list[int] = []  # per continuation token: its scored position, its id, its request (running number)
        tgt: list[int] = []
        owner: list[int] = []
        idx: list[int] = []
        for b, row in enumerate(rows):
            ids[b, : len(row.tokens)] = torch.tensor(row.tokens)
            start, n, end = len(pos_b), row.n_scored, len(row.tokens)
            pos_b += [b] * n
            pos_t += range(end - n, end)
            for i, cont in row.items:
                sel += range(start + n - len(cont), start + n)
                tgt += cont
                owner += [len(idx)] * len(cont)
                idx.append(i)
        dev = self._device
        with torch.inference_mode():
            h = self._hidden(ids.to(dev))[torch.tensor(pos_b, device=dev), torch.tensor(pos_t, device=dev)]
            logp = torch.log_softmax(self.head(h).float(), -1)
            sel_t, tgt_t = torch.tensor(sel, device=dev), torch.tensor(tgt, device=dev)
            lp = logp[sel_t, tgt_t].double().cpu()
            miss = (logp.argmax(-1)[sel_t] != tgt_t).long().cpu()
        owner_t = torch.tensor(owner)
        ll = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, owner_t, lp).tolist()
        misses = torch.zeros(len(idx), dtype=torch.long).index_add_(0, owner_t, miss).tolist()
        flat = [(i, ll[k], misses[k] == 0) for k, i in enumerate(idx)]
        out, k = [], 0
        for row in rows:
            out.append(flat[k : k + len(row.items)])
            k += len(row.items)
        return out

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        rows = self._rows(requests)
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        bar = progress(total=len(requests), desc="Scoring requests", enable=not disable_tqdm)
        for batch in self._batches(rows):
            for scored in split_on_oom(self._score, batch):
                for idx, ll, greedy in scored:
                    out[idx] = (ll, greedy)
            bar.update(sum(len(r.items) for r in batch))
        bar.close()
        return out
