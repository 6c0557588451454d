"""Long-context evaluation: chunked (constant-memory) model calls, passkey grid/templates, RULER, longppl."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import OOMLM, DigitCopier, InductionOracle, PasskeyOracle, ProseAnswerer, tiny_llama, tiny_tokenizer  # noqa: E402

import lizardlm  # noqa: E402
from lizardlm.data import Document  # noqa: E402
from lizardlm.data.retrieval import FillerPool  # noqa: E402
from lizardlm.eval._utils import call_logits  # noqa: E402
from lizardlm.eval.longppl import bucket_edges, longppl_eval, sliding_nll  # noqa: E402
from lizardlm.eval.passkey import MISS_KINDS, miss_kind, miss_kinds, passkey_eval  # noqa: E402
from lizardlm.eval.report import EvalConfig, _run_passkey, passkey_heatmap  # noqa: E402
from lizardlm.eval.ruler import TASKS, make_prompt, ruler_eval  # noqa: E402
from lizardlm.eval.passkey import make_train_prompt, run_prompts  # noqa: E402
from lizardlm.eval.streaming import greedy_and_nll, greedy_batch, token_nll  # noqa: E402

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


def test_one_prefill_gives_the_greedy_answer_and_the_full_forward_nll_of_the_continuation(tok):
    """The teacher-forced continuation runs on a copy of the prefilled cache: its NLL is that of one
    forward over prompt + continuation, and the greedy answer is the one a prefill of its own gives."""
    g = torch.Generator().manual_seed(1)
    prompts, cont = torch.randint(0, len(tok), (2, 90), generator=g), torch.randint(0, len(tok), (2, 6), generator=g)
    for model in (*_models(len(tok)), InductionOracle(len(tok))):
        ref = token_nll(model, torch.cat([prompts, cont], 1), chunk=96)[:, 89:]
        new, nll = greedy_and_nll(model, prompts, 5, cont, chunk=40)
        assert torch.allclose(nll, ref, atol=1e-4) and torch.equal(new, greedy_batch(model, prompts, 5, chunk=40))
        assert torch.allclose(greedy_and_nll(model, prompts, 1, cont[:, :1], chunk=40)[1], ref[:, :1], atol=1e-4)


def test_passkey_scores_the_answer_training_scores(tok):
    """The training template's answer (the key and its full stop after "Passkey number 1 is") is what
    the teacher-forced ``answer_nll`` scores: the mean NLL of exactly those tokens after the prompt."""
    text = (FIXTURES / "wikitext_slice.txt").read_text(encoding="utf-8")
    pool = FillerPool([Document(text, "book")], tok)
    model = _models(len(tok))[1]
    prompts = [make_train_prompt(pool, 300, depth, random.Random(depth), keys=2) for depth in (0.0, 0.5, 1.0)]
    done = run_prompts(model, tok, prompts, chunk=128)
    for p, d in zip(prompts, done):
        assert tok.decode(list(p.answer_ids)).strip() == f"{p.key}." and len(p.other_keys) == 1
        nll = token_nll(model, torch.tensor([p.input_ids + list(p.answer_ids)]))[0, len(p.input_ids) - 1:]
        assert d["answer_nll"] == pytest.approx(nll.mean().item(), abs=1e-3)
    single = passkey_eval(model, tok, lengths=(300,), trials=2, template="train", filler=pool, keys=1, progress=False)
    assert single["keys"] == 1 and single["lengths"][0]["other_key_rate"] == 0.0


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


def test_passkey_says_when_an_answer_is_another_needle(tok):
    """A stub that always answers the text's first needle: right when passkey number 1 comes first,
    otherwise exactly another passkey of the prompt; every answer starts with some key's digit."""
    text = (FIXTURES / "wikitext_slice.txt").read_text(encoding="utf-8")
    pool = FillerPool([Document(text, "book")], tok)
    r = passkey_eval(PasskeyOracle(tok, marker=" is"), tok, lengths=(300,), trials=12, depths=4, template="train",
                     filler=pool, progress=False)
    rec = r["lengths"][0]
    assert 0 < rec["acc"] < 1 and rec["acc"] + rec["other_key_rate"] == pytest.approx(1.0)
    assert rec["first_digit_acc"] >= rec["acc"]
    assert all(t["correct"] != t["other_key"] for t in rec["trials"])
    oracle = passkey_eval(PasskeyOracle(tok), tok, lengths=(256,), trials=4, progress=False)["lengths"][0]
    assert oracle["acc"] == oracle["first_digit_acc"] == 1.0 and oracle["other_key_rate"] == 0.0


def test_passkey_splits_exact_match_by_keys_that_repeat_a_digit(tok):
    """A copier that takes each digit from the one before it answers every key of distinct digits and
    misses keys whose repeated digit is followed by another: the per-length record tells the two apart,
    and the two accuracies weigh back to the whole."""
    rec = passkey_eval(DigitCopier(tok), tok, lengths=(256,), trials=40, progress=False)["lengths"][0]
    rep = [t for t in rec["trials"] if len(set(t["key"])) < 5]
    assert 0 < len(rep) < 40 and rec["distinct_digit_acc"] == 1.0 and rec["repeated_digit_acc"] < 1.0
    assert rec["repeated_digit_acc"] == sum(t["correct"] for t in rep) / len(rep)
    assert rec["acc"] * 40 == pytest.approx(rec["repeated_digit_acc"] * len(rep) + (40 - len(rep)))
    assert all(t["first_digit"] for t in rec["trials"])  # found every time: the slips are in the copy
    oracle = passkey_eval(PasskeyOracle(tok), tok, lengths=(256,), trials=40, progress=False)["lengths"][0]
    assert oracle["repeated_digit_acc"] == oracle["distinct_digit_acc"] == 1.0


def test_passkey_tells_answers_in_words_from_wrong_numbers(tok):
    """A model that finds every needle but answers in words where the key starts with an odd digit: the
    record's number rate is the share of number answers, every one of them right (its exact match 1), and
    exact match is the number rate; one that answers every key holds a number every time."""
    rec = passkey_eval(ProseAnswerer(tok), tok, lengths=(256,), trials=30, progress=False)["lengths"][0]
    odd = [t for t in rec["trials"] if int(t["key"][0]) % 2]
    assert 0 < len(odd) < 30 and all(t["pred"] == "" and t["output"].strip() == "the pass key." for t in odd)
    assert rec["number_rate"] == pytest.approx(1 - len(odd) / 30) == pytest.approx(rec["acc"])
    assert rec["number_acc"] == 1.0
    assert rec["misses"] == {**dict.fromkeys(MISS_KINDS, 0), "words": len(odd)}
    copier = passkey_eval(DigitCopier(tok), tok, lengths=(256,), trials=30, progress=False)["lengths"][0]
    assert copier["number_rate"] == 1.0 and copier["number_acc"] == copier["acc"] < 1.0
    assert copier["misses"]["words"] == 0 and sum(copier["misses"].values()) == round(30 * (1 - copier["acc"]))
    metrics = _run_passkey(ProseAnswerer(tok), tok, EvalConfig(passkey_lengths=(256,), passkey_trials=30, progress=False))["metrics"]
    assert metrics["answers holding a number @ 256"] == rec["number_rate"] and metrics["exact match of number answers @ 256"] == 1.0


def test_miss_kinds_name_what_an_answer_did_to_its_key():
    """Fresh random keys, each corrupted one known way: the kind comes back; right answers are not counted,
    and the counts cover every wrong one."""
    rng = random.Random()
    for _ in range(200):
        key = "".join(rng.sample("0123456789", 6))  # distinct digits
        i = rng.randrange(6)
        absent = next(d for d in "0123456789" if d not in key)
        doubled = key[:i] + key[i] + key[i:]  # key[i] written twice
        cases = {
            "dropped_repeat": (doubled, key),
            "dropped": (key, key[:i] + key[i + 1:]),
            "inserted": (key, key[:i] + rng.choice("0123456789") + key[i:]),
            "neighbour": (key, key[:i] + key[i + 1 if i < 5 else i - 1] + key[i + 1:]),
            "substituted": (key, key[:i] + absent + key[i + 1:]),
            "other": (key, absent + key[1:5] + absent),
            "words": (key, ""),
        }
        for kind, (k, pred) in cases.items():
            assert miss_kind({"key": k, "pred": pred, "correct": False}) == kind, (kind, k, pred)
        assert miss_kind({"key": key, "pred": key[::-1], "other_key": True, "correct": False}) == "other_key"
    trials = [{"key": k, "pred": p, "correct": k == p} for k, p in (("123", "123"), ("1223", "123"), ("123", ""))]
    assert miss_kinds(trials) == {**dict.fromkeys(MISS_KINDS, 0), "dropped_repeat": 1, "words": 1}


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


@pytest.mark.parametrize("context,length", [(8, 30), (9, 31), (12, 12), (64, 40)])
def test_sliding_nll_predicts_each_token_from_half_to_all_of_its_context(tok, context, length):
    """Target i is scored by the last window (starts every context // 2 tokens) that gives it at least
    context - context // 2 tokens of history, or by the first window: the model's NLL of token i + 1 after
    exactly that history, which is never longer than ``context``."""
    x = torch.randint(0, len(tok), (2, length), generator=torch.Generator().manual_seed(context))
    teacher, _ = _models(len(tok))
    step = context // 2
    ref = torch.zeros(2, length - 1)
    for i in range(length - 1):
        start = max(0, (i + 1 - (context - step)) // step * step)
        assert start == 0 or context - step <= i + 1 - start <= context
        logits = call_logits(teacher, x[:, start:i + 1])[:, -1]
        ref[:, i] = F.cross_entropy(logits, x[:, i + 1], reduction="none")
    assert torch.allclose(sliding_nll(teacher, x, context), ref, atol=1e-5)
    if context >= length:
        assert torch.allclose(sliding_nll(teacher, x, context), token_nll(teacher, x), atol=1e-5)


def test_longppl_windows_take_every_texts_first_window_before_any_second(tok, monkeypatch):
    """Round r takes tokens [r L, (r + 1) L) of every text holding them, in order; later texts are not
    encoded once round 0 has enough windows; one long text gives consecutive windows."""
    import lizardlm.eval.longppl as longppl

    text = (FIXTURES / "wikitext_slice.txt").read_text(encoding="utf-8")
    ids = longppl.encode(tok, text)
    L = len(ids) // 3 - 1  # the long text holds 3 windows, the short one 1, the last none
    short = tok.decode(ids[:L + 5])
    texts = [text, short, "too short"]
    lengths = {t: len(longppl.encode(tok, t)) for t in texts}
    assert lengths[short] >= L and lengths[short] < 2 * L
    got = longppl.text_windows(tok, texts, L, 10)
    short_ids = longppl.encode(tok, short)
    expected = [ids[:L], short_ids[:L], ids[L:2 * L], ids[2 * L:3 * L]]
    assert [w.tolist() for w in got] == expected and all(w.dtype == torch.long for w in got)
    assert [w.tolist() for w in longppl.text_windows(tok, texts, L, 3)] == expected[:3]

    seen, encode = [], longppl.encode
    monkeypatch.setattr(longppl, "encode", lambda tok_, t: seen.append(t) or encode(tok_, t))
    assert len(longppl.text_windows(tok, texts, L, 1)) == 1 and seen == [text]  # the others never read
    assert longppl.text_windows(tok, ["too short"], L, 4) == []


def test_longppl_buckets(tok):
    text = (FIXTURES / "wikitext_slice.txt").read_text(encoding="utf-8")
    assert bucket_edges(1000, 128) == [0, 128, 256, 512, 1000]
    teacher, student = _models(len(tok))
    for model in (teacher, student):
        r = longppl_eval(model, tok, [text, "too short"], seq_len=600, first_bucket=128, chunk=256, max_windows=1,
                         progress_bar=False)
        assert r["windows"] == 1 and r["bucket_end"][-1] == 600 and all(p > 1 for p in r["ppl"])
    reference = longppl_eval(teacher, tok, [text], seq_len=600, first_bucket=128, context=256, progress_bar=False)
    assert reference["context"] == 256 and reference["ppl"][:2] == pytest.approx(
        longppl_eval(teacher, tok, [text], seq_len=600, first_bucket=128, progress_bar=False)["ppl"][:2])
    with pytest.raises(ValueError, match="at least 2"):
        longppl_eval(teacher, tok, [text], seq_len=600, context=1)
