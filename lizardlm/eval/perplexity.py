"""Perplexity over non-overlapping windows, and mean NLL by position (length generalisation).

The text is tokenized once (no special tokens) and cut into consecutive, non-overlapping windows
of ``window`` tokens; each window is scored independently (no context carried over), so the first
token of each window is not predicted. A final shorter window is scored too when it has at least
two tokens (``drop_last=True`` skips it).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from lizardlm.eval._utils import call_logits, encode, model_device, split_on_oom
from lizardlm.progress import progress


def _to_ids(tokenizer: Any, text_or_ids: str | Sequence[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(text_or_ids, str):
        return torch.tensor(encode(tokenizer, text_or_ids), dtype=torch.long)
    if isinstance(text_or_ids, torch.Tensor):
        return text_or_ids.detach().reshape(-1).long().cpu()
    return torch.tensor(list(text_or_ids), dtype=torch.long)


def _token_nll(model: Any, batch: torch.Tensor) -> torch.Tensor:
    """Per-token NLL [B, T-1] (float32) of ``batch`` [B, T] under the model:
    ``nll_bt = logsumexp(z_bt) - z_bt[x_{b,t+1}]``, one row at a time, so that beside the logits only
    one row's [T-1, vocab] log-softmax exists (not a copy of all the logits and their log-softmax)."""
    x = batch.to(model_device(model))
    logits = call_logits(model, x)
    with torch.inference_mode():
        nll = torch.stack([F.cross_entropy(z[:-1].float(), t[1:], reduction="none") for z, t in zip(logits, x)])
    return nll.cpu()


def perplexity(
    model: Any,
    tokenizer: Any,
    text_or_ids: str | Sequence[int] | torch.Tensor,
    window: int = 1024,
    batch_size: int = 1,
    progress: bool = True,
    max_windows: int | None = None,
    drop_last: bool = False,
    desc: str = "perplexity",
) -> dict:
    """Perplexity of ``model`` on a text (or token ids) in non-overlapping windows.

    Returns ``{"nll", "ppl", "tokens", "windows", "window"}`` where ``nll`` is the mean negative
    log-likelihood per predicted token (nats), ``ppl = exp(nll)`` and ``tokens`` is the number of
    predicted tokens (each window of n tokens predicts n-1). ``max_windows`` keeps only the first
    windows (for quick runs). ``desc`` labels the progress bar.
    """
    if window < 2:
        raise ValueError("window must be >= 2")
    ids = _to_ids(tokenizer, text_or_ids)
    n = ids.numel()
    starts = list(range(0, n, window))
    windows = [ids[s : s + window] for s in starts]
    windows = [w for w in windows if w.numel() >= 2]
    if drop_last and windows and windows[-1].numel() < window:
        windows = windows[:-1]
    if max_windows is not None:
        windows = windows[: max(0, int(max_windows))]
    if not windows:
        raise ValueError(f"text too short for perplexity: {n} tokens")
    full = [w for w in windows if w.numel() == window]
    rest = [w for w in windows if w.numel() != window]
    batches = [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), max(1, batch_size))]
    batches += [w.unsqueeze(0) for w in rest]

    total = 0.0
    count = 0
    bar = _progress_bar(len(windows), progress, desc)
    for b in batches:
        nll = torch.stack(split_on_oom(lambda rows: list(_token_nll(model, rows)), b))
        total += float(nll.double().sum())
        count += nll.numel()
        bar.update(b.size(0))
        bar.set_postfix(ppl=f"{math.exp(total / count):.3f}")
    bar.close()
    mean = total / count
    return {"nll": mean, "ppl": math.exp(mean), "tokens": count, "windows": len(windows), "window": window}


def _progress_bar(total: int, enable: bool, desc: str):
    return progress(total=total, enable=enable, desc=desc, unit="win")


def perplexity_by_position(
    model: Any,
    tokenizer: Any,
    text: str | Sequence[int] | torch.Tensor,
    seq_len: int,
    bucket: int,
    max_windows: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> dict:
    """Mean NLL per position bucket over non-overlapping windows of ``seq_len`` tokens.

    Position p is the index (within its window) of the predicted token, 1..seq_len-1; bucket k
    covers positions ``[k*bucket, (k+1)*bucket)``. Only full windows are used. Returns
    ``{"seq_len", "bucket", "windows", "tokens", "bucket_start", "bucket_end", "nll", "ppl"}``.
    """
    if bucket < 1 or seq_len < 2:
        raise ValueError("need seq_len >= 2 and bucket >= 1")
    ids = _to_ids(tokenizer, text)
    n_win = ids.numel() // seq_len
    if max_windows is not None:
        n_win = min(n_win, int(max_windows))
    if n_win < 1:
        raise ValueError(f"text too short: {ids.numel()} tokens < seq_len {seq_len}")
    sums = torch.zeros(seq_len - 1, dtype=torch.float64)
    bar = _progress_bar(n_win, progress, f"nll by position ({seq_len})")
    for i in range(0, n_win, max(1, batch_size)):
        j = min(n_win, i + batch_size)
        batch = ids[i * seq_len : j * seq_len].view(j - i, seq_len)
        sums += _token_nll(model, batch).double().sum(0)
        bar.update(j - i)
    bar.close()
    per_pos = sums / n_win  # index t -> predicted token position t+1
    starts, ends, nll = [], [], []
    for s in range(0, seq_len, bucket):
        e = min(seq_len, s + bucket)
        lo, hi = max(s, 1), e  # positions lo..hi-1 -> indices lo-1..hi-2
        if hi <= lo:
            continue
        starts.append(s)
        ends.append(e)
        nll.append(float(per_pos[lo - 1 : hi - 1].mean()))
    return {
        "seq_len": seq_len,
        "bucket": bucket,
        "windows": n_win,
        "tokens": n_win * (seq_len - 1),
        "bucket_start": starts,
        "bucket_end": ends,
        "nll": nll,
        "ppl": [math.exp(v) for v in nll],
    }
