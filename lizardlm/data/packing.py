"""Pack documents into fixed-length token rows, and split the rows into train and validation sets.

A token that is input only, not a target of the next-token loss (e.g. the filler and questions of
``retrieval:loss=answers`` documents), is stored as ``-id - 1`` (:func:`without_loss`), so that the
rows stay one int64 tensor through packing, mixtures, splits, batches and shards;
:func:`inputs_and_labels` reads them back as Hugging Face ``input_ids`` and ``labels`` (-100 where
no loss). A consumer that forgot to read them back fails loudly (a negative embedding index).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lizardlm.data.sources import Document, load_documents
from lizardlm.errors import DataError
from lizardlm.progress import progress

logger = logging.getLogger(__name__)

BATCH_DOCS = 32
BATCH_CHARS = 1_000_000
PIECE_CHARS = 100_000
PROGRESS_MIN_CHARS = 1_000_000
POOL_MIN_TOKENS = 1 << 20
"""Rows are drawn from the first ``max(POOL_MIN_TOKENS, tokens asked for)`` tokens of a corpus."""


IGNORE_INDEX = -100
"""The label of a token without loss (Hugging Face's and torch's cross-entropy ``ignore_index``)."""


def without_loss(ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``ids`` with every token where ``targets`` (bool, same shape) is False marked input-only."""
    return torch.where(targets, ids, -ids - 1)


def input_ids(rows: torch.Tensor) -> torch.Tensor:
    """The token ids of packed rows (every token, also the input-only ones)."""
    return torch.where(rows < 0, -rows - 1, rows)


def inputs_and_labels(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` of packed rows: the token ids, and the labels (``IGNORE_INDEX`` where a
    token is input-only; Hugging Face models shift labels themselves)."""
    return input_ids(rows), torch.where(rows < 0, torch.full_like(rows, IGNORE_INDEX), rows)


@dataclass
class PackedSplits:
    """Train and validation rows, each ``(rows, seq_len)`` int64 (input-only tokens negative, see the
    module docstring), and a record of how they were made. Train rows in lanes (``in_order``) also say,
    per row, whether the row is the text right after the previous row of its lane (``train_follows``:
    False at a lane's first row and after a validation row taken out), and whether its first token
    starts a document (``train_starts_document``); :mod:`lizardlm.train.state_passing` reads them."""

    train: torch.Tensor
    val: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    train_follows: torch.Tensor | None = None
    train_starts_document: torch.Tensor | None = None

    def passes_on(self, reset_at_documents: bool) -> torch.Tensor:
        """Per train row in lanes, whether it may start from the memory its lane's previous row left:
        only if it is the text right after it and, with ``reset_at_documents``, does not start a document."""
        if self.train_follows is None or self.train_starts_document is None:
            raise ValueError("only train rows built in order (in lanes) say which rows follow each other")
        return self.train_follows & ~(self.train_starts_document & reset_at_documents)


def pack_tokens(
    documents: Sequence[Document | str],
    tokenizer: Any,
    seq_len: int,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """Tokenize each document (no special tokens; a :class:`Document` with ``token_ids`` keeps its own),
    append eos after each, concatenate, and cut into
    non-overlapping ``(N, seq_len)`` rows, dropping the remainder; stop after ``max_tokens`` tokens.

    Documents are tokenized in batches of at most ``BATCH_DOCS`` documents and ``BATCH_CHARS``
    characters, and stop as soon as ``max_tokens`` are there, so memory follows ``max_tokens``, not
    the corpus; a text longer than ``PIECE_CHARS`` is tokenized in pieces cut before a space (where
    the byte-level pre-tokenizers split anyway)."""
    if seq_len < 1:
        raise DataError(f"seq_len must be >= 1, got {seq_len}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos token to separate documents")
    chunks: list[torch.Tensor] = []
    total = 0
    chars = sum(len(doc.text if isinstance(doc, Document) else doc) for doc in documents)
    with progress(total=chars, desc="tokenizing", unit="char", unit_scale=True, enable=chars >= PROGRESS_MIN_CHARS) as bar:
        for batch in _batches(_units(documents, eos)):
            for ids in _encode(batch, tokenizer):
                chunks.append(ids)
                total += ids.numel()
            bar.update(sum(len(unit) for unit in batch if isinstance(unit, str)))
            if max_tokens is not None and total >= max_tokens:
                break
    tokens = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    rows = tokens.numel() // seq_len
    if rows == 0:
        raise DataError(f"only {tokens.numel()} tokens of data, fewer than one row of seq_len {seq_len}")
    return tokens[: rows * seq_len].view(rows, seq_len)


def _units(documents: Sequence[Document | str], eos: int) -> Iterator[str | torch.Tensor]:
    """The corpus as a stream: pieces of text to tokenize, and token ids (a document's own, and eos
    after each document), whose concatenation in order is the packed token stream."""
    for doc in documents:
        given = doc.token_ids if isinstance(doc, Document) else None
        if given is not None:
            yield torch.as_tensor(given, dtype=torch.long)
        else:
            yield from _pieces(doc.text if isinstance(doc, Document) else doc)
        yield torch.tensor([eos])


def _batches(units: Iterator[str | torch.Tensor]) -> Iterator[list[str | torch.Tensor]]:
    """Consecutive units holding at most ``BATCH_DOCS`` texts and (unless one alone is longer)
    ``BATCH_CHARS`` characters."""
    batch: list[str | torch.Tensor] = []
    texts = chars = 0
    for unit in units:
        size = len(unit) if isinstance(unit, str) else 0
        if size and batch and (texts == BATCH_DOCS or chars + size > BATCH_CHARS):
            yield batch
            batch, texts, chars = [], 0, 0
        batch.append(unit)
        texts += bool(size)
        chars += size
    if batch:
        yield batch


def _encode(batch: list[str | torch.Tensor], tokenizer: Any) -> Iterator[torch.Tensor]:
    """The token ids of each unit of ``batch`` in order (texts tokenized in one call, no special tokens)."""
    texts = [unit for unit in batch if isinstance(unit, str)]
    encoded = iter(tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else ())
    for unit in batch:
        yield torch.as_tensor(next(encoded), dtype=torch.long) if isinstance(unit, str) else unit


def _pieces(text: str) -> list[str]:
    """``text`` cut into pieces of at most about ``PIECE_CHARS`` characters, each cut just before a
    space that follows a non-space (a text without such spaces is cut at ``PIECE_CHARS``)."""
    pieces = []
    start = 0
    while len(text) - start > PIECE_CHARS:
        cut = text.rfind(" ", start + 1, start + PIECE_CHARS)
        while cut > start and text[cut - 1].isspace():
            cut = text.rfind(" ", start + 1, cut)
        cut = cut if cut > start else start + PIECE_CHARS
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def build_splits(
    spec: str,
    tokenizer: Any,
    seq_len: int,
    train_tokens: int,
    val_tokens: int,
    seed: int = 0,
    in_order: bool = False,
    lanes: int = 1,
    **kw: Any,
) -> PackedSplits:
    """Packed train and held-out validation rows of a data spec, split by a seeded permutation of rows.

    Each split takes ``ceil(tokens / seq_len)`` rows (at least 1), drawn from the rows of the first
    ``max(POOL_MIN_TOKENS, rows asked for x seq_len)`` tokens (memory and time follow the budget, not
    the corpus). Validation rows are drawn first, so they do not change with ``train_tokens`` (while
    the corpus fits in the pool). With less data than asked, the rows are shared in the
    asked proportion, with a warning and ``meta["shortfall"] = True``. ``kw`` goes to ``load_documents``.
    A ``mix:`` spec packs each part to its weight (:mod:`lizardlm.data.mixture`). ``in_order``: the
    train rows are ``lanes`` runs of ``n_train // lanes`` consecutive rows that validation did not take,
    spread over the packed data and each starting at a document's start where one is in reach
    (:func:`lane_starts`), one after another (each row continues the text of the one before it, but
    where a validation row was taken out: ``train_follows`` says where), for contiguous training in
    ``lanes`` slots (:func:`lizardlm.train.loop.batch_at`); validation is the same as without it (a
    mixture gives each part lanes of its own, :mod:`lizardlm.data.mixture`).
    """
    if spec.startswith("mix:"):
        from lizardlm.data.mixture import build_mixture

        return build_mixture(spec, tokenizer, seq_len, train_tokens, val_tokens, seed, in_order, lanes, **kw)
    documents = load_documents(spec, tokenizer=tokenizer, **kw)
    want_val = max(1, math.ceil(val_tokens / seq_len))
    want_train = max(1, math.ceil(train_tokens / seq_len))
    pool = max(POOL_MIN_TOKENS, (want_val + want_train) * seq_len)
    rows = pack_tokens(documents, tokenizer, seq_len, max_tokens=pool)
    available = rows.shape[0]
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
    lane_meta: dict[str, int] = {}
    follows = starts_document = None
    if in_order:  # lanes of consecutive rows that validation did not take, spread over the data
        left = torch.ones(available, dtype=torch.bool)
        left[order[:n_val]] = False
        kept = left.nonzero().flatten()
        lanes = min(max(1, lanes), n_train)
        span = n_train // lanes
        opens = document_starts(rows, tokenizer.eos_token_id)
        starts = lane_starts(opens[kept], lanes, span)
        picked = torch.cat([kept[s:s + span] for s in starts])
        train = rows[picked]
        n_train = train.shape[0]
        follows = torch.ones(n_train, dtype=torch.bool)
        follows[1:] = picked[1:] == picked[:-1] + 1
        follows[::span] = False
        starts_document = opens[picked]
        lane_meta = {"lanes": len(starts), "lanes_at_document_start": int(starts_document[::span].sum()),
                     "rows_after_gap": int((~follows).sum()) - len(starts),
                     "rows_starting_document": int(starts_document.sum())}
    else:
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
        "train_in_order": in_order,
        **lane_meta,
    }
    return PackedSplits(train=train, val=val, meta=meta, train_follows=follows, train_starts_document=starts_document)


def document_starts(rows: torch.Tensor, eos: int) -> torch.Tensor:
    """Per packed row, whether its first token starts a document: the first row, and each row after
    one that ends with eos (packing appends eos to every document)."""
    opens = torch.ones(rows.shape[0], dtype=torch.bool)
    opens[1:] = input_ids(rows[:-1, -1]) == eos
    return opens


def lane_starts(opens: torch.Tensor, lanes: int, span: int) -> list[int]:
    """Where ``lanes`` runs of ``span`` rows start among rows whose document starts are ``opens``:
    evenly spread over them, each moved to the document start nearest its even spot that keeps it
    clear of the lane before, of the next lane's spot and of the end (a lane then reads whole
    documents from its first row, as a document longer than a row needs; with no start in reach,
    the lane starts at its spot, mid-document)."""
    n = opens.numel()
    spread = [round(k * (n - span) / max(1, lanes - 1)) for k in range(lanes)]
    starts: list[int] = []
    for k, spot in enumerate(spread):
        first = starts[-1] + span if starts else 0
        last = (spread[k + 1] if k + 1 < lanes else n) - span
        spot = max(spot, first)
        reach = opens[first:last + 1].nonzero().flatten() + first
        starts.append(int(reach[(reach - spot).abs().argmin()]) if reach.numel() else spot)
    return starts
