"""Long-context evaluation: chunked (constant-memory) model calls, passkey grid/templates, RULER, longppl."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import OOMLM, PasskeyOracle, tiny_llama, tiny_tokenizer  # noqa: E402

import lizardlm  # noqa: E402
from lizardlm.data import Document  # noqa: E402
from lizardlm.data.retrieval import FillerPool  # noqa: E402
from lizardlm.eval._utils import call_logits  # noqa: E402
from lizardlm.eval.longppl import bucket_edges, longppl_eval  # noqa: E402
from lizardlm.eval.passkey import passkey_eval  # noqa: E402
from lizardlm.eval.report import passkey_heatmap  # noqa: E402
from lizardlm.eval.ruler import TASKS, make_prompt, ruler_eval  # noqa: E402
from lizardlm.eval.streaming import greedy_batch, token_nll  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _models(vocab: int):
    teacher = tiny_llama(vocab)
    return teacher, lizardlm.convert(tiny_llama(vocab), lizardlm.LizardConfig(window_size=16)).eval()


def test_chunked_calls_match_one_forward(tok):
    x = torch.randint(0, len(tok), (2, 150), generator=torch.Generator().manual_seed(0))
    for model in _models(len(tok)):
        logits = call_logits(model, x)
        ref = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
        assert torch.allclose(token_nll(model, x, chunk=40), ref, atol=1e-4)
        assert torch.equal(greedy_batch(model, x, 1, chunk=40)[:, 0], logits[:, -1].argmax(-1))


def test_passkey_depth_grid_batches_and_heatmap(tok, tmp_path):
    r = passkey_eval(PasskeyOracle(tok), tok, lengths=(256,), trials=20, depths=10, batch_size=4, progress=False)
    rec = r["lengths"][0]
    assert rec["acc"] == 1.0 and len(rec["by_depth"]) == 10 and r["depths"][0] == 0.0 and r["depths"][-1] == 1.0
    assert Path(passkey_heatmap(r, tmp_path / "h.png", "oracle")).stat().st_size > 0


def test_passkey_training_template(tok):
    text = (FIXTURES / "wikitext_slice.txt").read_text(encoding="utf-8")
    pool = FillerPool([Document(text, "book")], tok)
    r = passkey_eval(tiny_llama(len(tok)), tok, lengths=(300,), trials=3, template="train", filler=pool, progress=False)
    rec = r["lengths"][0]
    assert r["template"] == "train" and rec["status"] == "ok" and rec["n"] == 3
    with pytest.raises(ValueError, match="filler"):
        passkey_eval(PasskeyOracle(tok), tok, lengths=(256,), template="train")


@pytest.mark.parametrize("task", TASKS)
def test_ruler_prompts(tok, task):
    ids, answers = make_prompt(tok, task, 400, random.Random(0))
    text = tok.decode(ids)
    assert len(ids) == 400 and answers and all(a in text for a in answers)


def test_ruler_scores_and_oom(tok):
    r = ruler_eval(tiny_llama(len(tok)), tok, tasks=("single_needle", "variable_tracking"), lengths=(256,), trials=2,
                   progress_bar=False)
    assert all(recs[0]["status"] == "ok" and 0 <= recs[0]["score"] <= 1 for recs in r["tasks"].values())
    oom = ruler_eval(OOMLM(len(tok), max_len=300), tok, tasks=("multi_key",), lengths=(256, 512), trials=1, progress_bar=False)
    ok, skipped = oom["tasks"]["multi_key"]
    assert ok["score"] == 0.0 and skipped["status"] == "skipped (out of memory)" and oom["mean"]["512"] is None


def test_longppl_buckets(tok):
    text = (FIXTURES / "wikitext_slice.txt").read_text(encoding="utf-8")
    assert bucket_edges(1000, 128) == [0, 128, 256, 512, 1000]
    teacher, student = _models(len(tok))
    for model in (teacher, student):
        r = longppl_eval(model, tok, [text, "too short"], seq_len=600, first_bucket=128, chunk=256, progress_bar=False)
        assert r["windows"] == 1 and r["bucket_end"][-1] == 600 and all(p > 1 for p in r["ppl"])
