"""MQAR prompt generator and scorer."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import InductionOracle, RandomLM, tiny_llama, tiny_tokenizer  # noqa: E402

from lizardlm.eval.mqar import build_vocab, make_prompt, make_prompts, mqar_eval, score_prompts  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("fmt", ["lines", "zoology"])
@pytest.mark.parametrize("seq_len", [None, 200, 333])
def test_prompts_are_well_formed(tok, fmt, seq_len):
    vocab = build_vocab(tok, fmt=fmt)
    assert not set(vocab.keys) & set(vocab.values)
    p = make_prompt(vocab, 8, random.Random(1), seq_len=seq_len)
    if seq_len is not None:
        assert len(p.input_ids) == seq_len
    keys = [k for k, _ in p.pairs]
    bound = dict(p.pairs)
    assert len(set(keys)) == 8 and len(p.targets) == 8
    for pos, target in zip(p.query_positions, p.targets):
        # the scored position is right after the queried key (and its separator)
        key = p.input_ids[pos - len(vocab.sep)]
        assert key in bound and bound[key] == target
        assert p.input_ids[pos + 1] == target  # teacher-forced answer
        first = p.input_ids.index(key)
        assert first < pos - len(vocab.sep)  # the key was seen earlier, with its value
        assert p.input_ids[first + 1 + len(vocab.sep)] == target


def test_lines_format_reads_like_text(tok):
    p = make_prompts(tok, 3, 1, fmt="lines")[0]
    text = tok.decode(p.input_ids)
    assert text.startswith("Memorize each word and its partner.\n")
    assert "\nRecall the partner of each word.\n" in text
    lines = text.split("Recall the partner of each word.\n")[1].strip("\n").split("\n")
    assert len(lines) == 3 and all(":" in line for line in lines)


def test_filler_grows_the_gaps(tok):
    short = make_prompts(tok, 4, 1, seq_len=None, seed=3)[0]
    long = make_prompts(tok, 4, 1, seq_len=400, seed=3)[0]
    assert len(long.input_ids) == 400 and len(short.input_ids) < 100
    assert long.query_positions[0] > 300


def test_seq_len_too_short_is_rejected(tok):
    vocab = build_vocab(tok)
    with pytest.raises(ValueError):
        make_prompt(vocab, 16, random.Random(0), seq_len=20)


@pytest.mark.parametrize("fmt", ["lines", "zoology"])
def test_oracle_gets_100_and_random_about_chance(tok, fmt):
    oracle = InductionOracle(len(tok))
    r = mqar_eval(oracle, tok, pairs=(2, 8, 32), lengths=(256, 512), n=3, fmt=fmt, progress=False)
    assert all(x["acc"] == 1.0 and x["status"] == "ok" for x in r["by_pairs"] + r["by_length"])
    assert r["mean_acc"] == 1.0
    assert [x["seq_len"] for x in r["by_length"]] == [256, 512]
    rnd = score_prompts(RandomLM(len(tok)), make_prompts(tok, 8, 10, fmt=fmt))
    # a random guesser is far below the oracle (chance is 1/|vocab| over the whole vocabulary,
    # 1/8 if it guessed among the prompt's values)
    assert rnd["queries"] == 80 and rnd["acc"] <= 1 / 8


def test_tiny_random_model_runs_and_oom_is_skipped(tok):
    model = tiny_llama(len(tok))
    r = mqar_eval(model, tok, pairs=(4,), lengths=(128,), n=2, progress=False)
    assert r["by_pairs"][0]["status"] == "ok" and 0.0 <= r["by_pairs"][0]["acc"] <= 1.0
    from eval_stubs import OOMLM

    r = mqar_eval(OOMLM(len(tok), max_len=100), tok, pairs=(4,), lengths=(128,), n=2, progress=False)
    assert r["by_pairs"][0]["status"] == "ok"
    assert r["by_length"][0]["status"] == "skipped (out of memory)" and r["by_length"][0]["acc"] is None


@pytest.mark.slow
def test_real_teacher_solves_short_mqar(smollm2_teacher):
    model, tok = smollm2_teacher
    r = mqar_eval(model, tok, pairs=(4, 8), lengths=(256,), n=5, progress=False)
    for x in r["by_pairs"] + r["by_length"]:
        assert x["acc"] >= 0.6, x  # chance is 1/pairs (0.25, 0.125)
