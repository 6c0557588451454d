"""benchmarks/mqar_window.py: where each MQAR query's pair lies, and accuracy split by the window, checked
with oracle models that recall a pair only within a given distance."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import mqar_window  # noqa: E402

from lizardlm.eval.mqar import build_vocab, make_prompts  # noqa: E402


class Oracle(torch.nn.Module):
    """Predicts, after ``key sep``, the value that followed the key's first occurrence, if that lies less than
    ``reach`` tokens back; otherwise token 0 (never a value)."""

    def __init__(self, vocab_size: int, sep_len: int, reach: int) -> None:
        super().__init__()
        self.vocab_size, self.sep_len, self.reach = vocab_size, sep_len, reach

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., 0] = 1.0
        for b, row in enumerate(input_ids.tolist()):
            first: dict[int, int] = {}
            for q, token in enumerate(row):
                first.setdefault(token, q)
                key_at = q - self.sep_len
                if key_at < 0:
                    continue
                p = first[row[key_at]]
                if p < key_at and q - p < self.reach and p + 1 + self.sep_len < len(row):
                    logits[b, q, row[p + 1 + self.sep_len]] = 2.0
        return SimpleNamespace(logits=logits)


@pytest.fixture
def prompts(tiny_tokenizer):
    return make_prompts(tiny_tokenizer, num_pairs=4, n=6, seq_len=400, seed=3)


def median_distance(prompts) -> int:
    """A window that sees some of the pairs and not others."""
    distances = sorted(d for p in prompts for d in mqar_window.query_distances(p))
    return distances[len(distances) // 2]


def test_distances_point_at_each_querys_key(prompts):
    for p in prompts:
        key_of = {value: key for key, value in p.pairs}
        for q, target, d in zip(p.query_positions, p.targets, mqar_window.query_distances(p)):
            assert d > 0 and p.input_ids[q - d] == key_of[target]
    mid = median_distance(prompts)
    shares = [mqar_window.window_share(prompts, w) for w in (1, mid, mid + 1, 10_000)]
    assert shares[0] == 0 and 0 < shares[1] < shares[2] and shares[-1] == 1.0


@pytest.mark.parametrize("shift", [0, 1])
def test_split_by_window(prompts, tiny_tokenizer, shift):
    window = median_distance(prompts) + shift
    sep_len = len(build_vocab(tiny_tokenizer).sep)
    size = len(tiny_tokenizer)
    limited = mqar_window.score_split(Oracle(size, sep_len, window), prompts, window, batch=4)
    assert limited["inside"] == 1.0 and limited["outside"] == 0.0
    assert limited["n_inside"] + limited["n_outside"] == sum(len(p.targets) for p in prompts)
    assert limited["acc"] == pytest.approx(mqar_window.window_share(prompts, window), abs=1e-4)
    full = mqar_window.score_split(Oracle(size, sep_len, 10_000), prompts, window, batch=4)
    assert full["acc"] == full["inside"] == full["outside"] == 1.0
