"""Packing reads only what the token budget needs, tokenizes long texts in pieces, and packs the same
tokens as tokenizing each whole document (so results are unchanged for data that fits the pool)."""

from __future__ import annotations

from pathlib import Path

import torch

from lizardlm.data import packing
from lizardlm.data.sources import Document, load_documents

TEXT = (Path(__file__).parent / "fixtures" / "wikitext_slice.txt").read_text(encoding="utf-8")


class CountingTokenizer:
    """Wraps a tokenizer, recording the length of every text it is asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer, self.eos_token_id, self.lengths = tokenizer, tokenizer.eos_token_id, []

    def __call__(self, texts, **kwargs):
        self.lengths += [len(t) for t in texts]
        return self.tokenizer(texts, **kwargs)


def whole_documents(docs: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """What packing did before it streamed: every document tokenized whole, eos after each."""
    ids = [torch.tensor(tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]) for d in docs]
    tokens = torch.cat(ids)
    rows = tokens.numel() // seq_len
    return tokens[: rows * seq_len].view(rows, seq_len)


def test_pieces_and_batches_pack_the_same_tokens_as_whole_documents(tiny_tokenizer, monkeypatch):
    docs = [TEXT[:5000], "", TEXT[5000:5100], TEXT[5100:]]
    monkeypatch.setattr(packing, "PIECE_CHARS", 300)
    monkeypatch.setattr(packing, "BATCH_CHARS", 1000)
    counting = CountingTokenizer(tiny_tokenizer)
    rows = packing.pack_tokens(docs + [Document("own ids", "x", token_ids=[5, 6, 7])], counting, 16)
    assert max(counting.lengths) <= 300
    expected = whole_documents(docs, tiny_tokenizer, 16)
    assert torch.equal(rows[: expected.shape[0]], expected)


def test_build_splits_tokenizes_what_the_budget_needs_not_the_corpus(tiny_tokenizer, monkeypatch, tmp_path):
    corpus = tmp_path / "big.txt"
    corpus.write_text(TEXT * 40, encoding="utf-8")  # 40 x the fixture
    monkeypatch.setattr(packing, "POOL_MIN_TOKENS", 512)
    monkeypatch.setattr(packing, "BATCH_CHARS", 2000)
    counting = CountingTokenizer(tiny_tokenizer)
    splits = packing.build_splits(str(corpus), counting, 32, train_tokens=256, val_tokens=64)
    assert sum(counting.lengths) < 10_000 < len(TEXT) * 40 and max(counting.lengths) <= 2000
    assert splits.meta["rows_available"] == 512 // 32 and not splits.meta["shortfall"]


def test_build_splits_is_unchanged_for_data_that_fits_the_pool(tiny_tokenizer, tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    splits = packing.build_splits(str(corpus), tiny_tokenizer, 32, train_tokens=256, val_tokens=64, seed=3)
    docs = [doc.text for doc in load_documents(str(corpus))]
    rows = whole_documents(docs, tiny_tokenizer, 32)  # the whole corpus, as before streaming
    order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(3))
    assert torch.equal(splits.val, rows[order[:2]]) and torch.equal(splits.train, rows[order[2:10]])
