"""Long-document perplexity by position, by default on held-out Gutenberg books (never used as
retrieval filler; ``lizardlm eval --longppl-data`` names other text).

Windows of ``seq_len`` tokens (up to ``max_windows``, :func:`text_windows`): each text long enough
gives its first ``seq_len`` tokens, in order (the held-out tenth of the books,
:func:`lizardlm.data.sources.held_out_split`: one window a book), and only when those are too few the
texts' next ``seq_len`` tokens, and so on (one long text, such as a corpus read as one stream, gives
consecutive windows). Windows run in chunks through the model's cache (constant memory for Lizard
models). Mean NLL is reported per power-of-two position bucket ``[0, first), [first, 2 first), ...``
up to ``seq_len``.

``context``: a fixed-context reference instead. Each position is predicted from at most ``context``
tokens before it, by windows of ``context`` tokens that start every ``context // 2`` tokens (a window
scores the positions it sees at least ``context // 2`` tokens of history for; the first scores all of
them). The teacher within its training length so reads the same text as the student: a bucket's
perplexity then moves only with how hard that stretch of the books is, which is what a student's
curve past the teacher's length is to be held against.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lizardlm.eval._utils import encode
from lizardlm.eval.streaming import DEFAULT_CHUNK, token_nll
from lizardlm.progress import progress


def bucket_edges(seq_len: int, first: int) -> list[int]:
    edges = [0]
    while edges[-1] < seq_len:
        edges.append(min(seq_len, first if edges[-1] == 0 else edges[-1] * 2))
    return edges


def longppl_eval(
    model: Any,
    tokenizer: Any,
    books: list[str],
    seq_len: int = 32768,
    first_bucket: int = 512,
    max_windows: int = 4,
    chunk: int = DEFAULT_CHUNK,
    progress_bar: bool = True,
    context: int | None = None,
) -> dict:
    """``{"seq_len", "windows", "context", "bucket_start", "bucket_end", "nll", "ppl"}`` over held-out
    ``books`` (``context`` None: every position sees the whole window before it)."""
    if context is not None and context < 2:
        raise ValueError(f"longppl context must be at least 2 tokens, got {context}")
    windows = text_windows(tokenizer, books, seq_len, max_windows)
    if not windows:
        raise ValueError(f"no long-ppl text has {seq_len} tokens")
    sums = torch.zeros(seq_len - 1, dtype=torch.float64)
    for window in progress(windows, enable=progress_bar, desc=f"longppl ({seq_len})", unit="window"):
        nll = token_nll(model, window[None], chunk=chunk) if context is None else sliding_nll(model, window[None], context)
        sums += nll[0].double()
    per_pos = sums / len(windows)  # index t predicts position t + 1
    edges = bucket_edges(seq_len, first_bucket)
    nll = [float(per_pos[max(lo, 1) - 1:hi - 1].mean()) for lo, hi in zip(edges, edges[1:])]
    return {"seq_len": seq_len, "windows": len(windows), "context": context, "bucket_start": edges[:-1],
            "bucket_end": edges[1:], "nll": nll, "ppl": [math.exp(v) for v in nll]}


def text_windows(tokenizer: Any, texts: list[str], seq_len: int, max_windows: int) -> list[torch.Tensor]:
    """Up to ``max_windows`` windows of ``seq_len`` token ids: round ``r`` takes tokens
    ``[r seq_len, (r + 1) seq_len)`` of every text that holds them, in the texts' order, and a round
    runs only when the ones before it gave too few. A text is encoded only when a round reaches it."""
    windows: list[torch.Tensor] = []
    encoded: list[list[int]] = []
    for text in texts:  # round 0, encoding as it goes: a few long books need not all be read
        if len(windows) == max_windows:
            return windows
        encoded.append(encode(tokenizer, text))
        if len(encoded[-1]) >= seq_len:
            windows.append(torch.tensor(encoded[-1][:seq_len], dtype=torch.long))
    rounds = max((len(ids) // seq_len for ids in encoded), default=0)
    for r in range(1, rounds):
        for ids in encoded:
            if len(windows) == max_windows:
                return windows
            if len(ids) >= (r + 1) * seq_len:
                windows.append(torch.tensor(ids[r * seq_len:(r + 1) * seq_len], dtype=torch.long))
    return windows


def sliding_nll(model: Any, input_ids: torch.Tensor, context: int) -> torch.Tensor:
    """Per-token NLL ``(B, T - 1)`` (float32, CPU) of ``input_ids`` ``(B, T)``, each token predicted from
    at most ``context`` tokens before it (windows every ``context // 2`` tokens, each scored afresh)."""
    total, step = input_ids.shape[1], context // 2
    out = torch.zeros(input_ids.shape[0], total - 1)
    start = 0
    while True:
        nll = token_nll(model, input_ids[:, start:start + context], chunk=context)
        first = 0 if start == 0 else context - step - 1  # targets with >= context - step tokens of history
        out[:, start + first:start + nll.shape[1]] = nll[:, first:]
        if start + context >= total:
            return out
        start += step
