"""Batched lm-eval scoring (``batch_size="auto"``) gives the same loglikelihoods as one request at a time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import tiny_llama, tiny_tokenizer  # noqa: E402

import lizardlm  # noqa: E402
from lizardlm.eval.harness import make_lm  # noqa: E402

pytest.importorskip("lm_eval")


@pytest.mark.parametrize("lizard", [False, True])
def test_auto_batch_scores_match_batch_one(lizard):
    from lm_eval.api.instance import Instance

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok)).eval()
    if lizard:
        model = lizardlm.convert(model, lizardlm.LizardConfig(window_size=8, feature_dim=8, chunk_size=8)).eval()
    contexts = ["The cat sat", "Question: how long is a piece of string that is not short?\nAnswer:", "A"]
    conts = [" on the mat.", " very long indeed, as long as it is", " b c d e f g"]
    requests = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(zip(contexts * 3, conts * 3))]
    one = make_lm(model, tok, batch_size=1).loglikelihood(requests, disable_tqdm=True)
    auto_lm = make_lm(model, tok, batch_size="auto")
    assert auto_lm.batch_size > 1
    auto = auto_lm.loglikelihood(requests, disable_tqdm=True)
    assert [g for _, g in one] == [g for _, g in auto]
    assert [ll for ll, _ in auto] == pytest.approx([ll for ll, _ in one], abs=1e-5)
    assert len({round(ll, 4) for ll, _ in one}) > 2  # the requests really differ
