"""benchmarks/prefill.py at smoke size on CPU: the JSON it writes and the README table it gives."""

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


def test_smoke_run_writes_the_schema_and_a_table(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(BENCHMARKS / "prefill.py"), "--small", "--lengths", "96,200", "--batch", "2",
           "--chunk", "64", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=240)
    path = tmp_path / "prefill-cpu-small.json"
    d = json.loads(path.read_text())
    assert d["device"] == "cpu" and d["config"]["lizard"]["retrieval"]["feature_dim"] == 256
    keys = [(r["model"], r["backend"], r["length"]) for r in d["runs"]]
    assert keys == [(m, b, L) for m, b in (("teacher", "sdpa"), ("lizard-default", "torch"),
                                           ("lizard-retrieval", "torch")) for L in (96, 200)]
    assert all(r["tok_per_s"] == pytest.approx(r["batch"] * r["length"] / r["seconds"], rel=0.01) for r in d["runs"])
    assert d["agreement"] == []  # one backend on CPU: nothing to compare
    assert (tmp_path / "prefill-cpu-small.png").stat().st_size > 0
    table = readme_table.prefill(path).splitlines()
    assert table[2] == "| length | teacher sdpa | lizard-default torch | lizard-retrieval torch |"
    assert len(table) == 4 + 2


def test_table_gives_the_triton_speed_up_and_the_logit_difference(tmp_path):
    runs = [{"model": m, "backend": b, "length": 2048, "batch": 8, "tok_per_s": r}
            for m, b, r in (("teacher", "sdpa", 9e5), ("lizard-default", "torch", 1e5), ("lizard-default", "triton", 4e5))]
    path = tmp_path / "prefill-gpu.json"
    path.write_text(json.dumps({"device": "GPU", "dtype": "torch.bfloat16", "config": {"model": "m", "batch": 8, "chunk": 2048},
                                "runs": runs, "agreement": [{"model": "lizard-default", "length": 2048,
                                                             "max_abs_diff": 0.0312, "logit_scale": 12.5}]}))
    row = readme_table.prefill(path).splitlines()[-1]
    assert row == "| 2048 | 900.0K | 100.0K | 400.0K | 4.0x | 0.031 (of 12.5) |"

