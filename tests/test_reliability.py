"""Hostile inputs and faults (issue 20): each ends in one clear error or the right result, never a traceback."""

from __future__ import annotations

import json

import pytest

from lizardlm.data import load_documents, sample_teacher_corpus
from lizardlm.data import teacher_samples
from lizardlm.eval.tasks import read_split

# JSON allows these raw in strings; str.splitlines() splits at them
ODD_BREAKS = "a\u0085b\u2028c\u2029d"


def test_jsonl_data_keeps_unicode_line_separators_inside_strings(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"{i} {ODD_BREAKS}"}, ensure_ascii=False) + "\n" for i in range(3)),
                    encoding="utf-8")
    assert [d.text for d in load_documents(str(path))] == [f"{i} {ODD_BREAKS}" for i in range(3)]


def test_eval_task_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    path = tmp_path / "validation.jsonl"
    row = {"goal": f"goal {ODD_BREAKS}", "sol1": "x", "sol2": "y", "label": 0}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_split("piqa", [path])[0]["goal"] == row["goal"]


def test_teacher_samples_cache_keeps_unicode_line_separators(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_samples, "_generate", lambda *a, **k: [ODD_BREAKS, "plain"])
    first = sample_teacher_corpus(tiny_llama, tiny_tokenizer, num_samples=2, max_new_tokens=2, cache_path=tmp_path)
    monkeypatch.setattr(teacher_samples, "_generate", lambda *a, **k: pytest.fail("cache not used"))
    again = sample_teacher_corpus(tiny_llama, tiny_tokenizer, num_samples=2, max_new_tokens=2, cache_path=tmp_path)
    assert [d.text for d in again] == [d.text for d in first] == [ODD_BREAKS, "plain"]
