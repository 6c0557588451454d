"""benchmarks/state_passing_pilot.py: its run names, the ratio plot and the README table, on a small
made-up result (the pilot itself trains for an hour on CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import readme_table  # noqa: E402


def _result(tmp_path: Path) -> Path:
    curve = lambda ppl: {"bucket_start": [0, 128, 256], "bucket_end": [128, 256, 512], "ppl": ppl, "windows": 2}  # noqa: E731
    run = lambda data, val: {"data": data, "summary": {"teacher_val_ppl": 10.0, "student_val_ppl": val}}  # noqa: E731
    result = {
        "device": "cpu",
        "settings": {"state_passing": "0.9", "stage1_tokens": 1024, "stage2_tokens": 2048, "eval_len": 512,
                     "contiguous": "books", "contiguous_passing": "1", "recipe": "--teacher smollm2-135m"},
        "runs": {"alpaca/no-passing": run("alpaca", 6.0), "alpaca/passing-0.9": run("alpaca", 6.5),
                 "books/contiguous-1": run("books", 7.25)},
        "longppl": {"teacher": curve([20.0, 20.0, 20.0]), "alpaca/no-passing": curve([30.0, 32.0, 40.0]),
                    "alpaca/passing-0.9": curve([30.0, 31.0, 34.0]), "books/contiguous-1": curve([25.0, 22.0, 21.0])},
    }
    path = tmp_path / "state-passing-pilot-cpu.json"
    path.write_text(json.dumps(result))
    return path


def test_plot_only_redraws_the_ratio_plot(tmp_path):
    _result(tmp_path)
    done = subprocess.run([sys.executable, str(BENCH / "state_passing_pilot.py"), "--out", str(tmp_path),
                           "--plot-only"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "state-passing-pilot-cpu.png").stat().st_size > 1000


def test_readme_table_has_a_row_per_model_with_its_validation_perplexity(tmp_path):
    table = readme_table.state_passing(_result(tmp_path))
    rows = [line for line in table.splitlines() if line.startswith("| ") and "model" not in line]
    assert rows == ["| teacher |  | 20.0 | 20.0 | 20.0 |",
                    "| alpaca/no-passing | 6.00 (10.00) | 30.0 | 32.0 | 40.0 |",
                    "| alpaca/passing-0.9 | 6.50 (10.00) | 30.0 | 31.0 | 34.0 |",
                    "| books/contiguous-1 | 7.25 (10.00) | 25.0 | 22.0 | 21.0 |"]
    assert "DATA = `alpaca`, `books`" in table and "0-128 | 128-256 | 256-512" in table
    assert "`--row-order contiguous --state-passing P`" in table
