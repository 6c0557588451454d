"""benchmarks/tbptt_toy.py: a document read row by row starts empty and hands each row the memory of
the one before; the study keeps seeds already run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import tbptt_toy  # noqa: E402
from toy_needle import rows  # noqa: E402


def test_a_document_is_read_from_an_empty_memory_then_row_after_row(monkeypatch):
    model = tbptt_toy.make_model(tbptt_toy.CONFIG, seed=0)
    seen = []
    original = tbptt_toy.StatePassing.start

    def start(self, batch):
        original(self, batch)
        seen.append(([h.initial for h in self.handoffs], [m.clone() for m in self.memories or []]))

    monkeypatch.setattr(tbptt_toy.StatePassing, "start", start)
    docs = rows(3, 96, torch.Generator().manual_seed(0))
    with tbptt_toy.StatePassing(model, 1.0) as passing:
        first = tbptt_toy.tbptt_loss(model, passing, docs, 32)
        tbptt_toy.tbptt_loss(model, passing, docs, 32)  # a second document: starts empty again
    assert first.requires_grad and torch.isfinite(first)
    assert len(seen) == 6 and all(initial is None for initial in seen[0][0])
    for i, (initials, memories) in enumerate(seen[1:], start=1):
        for initial, memory in zip(initials, memories):
            if i % 3 == 0:
                assert not initial.any() and memory.abs().sum() > 0
            else:
                assert torch.equal(initial, memory)


def test_the_study_writes_each_seed_and_keeps_those_already_run(tmp_path, monkeypatch):
    argv = ["tbptt_toy.py", "--out", str(tmp_path), "--runs", "rows,mixed-64", "--row", "32", "--steps", "2",
            "--batch", "2", "--lengths", "32,64"]
    monkeypatch.setattr(sys, "argv", argv + ["--seeds", "0"])
    tbptt_toy.main()
    first = json.loads((tmp_path / "tbptt-toy-cpu.json").read_text())
    assert first["device"] == "cpu" and list(first["runs"]) == ["rows", "mixed-64"]
    monkeypatch.setattr(sys, "argv", argv + ["--seeds", "0,1"])
    tbptt_toy.main()
    both = json.loads((tmp_path / "tbptt-toy-cpu.json").read_text())
    for name in ("rows", "mixed-64"):
        assert both["runs"][name]["seeds"]["0"] == first["runs"][name]["seeds"]["0"]
        accs = [r["acc"]["64"] for r in both["runs"][name]["seeds"].values()]
        assert len(accs) == 2 and both["runs"][name]["acc"]["64"] == pytest.approx(sum(accs) / 2)
    monkeypatch.setattr(sys, "argv", argv[:4] + ["mixed-48"] + argv[5:])
    with pytest.raises(SystemExit, match="multiple of --row 32"):
        tbptt_toy.main()
    monkeypatch.setattr(sys, "argv", argv[:8] + ["3"] + argv[9:])  # other steps: refused, the file kept
    with pytest.raises(SystemExit, match="other settings"):
        tbptt_toy.main()
    assert json.loads((tmp_path / "tbptt-toy-cpu.json").read_text()) == both
    monkeypatch.setattr(sys, "argv", argv[:8] + ["3"] + argv[9:] + ["--seeds", "0", "--tag", "s3"])
    tbptt_toy.main()
    assert json.loads((tmp_path / "tbptt-toy-s3-cpu.json").read_text())["settings"]["steps"] == 3
