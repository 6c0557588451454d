"""Pack documents into fixed-length token rows, and split the rows into train and validation sets."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from lizardlm.data.sources import Document, load_documents
from lizardlm.errors import DataError

logger = logging.getLogger(__name__)

BATCH_DOCS = 32
PROGRESS_MIN_CHARS = 1_000_000


@dataclass
class PackedSplits:
    """Train and validation rows, each ``(rows, seq_len)`` int64, and a record of how they were made."""

    train: torch.Tensor
    val: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)


def pack_tokens(
    documents: Sequence[Document | str],
    tokenizer: Any,
    seq_len: int,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """Tokenize each document (no special tokens; a :class:`Document` with ``token_ids`` keeps its own),
    append eos after each, concatenate, and cut into
    non-overlapping ``(N, seq_len)`` rows, dropping the remainder; stop after ``max_tokens`` tokens."""
    if seq_len < 1:
        raise DataError(f"seq_len must be >= 1, got {seq_len}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos token to separate documents")
    texts = [doc.text if isinstance(doc, Document) else doc for doc in documents]
    given = [doc.token_ids if isinstance(doc, Document) else None for doc in documents]
    chunks: list[torch.Tensor] = []
    total = 0
    chars = sum(map(len, texts))
    with tqdm(total=chars, desc="tokenizing", unit="char", unit_scale=True, disable=chars < PROGRESS_MIN_CHARS) as bar:
        for start in range(0, len(texts), BATCH_DOCS):
            batch = texts[start:start + BATCH_DOCS]
            known = given[start:start + BATCH_DOCS]
            todo = [text for text, ids in zip(batch, known) if ids is None]
            fresh = iter(tokenizer(todo, add_special_tokens=False, verbose=False)["input_ids"] if todo else ())
            for ids in known:
                ids = torch.as_tensor(next(fresh) if ids is None else ids, dtype=torch.long)
                chunks.append(torch.cat([ids, torch.tensor([eos])]))
                total += ids.numel() + 1
            bar.update(sum(map(len, batch)))
            if max_tokens is not None and total >= max_tokens:
                break
    tokens = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    rows = tokens.numel() // seq_len
    if rows == 0:
        raise DataError(f"only {tokens.numel()} tokens of data, fewer than one row of seq_len {seq_len}")
    return tokens[: rows * seq_len].view(rows, seq_len)


def build_splits(
    spec: str,
    tokenizer: Any,
    seq_len: int,
    train_tokens: int,
    val_tokens: int,
    seed: int = 0,
    **kw: Any,
) -> PackedSplits:
    """Packed train and held-out validation rows of a data spec, split by a seeded permutation of rows.

    Each split takes ``ceil(tokens / seq_len)`` rows (at least 1). Validation rows are drawn first, so
    they do not change with ``train_tokens``. With less data than asked, the rows are shared in the
    asked proportion, with a warning and ``meta["shortfall"] = True``. ``kw`` goes to ``load_documents``.
    A ``mix:`` spec packs each part to its weight (:mod:`lizardlm.data.mixture`).
    """
    if spec.startswith("mix:"):
        from lizardlm.data.mixture import build_mixture

        return build_mixture(spec, tokenizer, seq_len, train_tokens, val_tokens, seed, **kw)
    documents = load_documents(spec, tokenizer=tokenizer, **kw)
    rows = pack_tokens(documents, tokenizer, seq_len)
    available = rows.shape[0]
    want_val = max(1, math.ceil(val_tokens / seq_len))
    want_train = max(1, math.ceil(train_tokens / seq_len))
    if available < 2:
        raise DataError(
            f"data {spec!r} packs into {available} row of {seq_len} tokens; need at least 2 (1 train, 1 validation)"
        )
    n_val, n_train = want_val, want_train
    shortfall = available < want_val + want_train
    if shortfall:
        n_val = min(available - 1, max(1, round(available * want_val / (want_val + want_train))))
        n_train = available - n_val
        logger.warning(
            "data %r has %d tokens (%d rows of %d); asked for %d train + %d validation tokens: using %d train + %d validation rows",
            spec, available * seq_len, available, seq_len, train_tokens, val_tokens, n_train, n_val,
        )
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    val = rows[order[:n_val]]
    train = rows[order[n_val:n_val + n_train]]
    meta = {
        "spec": spec,
        "seq_len": seq_len,
        "seed": seed,
        "num_documents": len(documents),
        "rows_available": available,
        "train_tokens_requested": train_tokens,
        "val_tokens_requested": val_tokens,
        "train_rows": n_train,
        "val_rows": n_val,
        "train_tokens": n_train * seq_len,
        "val_tokens": n_val * seq_len,
        "shortfall": shortfall,
    }
    return PackedSplits(train=train, val=val, meta=meta)
