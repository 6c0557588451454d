"""Batched evaluation: lm-eval scoring (fast and HFLM backends, teacher and Lizard model) with
``batch_size="auto"`` gives the same loglikelihoods as one request at a time, and perplexity, MQAR and passkey give the same results at any batch size (also
when batches are split after running out of memory); ``lizardlm eval --batch-size`` takes ``auto``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import DATA_DIR, tiny_llama, tiny_tokenizer  # noqa: E402

import lizardlm  # noqa: E402
from lizardlm.eval import evaluate  # noqa: E402
from lizardlm.eval.harness import make_lm  # noqa: E402

pytest.importorskip("lm_eval")


def _model_and_tokenizer(lizard: bool):
    """The tiny Llama, or its Lizard conversion, with its tokenizer."""
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok)).eval()
    if lizard:
        model = lizardlm.convert(model, lizardlm.LizardConfig(window_size=8, feature_dim=8, chunk_size=8)).eval()
    return model, tok


@pytest.mark.parametrize("backend", ["fast", "hflm"])
@pytest.mark.parametrize("lizard", [False, True])
def test_auto_batch_scores_match_batch_one(lizard, backend):
    from lm_eval.api.instance import Instance

    model, tok = _model_and_tokenizer(lizard)
    contexts = ["The cat sat", "Question: how long is a piece of string that is not short?\nAnswer:", "A"]
    conts = [" on the mat.", " very long indeed, as long as it is", " b c d e f g"]
    pairs = list(zip(contexts * 3, conts * 3))
    # rows of about the same length: the fast backend batches rows of one padded length together
    pairs += [("The cat sat", x) for x in (" on the rug.", " on a hat.", " by the door.", " in the sun.", " on my lap.")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    forwards = []
    hook = model.get_decoder().register_forward_hook(lambda *_: forwards.append(1))
    one = make_lm(model, tok, batch_size=1, backend=backend).loglikelihood(requests, disable_tqdm=True)
    n_one = len(forwards)
    auto = make_lm(model, tok, batch_size="auto", backend=backend).loglikelihood(requests, disable_tqdm=True)
    hook.remove()
    assert len(forwards) - n_one < n_one  # "auto" really batches
    assert [g for _, g in one] == [g for _, g in auto]
    assert [ll for ll, _ in auto] == pytest.approx([ll for ll, _ in one], abs=1e-5)
    assert len({round(ll, 4) for ll, _ in one}) > 2  # the requests really differ


def test_cli_batch_size_takes_auto_and_defaults_to_it(capsys):
    from lizardlm.cli import build_parser

    def parse(*extra: str):
        return build_parser().parse_args(["eval", "--model", "m", *extra])

    assert parse().batch_size == "auto" and parse().dtype is None  # dtype: bfloat16 on cuda, float32 on cpu
    assert parse("--batch-size", "auto").batch_size == "auto"
    assert parse("--batch-size", "3").batch_size == 3
    for bad in ("0", "many"):
        with pytest.raises(SystemExit):
            parse("--batch-size", bad)
        assert "expected auto or a whole number >= 1" in capsys.readouterr().err


class _OOMAbove(nn.Module):
    """``model``, except that a batch of more than ``rows`` rows runs out of memory."""

    def __init__(self, model: nn.Module, rows: int):
        super().__init__()
        self.model, self.rows = model, rows
        self.generation_config = model.generation_config  # decodes through a cache, as the model does

    def forward(self, input_ids, **kw):
        if input_ids.shape[0] > self.rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return self.model(input_ids=input_ids, **kw)


TASKS = ["wikitext2", "mqar", "passkey"]
SMALL = dict(data_dir=DATA_DIR, limit=7, ppl_window=48, mqar_pairs=(2, 4), mqar_lengths=(96,), mqar_length_pairs=4,
             mqar_n=5, passkey_lengths=(128,), passkey_trials=5, progress=False)


def _outcome(model, tok, batch_size) -> dict:
    res = evaluate({"m": (model, tok)}, TASKS, batch_size=batch_size, **SMALL)["tasks"]
    out = {t: res[t]["m"]["metrics"] for t in TASKS}
    out["passkey answers"] = [d["output"] for d in res["passkey"]["m"]["details"]["lengths"][0]["trials"]]
    return out


@pytest.mark.parametrize("lizard", [False, True])
def test_eval_results_do_not_depend_on_batch_size(lizard):
    model, tok = _model_and_tokenizer(lizard)
    one = _outcome(model, tok, 1)
    assert len(set(one["passkey answers"])) > 1  # the prompts really differ
    others = [_outcome(model, tok, 3), _outcome(model, tok, "auto")]
    if not lizard:  # batches of 5 split into 2 + 3, then 1 + 2 (the splitting does not depend on the model)
        others.append(_outcome(_OOMAbove(model, 2), tok, 5))
    for other in others:
        assert other["wikitext2"] == pytest.approx(one["wikitext2"], rel=1e-5)
        assert {k: v for k, v in other.items() if k != "wikitext2"} == {k: v for k, v in one.items() if k != "wikitext2"}
