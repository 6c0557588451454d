"""benchmarks/answer_format.py: committed passkey evaluations re-scored into misses in words and in numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import answer_format  # noqa: E402
import readme_table  # noqa: E402


def _trial(key: str, pred: str) -> dict:
    return {"key": key, "pred": pred, "output": f" {pred}." if pred else " the pass key.", "correct": pred == key}


def test_rescore_splits_misses_in_words_from_wrong_numbers(tmp_path):
    """Per length: exact match as recorded, the share of answers holding a number, exact match over those;
    a length without trials (skipped) is left out; a file that is not JSON stops with one line."""
    trials = [_trial("12345", "12345"), _trial("55555", ""), _trial("67890", "67809"), _trial("24680", "")]
    run = tmp_path / "retrieval-x-nvidia-h200"
    run.mkdir()
    (run / "r-eval.json").write_text(json.dumps({"tasks": {"passkey": {"model": {"details": {"lengths": [
        {"length": 1024, "acc": 0.25, "trials": trials},
        {"length": 2048, "acc": 0.0, "trials": [_trial("11111", "")]},
        {"length": 32768, "status": "skipped (out of memory)"}]}}}}}))
    (run / "mc-eval.json").write_text(json.dumps({"tasks": {"piqa": {"model": {}}}}))  # no passkey: not listed
    out = tmp_path / "answer-format.json"
    assert answer_format.main([str(run / "r-eval.json"), str(run / "mc-eval.json"), "--out", str(out)]) == 0
    scored = json.loads(out.read_text())["evaluations"]
    assert list(scored) == ["retrieval-x-nvidia-h200/r-eval.json"]
    by_len = scored["retrieval-x-nvidia-h200/r-eval.json"]["model"]
    kinds = {k: 0 for k in ("words", "other_key", "dropped_repeat", "dropped", "inserted", "neighbour", "substituted",
                            "other")}
    assert by_len["1024"] == {"acc": 0.25, "number_rate": 0.5, "number_acc": 0.5, "n": 4,
                              "misses": {**kinds, "words": 2, "other": 1}}  # 67890 -> 67809: two digits changed
    assert by_len["2048"] == {"acc": 0.0, "number_rate": 0.0, "number_acc": None, "n": 1,
                              "misses": {**kinds, "words": 1}} and "32768" not in by_len
    table = readme_table.answer_format(out)
    assert "| evaluation | model | 1K | 2K |" in table
    assert "| retrieval-x-nvidia-h200/r | model | 0.25 · 0.50 · 0.50 | 0.00 · 0.00 · – |" in table
    assert "| retrieval-x-nvidia-h200/r | model | 5 | 4 | 3 | 0 | 0 | 0 | 0 | 0 | 0 | 1 |" in table  # the kinds
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit, match="answer_format: cannot read .*bad.json"):
        answer_format.main([str(tmp_path / "bad.json"), "--out", str(out)])


def test_miss_table_names_every_kind_the_scorer_records():
    """Every kind of ``MISS_KINDS`` has its column title; a kind a file records that the table does not know
    still gets a column, by its key, and an older file without it counts 0 there."""
    from lizardlm.eval.passkey import MISS_KINDS

    assert list(readme_table.MISS_LABELS) == list(MISS_KINDS)
    new = {"a-eval.json": {"model": {"1024": {"n": 2, "misses": {"words": 1, "swapped": 1}}}},
           "b-eval.json": {"model": {"1024": {"n": 3, "misses": {"words": 2}}}}}
    table = readme_table.miss_table(new).splitlines()
    assert "| evaluation | model | trials | misses | in words | swapped |" in table
    assert "| a | model | 2 | 2 | 1 | 1 |" in table and "| b | model | 3 | 2 | 2 | 0 |" in table
