"""Passkey prompt builder, scorer and the skip rules for long lengths."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import OOMLM, PasskeyOracle, tiny_llama, tiny_tokenizer  # noqa: E402

from lizardlm.eval.passkey import QUESTION, extract_digits, make_prompt, passkey_eval  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("length", [256, 1000, 2048])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.75, 1.0])
def test_prompt_has_requested_length_and_depth(tok, length, depth):
    p = make_prompt(tok, length, depth, key=48213)
    assert len(p.input_ids) == length
    unit = len(tok(" The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
                   add_special_tokens=False)["input_ids"])
    # the needle sits at a filler-unit boundary nearest the requested depth
    assert abs(p.actual_depth - depth) <= unit / p.filler_tokens + 1e-9
    text = tok.decode(p.input_ids)
    assert text.count("48213") == 2
    assert text.endswith(QUESTION)
    needle_text = tok.decode(p.input_ids[p.needle_start :])
    assert needle_text.startswith(" The pass key is 48213.")
    # the re-tokenized prompt has (almost) the same length
    assert abs(len(tok(text, add_special_tokens=False)["input_ids"]) - length) <= 3


def test_too_short_length_is_rejected(tok):
    with pytest.raises(ValueError):
        make_prompt(tok, 20, 0.5)


def test_extract_digits():
    assert extract_digits(" 12345. Remember") == "12345"
    assert extract_digits(" the key") == ""


def test_retrieving_stub_gets_100_percent(tok):
    r = passkey_eval(PasskeyOracle(tok), tok, lengths=(256, 512), trials=3, progress=False)
    for rec in r["lengths"]:
        assert rec["status"] == "ok" and rec["acc"] == 1.0 and rec["n"] == 3
        assert all(t["pred"] == t["key"] and len(t["key"]) == 5 for t in rec["trials"])
    depths = [t["depth"] for rec in r["lengths"] for t in rec["trials"]]
    assert len(set(depths)) == len(depths)  # random depths


def test_hf_model_goes_through_generate(tok):
    model = tiny_llama(len(tok))
    r = passkey_eval(model, tok, lengths=(128,), trials=2, progress=False)
    rec = r["lengths"][0]
    assert rec["status"] == "ok" and rec["n"] == 2 and rec["acc"] in (0.0, 0.5, 1.0)


def test_out_of_memory_is_skipped_not_zero(tok):
    r = passkey_eval(OOMLM(len(tok), max_len=300), tok, lengths=(256, 512), trials=2, progress=False)
    ok, oom = r["lengths"]
    assert ok["status"] == "ok" and ok["acc"] == 0.0
    assert oom["status"] == "skipped (out of memory)" and "acc" not in oom


def test_time_budget_skips_longer_lengths(tok):
    class Slow(PasskeyOracle):
        def forward(self, input_ids):
            time.sleep(0.02 * input_ids.shape[1] / 256)
            return super().forward(input_ids)

    r = passkey_eval(Slow(tok), tok, lengths=(256, 8192), trials=2, time_budget_s=1.0, progress=False)
    first, second = r["lengths"]
    assert first["status"] == "ok" and first["acc"] == 1.0
    assert second["status"].startswith("skipped (estimated") and "time budget" in second["status"]


@pytest.mark.slow
def test_real_teacher_passkey_short(smollm2_teacher):
    model, tok = smollm2_teacher
    r = passkey_eval(model, tok, lengths=(1024,), trials=3, progress=False)
    assert r["lengths"][0]["acc"] >= 2 / 3


def test_a_lizard_model_is_scored_on_the_needles_beyond_its_window(tok):
    """``needle_distance`` counts the tokens after the needle; with a Lizard window ``w`` the trials whose
    needle ended ``>= w`` tokens before the end are scored apart (``beyond_window_acc``), and a model
    without a window gets no such key."""
    from types import SimpleNamespace

    oracle = PasskeyOracle(tok)
    r = passkey_eval(oracle, tok, lengths=(512,), trials=6, progress=False, depths=6)
    assert "beyond_window_acc" not in r["lengths"][0]
    for t in r["lengths"][0]["trials"]:
        p = make_prompt(tok, 512, t["depth"], key=t["key"])
        assert t["needle_distance"] == 512 - p.needle_end and p.needle_start < p.needle_end <= 512
        assert tok.decode(p.input_ids[p.needle_start:p.needle_end]).strip().endswith("is the pass key.")
    oracle.lizard_config = SimpleNamespace(window_size=100)
    rec = passkey_eval(oracle, tok, lengths=(512,), trials=6, progress=False, depths=6)["lengths"][0]
    beyond = [t for t in rec["trials"] if t["needle_distance"] >= 100]
    assert 0 < len(beyond) < 6 and rec["beyond_window_n"] == len(beyond) and rec["beyond_window_acc"] == 1.0
