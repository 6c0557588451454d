"""benchmarks/read_sharpness_pilot.py: the trials an evaluation's replay scores again."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
