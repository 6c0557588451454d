"""The fixed-context long-ppl reference's table (readme_table.longppl_reference) and plot
(benchmarks/longppl_plot.py), from result files written here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import longppl_plot  # noqa: E402
import readme_table  # noqa: E402

STARTS, ENDS = [0, 512, 1024, 2048], [512, 1024, 2048, 4096]


@pytest.fixture
def results(tmp_path, monkeypatch):
    reference = {"tasks": {"longppl": {"model": {"status": "ok", "curve": {
        "seq_len": 4096, "windows": 2, "context": 1024, "bucket_start": STARTS, "bucket_end": ENDS,
        "ppl": [20.0, 22.0, 25.0, 30.0]}}}},
        "meta": {"device": {"cuda_device": None}}, "models": {"model": {"name_or_path": "/cache/teacher-x/"}}}
    (tmp_path / "longppl-reference-cpu.json").write_text(json.dumps(reference))
    curve = lambda ppl: {"bucket_start": STARTS, "bucket_end": ENDS, "ppl": ppl}  # noqa: E731
    for stem, runs in {"a-gpu": {"teacher": curve([20.0, 22.0, 40.0, 300.0]), "good": curve([21.0, 23.0, 27.5, 33.0])},
                       "b-gpu": {"teacher": curve([20.0, 22.0, 40.0, 300.0]), "bad": curve([40.0, 50.0, 75.0, 120.0]),
                                 "good@decay0.5": curve([1.0] * 4), "other-buckets": {**curve([1.0] * 4), "bucket_start": [0]}}}.items():
        (tmp_path / f"passkey-{stem}.json").write_text(json.dumps({"longppl": runs}))
    monkeypatch.setattr(readme_table, "RESULTS", tmp_path)
    monkeypatch.setattr(longppl_plot, "RESULTS", tmp_path)
    return tmp_path


def test_the_table_shows_each_run_once_over_the_reference_past_its_context(results):
    rows = readme_table.longppl_reference(results / "longppl-reference-cpu.json").splitlines()
    assert "teacher-x reading the same 2 held-out 4K-token book windows with at most 1024 tokens" in rows[0]
    assert rows[4] == "| reference: teacher, 1024-token context | 20.0 | 22.0 | 25.0 | 30.0 |"
    assert rows[5:] == ["| teacher (`a-gpu`) | 20.0 | 22.0 | 40.0 (+60%) | 300.0 (+900%) |",
                        "| good (`a-gpu`) | 21.0 | 23.0 | 27.5 (+10%) | 33.0 (+10%) |",
                        "| bad (`b-gpu`) | 40.0 | 50.0 | 75.0 (+200%) | 120.0 (+300%) |"]  # teacher once, no @decay


def test_the_plot_draws_the_runs_asked_for_or_those_within_2x(results, tmp_path):
    assert longppl_plot.plot(results / "longppl-reference-cpu.json", ["good", "bad"], tmp_path / "out").is_file()
    ref, runs = readme_table.longppl_runs(results / "longppl-reference-cpu.json")
    assert [name for name, _, _ in runs] == ["teacher", "good", "bad"] and ref["device"] == "cpu"
    with pytest.raises(SystemExit, match="no long-ppl curve for run"):
        longppl_plot.plot(results / "longppl-reference-cpu.json", ["missing"], tmp_path / "out")
    assert longppl_plot.plot(results / "longppl-reference-cpu.json", None, tmp_path / "auto").name == \
        "longppl-vs-reference-cpu.png"


def test_a_folder_of_longppl_evaluations_is_one_table_against_its_teacher(tmp_path):
    """``longppl-ood-*``: one row per ``<label>-eval.json``, the teacher first, each student's bucket over the
    teacher's in brackets, the knobs each was evaluated at."""
    folder = tmp_path / "longppl-ood-cpu"
    folder.mkdir()

    def write(label: str, ppl: list[float], knobs: dict, context: int | None = None) -> None:
        curve = {"seq_len": 4096, "windows": 3, "context": context, "data": "tinyshakespeare", "bucket_start": STARTS,
                 "bucket_end": ENDS, "ppl": ppl}
        (folder / f"{label}-eval.json").write_text(json.dumps({
            "tasks": {"longppl": {"model": {"status": "ok", "curve": curve}}},
            "meta": {"device": {"cuda_available": False}}, "models": {"model": knobs}}))

    write("student", [22.0, 33.0, 30.0, 45.0], {"decay_scale": 0.125, "write_contrast": 5.0, "read_sharpness": 2.0})
    write("as-trained", [22.0, 33.0, 30.0, 60.0], {"decay_scale": 1.0, "write_contrast": 1.0, "read_sharpness": 1.0,
                                                   "window_size": 1024, "source": "runs/as-trained"})
    write("teacher", [20.0, 30.0, 30.0, 30.0], {})
    write("teacher-context512", [20.0, 30.0, 36.0, 39.0], {}, context=512)
    rows = readme_table.longppl_folder(folder).splitlines()
    assert "`tinyshakespeare`, CPU" in rows[0] and "--longppl-data tinyshakespeare`): 3 windows of 4K tokens" in rows[0]
    assert rows[2] == "| model | knobs | 0-512 | 512-1K | 1K-2K | 2K-4K |"
    assert rows[4:] == ["| teacher | – | 20.0 | 30.0 | 30.0 | 30.0 |",  # first, then the references, the others by name
                        "| teacher-context512 | context 512 | 20.0 (+0%) | 30.0 (+0%) | 36.0 (+20%) | 39.0 (+30%) |",
                        "| as-trained | 1 / 1 / 1, window 1K | 22.0 (+10%) | 33.0 (+10%) | 30.0 (+0%) | 60.0 (+100%) |",
                        "| student | 0.125 / 5 / 2 | 22.0 (+10%) | 33.0 (+10%) | 30.0 (+0%) | 45.0 (+50%) |"]
    assert readme_table.table(folder) == readme_table.longppl_folder(folder)
    assert longppl_plot.plot_folder(folder) == folder / "longppl.png" and (folder / "longppl.png").stat().st_size > 10_000
    assert longppl_plot.plot_by_window(folder) is None  # one window of as-trained's knobs, one reference context
    write("as-trained-w2048", [22.0, 33.0, 30.0, 50.0], {"decay_scale": 1.0, "write_contrast": 1.0, "read_sharpness": 1.0,
                                                         "window_size": 2048, "source": "runs/as-trained"})
    assert longppl_plot.plot_by_window(folder) == folder / "longppl-by-window.png"
    assert (folder / "longppl-by-window.png").stat().st_size > 10_000
