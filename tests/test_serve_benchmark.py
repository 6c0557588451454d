"""benchmarks/serve.py at smoke size on CPU: the JSON it writes and the README table it gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import readme_table  # noqa: E402


def test_serve_smoke_run_writes_the_schema_and_a_table(tmp_path):
    """benchmarks/serve.py at smoke size on CPU: every (model, decoding, batch) row, and its table."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(BENCHMARKS / "serve.py"), "--small", "--prompts", "5", "--max-len", "48",
           "--new-tokens", "3", "--batches", "1,4", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=240)
    path = tmp_path / "serve-cpu-small.json"
    d = json.loads(path.read_text())
    assert [(r["model"], r["decode"], r["batch"]) for r in d["runs"]] == [
        ("teacher", "eager", 1), ("teacher", "eager", 4), ("lizard", "eager", 1), ("lizard", "eager", 4),
        ("teacher", "static", 1), ("teacher", "static", 4)]
    assert all(r["new_tokens"] == 5 * 3 and r["tok_per_s"] == pytest.approx(15 / r["seconds"], rel=0.01) for r in d["runs"])
    assert d["agree"] is None and d["config"]["min_len"] == 12
    assert d["agree_teacher"] == 1.0  # greedy completions with a static cache are the dynamic cache's
    table = readme_table.serve(path).splitlines()
    assert table[2] == "| batch | teacher eager | lizard eager | teacher static |" and len(table) == 6
