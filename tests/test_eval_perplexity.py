"""Perplexity over non-overlapping windows, checked against a direct torch computation."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import DATA_DIR, tiny_llama, tiny_tokenizer  # noqa: E402

from lizardlm.eval import perplexity, perplexity_by_position  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(len(tok))


@pytest.fixture(scope="module")
def text():
    return (DATA_DIR / "wikitext-2" / "test.txt").read_text(encoding="utf-8")[:6000]


def _direct(model, ids: list[int], window: int) -> tuple[float, int]:
    total, count = 0.0, 0
    for s in range(0, len(ids), window):
        w = torch.tensor([ids[s : s + window]])
        if w.shape[1] < 2:
            continue
        with torch.no_grad():
            logits = model(w).logits
        total += F.cross_entropy(logits[0, :-1], w[0, 1:], reduction="sum").item()
        count += w.shape[1] - 1
    return total / count, count


@pytest.mark.parametrize("window,batch_size", [(64, 1), (64, 3), (100, 2)])
def test_perplexity_matches_direct_cross_entropy(model, tok, text, window, batch_size):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) % window != 0  # the last, shorter window is scored too
    nll, count = _direct(model, ids, window)
    r = perplexity(model, tok, text, window=window, batch_size=batch_size, progress=False)
    assert r["tokens"] == count == len(ids) - math.ceil(len(ids) / window)
    assert r["windows"] == len([s for s in range(0, len(ids), window) if len(ids) - s >= 2])
    assert r["nll"] == pytest.approx(nll, rel=1e-5)
    assert r["ppl"] == pytest.approx(math.exp(nll), rel=1e-5)


def test_perplexity_accepts_ids_and_limits_windows(model, tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    a = perplexity(model, tok, torch.tensor(ids), window=50, max_windows=3, progress=False)
    nll, count = _direct(model, ids[:150], 50)
    assert a["windows"] == 3 and a["tokens"] == count == 147
    assert a["nll"] == pytest.approx(nll, rel=1e-5)
    b = perplexity(model, tok, ids, window=50, drop_last=True, progress=False)
    assert b["windows"] == len(ids) // 50


def test_perplexity_rejects_too_short_text(model, tok):
    with pytest.raises(ValueError):
        perplexity(model, tok, [5], window=16, progress=False)


def test_perplexity_by_position_matches_direct(model, tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    seq_len, bucket = 64, 16
    r = perplexity_by_position(model, tok, text, seq_len=seq_len, bucket=bucket, max_windows=4, progress=False)
    assert r["windows"] == 4
    x = torch.tensor(ids[: 4 * seq_len]).view(4, seq_len)
    with torch.no_grad():
        logits = model(x).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="none")
    per_pos = nll.view(4, seq_len - 1).mean(0)  # index i = predicted position i+1
    assert r["bucket_start"] == [0, 16, 32, 48] and r["bucket_end"] == [16, 32, 48, 64]
    assert r["nll"][0] == pytest.approx(per_pos[0:15].mean().item(), rel=1e-5)  # positions 1..15
    assert r["nll"][2] == pytest.approx(per_pos[31:47].mean().item(), rel=1e-5)  # positions 32..47
    assert r["ppl"][3] == pytest.approx(math.exp(per_pos[47:63].mean().item()), rel=1e-5)
