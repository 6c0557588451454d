"""benchmarks/toy_needle.py: the task rows it trains on, and a tiny run that writes, plots and resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import toy_needle  # noqa: E402


def test_rows_hide_one_needle_beyond_the_window_and_ask_for_it():
    ids = toy_needle.rows(64, 100, torch.Generator().manual_seed(0))
    assert ids.shape == (64, 100) and (ids[:, -2] == toy_needle.QUERY).all()
    for row in ids:
        marks = (row == toy_needle.MARKER).nonzero().flatten().tolist()
        assert len(marks) == 1 and marks[0] < 100 - toy_needle.GAP  # the needle is outside the 16-token window
        assert row[marks[0] + 1] == row[-1] and toy_needle.VALUES[0] <= row[-1] < toy_needle.VALUES[1]
        filler = torch.cat([row[: marks[0]], row[marks[0] + 2 : -2]])
        assert ((filler >= toy_needle.FILLER[0]) & (filler < toy_needle.FILLER[1])).all()


def test_a_tiny_run_writes_plots_and_keeps_finished_runs(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--steps", "2", "--eval-every", "1", "--length", "48", "--lengths", "48,96",
            "--runs", "softmax,lizard+read"]
    assert toy_needle.main(argv) == 0
    result = json.loads((tmp_path / "toy-needle-cpu.json").read_text())
    assert list(result["runs"]) == ["softmax", "lizard+read"] and (tmp_path / "toy-needle-cpu.png").stat().st_size
    run = result["runs"]["lizard+read"]
    assert run["config"] == {"mode": "lizard", "read_gate": "head"} and [c[0] for c in run["curve"]] == [1, 2]
    assert set(run["acc"]) == {"48", "96"} and all(0 <= a <= 1 for a in run["acc"].values())
    capsys.readouterr()
    assert toy_needle.main(argv) == 0 and "lizard+read:" not in capsys.readouterr().out  # kept, not retrained
