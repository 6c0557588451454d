"""benchmarks/zs_by_length.py: two models' per-question scores split by prompt length."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
import zs_by_length  # noqa: E402
from eval_stubs import DATA_DIR, tiny_tokenizer  # noqa: E402

pytest.importorskip("lm_eval")


def test_buckets_against_a_direct_count():
    rng = np.random.default_rng()
    n = 500
    lengths = rng.integers(1, 300, n)
    a, b = rng.random(n) < 0.6, rng.random(n) < 0.55
    rows = zs_by_length.by_length("".join("1" if x else "0" for x in a), "".join("1" if x else "0" for x in b),
                                  lengths.tolist())
    assert sum(r["n"] for r in rows) == n
    for r in rows:
        lo, hi = r["tokens"]
        m = (lengths >= lo) & (lengths < (hi if hi is not None else 10**9))
        assert r["n"] == m.sum() and r["a"] == pytest.approx(a[m].mean()) and r["b"] == pytest.approx(b[m].mean())
        assert (r["a_only"], r["b_only"]) == ((a & ~b)[m].sum(), (~a & b)[m].sum())


@pytest.mark.parametrize("task", ["arc_easy", "piqa", "winogrande"])
def test_prompt_lengths_follow_the_documents(task):
    tok = tiny_tokenizer()
    lengths = zs_by_length.prompt_lengths(task, tok, DATA_DIR)
    split = {"arc_easy": "test.jsonl"}.get(task, "validation.jsonl")
    assert len(lengths) == sum(1 for _ in (DATA_DIR / task / split).open())
    assert all(n > 1 for n in lengths)
