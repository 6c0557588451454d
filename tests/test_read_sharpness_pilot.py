"""benchmarks/read_sharpness_pilot.py: the trials an evaluation's replay scores again; its files' table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from read_sharpness_pilot import replay_plan  # noqa: E402

from lizardlm.eval.passkey import depth_grid  # noqa: E402


def test_replay_takes_every_miss_and_as_many_hits_on_the_depth_grid(tmp_path):
    grid = depth_grid(10)
    trials = [{"depth": round(grid[i % 10], 4), "key": f"{10000 + i}", "pred": f"{10000 + i}" if i % 7 else "1",
               "correct": bool(i % 7)} for i in range(30)]
    lengths = [{"length": L, "by_depth": {f"{d:.4f}": 1.0 for d in grid}, "trials": trials} for L in (2048, 4096)]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"tasks": {"passkey": {"model": {"details": {"lengths": lengths}}}}}))
    plan = replay_plan(str(path))
    assert replay_plan(str(path)) == plan  # seeded
    for L in (2048, 4096):
        mine = [t for t in plan if t["length"] == L]
        misses = [t for t in mine if t["was"] != t["key"]]
        assert sorted(t["key"] for t in misses) == [f"{10000 + i}" for i in range(0, 30, 7)]
        assert len(mine) == 2 * len(misses) and len({t["key"] for t in mine}) == len(mine)
        assert all(t["depth"] in grid for t in mine)  # the rounded depth put back on the grid


def test_the_table_pairs_each_sharpness_with_t1_on_the_same_prompts(tmp_path):
    import readme_table

    def record(run, results, trials=4):
        return {"run": run, "device": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16",
                "settings": {"trials": trials, "decay_scale": 0.125, "write_contrast": 5.0}, "results": results}

    def length(wrong, n=4):
        return {"acc": 1 - len(wrong) / n, "answer_nll": 0.1 * (1 + len(wrong)), "misses": {}, "wrong": wrong, "seconds": 1.0}

    folder = tmp_path / "read-sharpness-nvidia-h100-80gb-hbm3"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(record("r", {"1": {"2048": length([0, 1, 2])}, "2": {"2048": length([2, 3])}})))
    (folder / "b.json").write_text(json.dumps(record("r", {"2": {"4096": length([])}, "1": {"4096": length([1]),
                                                           "zero_shot": {"piqa": 0.5, "mean": 48.0}}})))
    table = readme_table.read_sharpness(folder)
    assert "| `r` | 1 | 0.250 (4) | 0.750 (4) | 0.300 | 48.00 |" in table
    assert "| `r` | 2 | 0.500 (4) | 1.000 (4) | 0.200 | – |" in table
    assert "| `r` | 2 | 2K / 4K | 3 | 1 |" in table  # 0, 1 and 1 mended; 3 broken
    assert f"3 mended, 1 broken; McNemar's exact test p = {readme_table.mcnemar(3, 1):.2g}" in table


def test_mcnemar_is_the_exact_binomial_test():
    import readme_table

    assert readme_table.mcnemar(17, 2) == pytest.approx(2 * (1 + 19 + 171) / 2**19)
    assert readme_table.mcnemar(3, 3) == 1.0 and readme_table.mcnemar(0, 0) == 1.0
