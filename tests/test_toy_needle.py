"""benchmarks/toy_needle.py: the task rows it trains on, and a tiny run that writes, plots and resumes."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import toy_needle  # noqa: E402


def test_stage1_trains_only_the_lizard_parameters_toward_the_teacher():
    """The converted runs' stage 1 is attention transfer: its loss (the summed layer MSE to the
    teacher's attention) falls, and only the Lizard parameters move."""
    import argparse

    teacher = toy_needle.make_model(None, seed=0)
    model = toy_needle.lizardlm.convert(copy.deepcopy(teacher), toy_needle.lizardlm.LizardConfig(
        **toy_needle.BASE, mode="lizard")).requires_grad_(False)
    lizard = list(model.lizard_parameters())
    for p in lizard:
        p.requires_grad_(True)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    args = argparse.Namespace(seed=0, batch=8, length=64, eval_every=10, value_tokens=1)
    curve: list = []
    loss_fn = toy_needle.transfer_loss(model)
    first = loss_fn(toy_needle.rows(8, 64, torch.Generator().manual_seed(5))).item()
    toy_needle.fit(model, lizard, loss_fn, 20, 1e-2, args, curve, backward=False)
    assert loss_fn(toy_needle.rows(8, 64, torch.Generator().manual_seed(5))).item() < first
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_rows_hide_one_needle_beyond_the_window_and_ask_for_it():
    ids = toy_needle.rows(64, 100, torch.Generator().manual_seed(0))
    assert ids.shape == (64, 100) and (ids[:, -2] == toy_needle.QUERY).all()
    for row in ids:
        marks = (row == toy_needle.MARKER).nonzero().flatten().tolist()
        assert len(marks) == 1 and marks[0] < 100 - toy_needle.GAP  # the needle is outside the 16-token window
        assert row[marks[0] + 1] == row[-1] and toy_needle.VALUES[0] <= row[-1] < toy_needle.VALUES[1]
        filler = torch.cat([row[: marks[0]], row[marks[0] + 2 : -2]])
        assert ((filler >= toy_needle.FILLER[0]) & (filler < toy_needle.FILLER[1])).all()
    inside = toy_needle.rows(8, 100, torch.Generator().manual_seed(0), inside=True)
    assert (inside[:, 100 - toy_needle.INSIDE] == toy_needle.MARKER).all()  # the in-window probe
    assert (inside[:, 101 - toy_needle.INSIDE] == inside[:, -1]).all()


def test_rows_with_five_token_values_keep_every_token_beyond_the_window():
    k, window = 5, toy_needle.BASE["window_size"]
    ids = toy_needle.rows(64, 100, torch.Generator().manual_seed(1), k=k)
    assert (ids[:, -k - 1] == toy_needle.QUERY).all()
    for row in ids:
        mark = (row == toy_needle.MARKER).nonzero().flatten().tolist()
        assert len(mark) == 1 and torch.equal(row[mark[0] + 1 : mark[0] + 1 + k], row[-k:])
        assert 100 - k - 1 - (mark[0] + k) > window  # QUERY sees no needle token inside its window
    inside = toy_needle.rows(8, 100, torch.Generator().manual_seed(1), inside=True, k=k)
    mark = (inside[0] == toy_needle.MARKER).nonzero().flatten().tolist()[0]
    assert 100 - 2 - mark < window and torch.equal(inside[0, mark + 1 : mark + 1 + k], inside[0, -k:])


def test_a_tiny_run_writes_plots_and_keeps_finished_runs(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--steps", "2", "--eval-every", "1", "--length", "48", "--lengths", "48,96",
            "--stage1-steps", "2", "--stage2-steps", "2", "--runs", "softmax,lizard+read,converted:paper"]
    assert toy_needle.main(argv) == 0
    result = json.loads((tmp_path / "toy-needle-cpu.json").read_text())
    assert list(result["runs"]) == ["softmax", "lizard+read", "converted:paper"]
    assert (tmp_path / "toy-needle-cpu.png").stat().st_size
    converted = result["runs"]["converted:paper"]
    assert [c[0] for c in converted["curve"]] == [1, 2, 3, 4] and set(converted["acc_after_stage1"]) == {"48", "96"}
    run = result["runs"]["lizard+read"]
    assert run["config"] == {"mode": "lizard", "read_gate": "head"} and [c[0] for c in run["curve"]] == [1, 2]
    assert set(run["acc"]) == {"48", "96"} and all(0 <= a <= 1 for a in [*run["acc"].values(), run["ceiling"]])
    capsys.readouterr()
    assert toy_needle.main(argv) == 0 and "lizard+read:" not in capsys.readouterr().out  # kept, not retrained


@pytest.mark.parametrize("bad", [["--value-tokens", "0"], ["--curriculum", "-1"]])
def test_bad_value_tokens_or_curriculum_is_one_error_line(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        toy_needle.main(["--out", str(tmp_path), *bad])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--value-tokens must be >= 1 and --curriculum >= 0" in err[-1] and not list(tmp_path.iterdir())


def test_placed_rows_put_the_needle_after_pre_tokens_and_dist_tokens_before_the_query():
    ids = toy_needle.placed_rows(16, pre=5, dist=40, gen=torch.Generator().manual_seed(2))
    assert ids.shape == (16, 5 + 2 + 40 + 2)
    assert (ids[:, 5] == toy_needle.MARKER).all() and torch.equal(ids[:, 6], ids[:, -1])
    assert (ids[:, -2] == toy_needle.QUERY).all() and ((ids == toy_needle.MARKER).sum(-1) == 1).all()
    filler = torch.cat([ids[:, :5], ids[:, 7:-2]], dim=1)
    assert ((filler >= toy_needle.FILLER[0]) & (filler < toy_needle.FILLER[1])).all()


def test_grid_run_scores_every_cell_at_every_decay_scale_of_a_gated_form(tmp_path):
    """``--grid``: a gated form gets a grid per decay scale (the scale is put back to 1 after), an
    ungated one only S = 1; the JSON and its plot are written; converted runs are refused."""
    argv = ["--grid", "--steps", "2", "--eval-every", "2", "--lengths", "64", "--grid-pre", "0,8",
            "--grid-dist", "24,40", "--decay-scales", "1,0.5", "--out", str(tmp_path)]
    assert toy_needle.main([*argv, "--runs", "lizard+write,lolcats"]) == 0
    result = json.loads((tmp_path / "toy-needle-grid-cpu.json").read_text())
    gated, ungated = result["runs"]["lizard+write"]["grid"], result["runs"]["lolcats"]["grid"]
    assert set(gated) == {"1", "0.5"} and set(ungated) == {"1"}
    for grid in (*gated.values(), *ungated.values()):
        assert set(grid) == {"0", "8"} and all(set(row) == {"24", "40"} for row in grid.values())
        assert all(0.0 <= v <= 1.0 for row in grid.values() for v in row.values())
    assert (tmp_path / "toy-needle-grid-cpu.png").stat().st_size > 0
    import readme_table
    table = readme_table.toy_grid(tmp_path / "toy-needle-grid-cpu.json").splitlines()
    assert table[2] == "| run | decay scale | distance 24 | distance 40 | 0 before | 8 before |"
    cell = gated["0.5"]
    row = f"| lizard+write | 0.5 | {(cell['0']['24'] + cell['8']['24']) / 2:.2f} |"
    assert [r for r in table if r.startswith("| ")][1:] and any(r.startswith(row) for r in table)
    assert len([r for r in table if r.startswith("| lolcats |")]) == 1
    with pytest.raises(SystemExit):
        toy_needle.main([*argv, "--runs", "converted:lizard"])


def test_grid_cells_depend_on_the_decay_scale_only_through_the_gates():
    """The grid at S = 1 after another scale is the grid of the model as trained (set_decay_scale is undone)."""
    model = toy_needle.make_model(dict(mode="lizard"), seed=0)
    before = toy_needle.grid_accuracy(model, [0, 8], [24], n=8)
    settings = {"decay_scales": [0.25], "grid_pre": [0, 8], "grid_dist": [24]}
    toy_needle.scaled_grids(model, settings)
    assert toy_needle.grid_accuracy(model, [0, 8], [24], n=8) == before
    assert all(m.gate.scale == 1.0 for m in model.modules() if isinstance(m, toy_needle.LizardAttention))
