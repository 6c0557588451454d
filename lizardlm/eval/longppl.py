"""Long-document perplexity by position on held-out Gutenberg books (never used as retrieval filler).

Each book of the held-out tenth (:func:`lizardlm.data.sources.held_out_split`) long enough gives
its first ``seq_len`` tokens as one window (up to ``max_windows``); windows run in chunks through
the model's cache (constant memory for Lizard models). Mean NLL is reported per power-of-two
position bucket ``[0, first), [first, 2 first), ...`` up to ``seq_len``.
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
) -> dict:
    """``{"seq_len", "windows", "bucket_start", "bucket_end", "nll", "ppl"}`` over held-out ``books``."""
    windows = []
    for text in books:
        ids = encode(tokenizer, text)
        if len(ids) >= seq_len:
            windows.append(torch.tensor(ids[:seq_len], dtype=torch.long))
        if len(windows) == max_windows:
            break
    if not windows:
        raise ValueError(f"no held-out book has {seq_len} tokens")
    sums = torch.zeros(seq_len - 1, dtype=torch.float64)
    for window in progress(windows, enable=progress_bar, desc=f"longppl ({seq_len})", unit="book"):
        sums += token_nll(model, window[None], chunk=chunk)[0].double()
    per_pos = sums / len(windows)  # index t predicts position t + 1
    edges = bucket_edges(seq_len, first_bucket)
    nll = [float(per_pos[max(lo, 1) - 1:hi - 1].mean()) for lo, hi in zip(edges, edges[1:])]
    return {"seq_len": seq_len, "windows": len(windows), "bucket_start": edges[:-1], "bucket_end": edges[1:],
            "nll": nll, "ppl": [math.exp(v) for v in nll]}
