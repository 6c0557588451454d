"""The soup trade-off plot (benchmarks/soup_plot.py): which runs are a line's points and what each holds,
from a result file written here."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import soup_plot  # noqa: E402

LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
TASKS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande")


@pytest.fixture
def result(tmp_path):
    """Two ends, soups at 25 and 60 (given as weights that are not percents), a soup of another pair, a
    reference; random scores."""
    rng = random.Random()
    scores = lambda: {t: rng.random() for t in TASKS}  # noqa: E731
    accuracy = lambda: {str(n): round(rng.random(), 2) for n in LENGTHS}  # noqa: E731
    runs = {"a": {"data": "mix:x=1"}, "b": {"data": "mix:y=1"}, "ref": {"data": "alpaca"},
            "s25": {"data": "soup:a=3,b=1"}, "s60": {"data": "soup:b=0.6,a=0.4"}, "other": {"data": "soup:a=1,ref=1"},
            "s25@decay0.5@write2": {"data": "soup:a=3,b=1"}, "s60@decay0.5@write2": {"data": "soup:b=0.6,a=0.4"},
            "s60@decay0.25@write3": {"data": "soup:b=0.6,a=0.4"}}
    d = {"device": "NVIDIA Test GPU", "runs": runs,
         "benchmarks": {n: scores() for n in ("a", "b", "ref", "s25", "other")} | {"s60": {"piqa": 0.5}},
         "passkey": {n: accuracy() for n in runs if n not in ("s25@decay0.5@write2",)}
         | {"s25@decay0.5@write2": {"1024": 1.0, "2048": 1.0}},
         "tuned": {"s60": {"chosen": "s60@decay0.25@write3", "decay_scale": 0.25, "write_contrast": 3.0}}}
    path = tmp_path / "passkey-test-gpu.json"
    path.write_text(json.dumps(d))
    return path, d


def test_the_points_are_the_ends_and_their_soups_by_share(result):
    path, d = result
    rows = soup_plot.points(d, ("a", "b"), "decay0.5@write2")
    assert [(r["run"], r["share"]) for r in rows] == [("a", 0.0), ("s25", 25.0), ("s60", 60.0), ("b", 100.0)]
    s25, s60 = rows[1], rows[2]
    assert s25["zero_shot"] == pytest.approx(100 * sum(d["benchmarks"]["s25"].values()) / 5)
    assert s60["zero_shot"] is None  # a task missing: no mean
    assert s25["near"] is None and s25["far"] is None  # passkey not run at every length of the goal
    at = d["passkey"]["s60@decay0.5@write2"]
    assert s60["near"] == min(at[k] for k in ("2048", "4096", "8192"))
    assert s60["far"] == min(at[k] for k in ("16384", "32768"))
    tuned = d["passkey"]["s60@decay0.25@write3"]
    assert s60["tuned_near"] == min(tuned[k] for k in ("2048", "4096", "8192"))
    assert s25["tuned_near"] is None  # tune did not run for it


def test_the_plot_is_written_and_bad_input_is_one_line(result, tmp_path, capsys):
    path, _ = result
    assert soup_plot.plot(path, ("a", "b"), "decay0.5@write2", "ref", tmp_path / "out").name == "soup-a-b.png"
    with pytest.raises(SystemExit, match="no run missing"):
        soup_plot.plot(path, ("a", "missing"), "decay0.5@write2", "ref", tmp_path / "out")
    with pytest.raises(SystemExit, match="no soup of b and ref"):
        soup_plot.plot(path, ("b", "ref"), "decay0.5@write2", "ref", tmp_path / "out")
    with pytest.raises(SystemExit, match="s60 has no score"):
        soup_plot.plot(path, ("a", "b"), "decay0.5@write2", "s60", tmp_path / "out")
    with pytest.raises(SystemExit):
        soup_plot.main([str(path), "--ends", "a"])
    assert capsys.readouterr().err.splitlines()[-1].endswith("error: --ends takes two run names, A,B")
