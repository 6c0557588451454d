"""``lizardlm soup``: finished runs of one conversion averaged into a new run directory."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lizardlm.cli import main as cli_main
from lizardlm.errors import CheckpointError
from lizardlm.train import linearize, soup
from lizardlm.train.checkpoint import load_checked
from test_init_from import _logits
from test_pipeline import settings

TOKENS = dict(stage1_tokens=32 * 4 * 6, stage2_tokens=32 * 4 * 6)


@pytest.fixture
def pair(tmp_path, teacher_dir, data_file):
    """A finished run and its continuation (``init_from``: stage 2 read on), as WiSE-FT averages them."""
    a, b = tmp_path / "a", tmp_path / "b"
    linearize(settings(teacher_dir, data_file, **TOKENS), a)
    linearize(settings(teacher_dir, data_file, init_from=str(a), stage1_tokens=0, stage2_tokens=TOKENS["stage2_tokens"],
                       stage2_train_lizard=True), b)
    return a, b


def _tensors(run):
    return (load_checked(run / "lizard.safetensors")[0], load_checked(run / "adapter" / "adapter_model.safetensors")[0])


def test_a_soup_is_the_weighted_mean_of_its_runs_and_loads_as_a_run(tmp_path, pair):
    a, b = pair
    (lizard_a, adapter_a), (lizard_b, adapter_b) = _tensors(a), _tensors(b)
    assert any(not torch.equal(lizard_a[k], lizard_b[k]) for k in lizard_a)  # b moved on from a: both parts differ
    assert any(not torch.equal(adapter_a[k], adapter_b[k]) for k in adapter_a)

    record = soup([a, b], [1, 3], tmp_path / "s")
    assert [r["weight"] for r in record["runs"]] == [0.25, 0.75]
    lizard, adapter = _tensors(tmp_path / "s")
    for mine, x, y in ((lizard, lizard_a, lizard_b), (adapter, adapter_a, adapter_b)):
        assert mine.keys() == x.keys()
        for k in mine:
            expected = (0.25 * x[k].double() + 0.75 * y[k].double()).to(x[k].dtype)
            assert mine[k].dtype == x[k].dtype and torch.equal(mine[k], expected), k
    manifest = json.loads((tmp_path / "s" / "run.json").read_text())
    assert manifest["soup"] == record["runs"] and manifest["completed"] == ["stage1", "stage2"]
    assert manifest["results"] == {} and "data" not in manifest  # nothing measured on the soup itself
    assert [r["path"] for r in record["runs"]] == [str(a.absolute()), str(b.absolute())]
    for r, run in zip(record["runs"], (a, b)):  # which weights were averaged, as their runs recorded them
        recorded = json.loads((run / "run.json").read_text())["fingerprints"]
        assert r["fingerprints"] == {"lizard": recorded["lizard"], "adapter": recorded["adapter"]}
    assert json.loads((tmp_path / "s" / "summary.json").read_text()) == {"soup": record["runs"]}

    ids = torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(_logits(tmp_path / "s", ids)).all()
    soup([a, b], [1, 0], tmp_path / "end")  # an end point of the line is that run, to the last bit of its weights
    assert torch.allclose(_logits(tmp_path / "end", ids), _logits(a, ids), atol=1e-6)


def test_what_cannot_be_averaged_is_refused_and_nothing_is_written(tmp_path, pair, teacher_dir, data_file, capsys):
    a, b = pair
    with pytest.raises(ValueError, match="two runs or more"):
        soup([a], None, tmp_path / "x")
    with pytest.raises(ValueError, match="2 weights for 3 runs"):
        soup([a, b, a], [1, 1], tmp_path / "x")
    with pytest.raises(ValueError, match="non-negative and not all zero"):
        soup([a, b], [0, 0], tmp_path / "x")
    other = tmp_path / "other"  # a run of another Lizard form: its manifest says so
    shutil.copytree(a, other)
    record = json.loads((other / "run.json").read_text())
    record["settings"]["lizard"]["window_size"] = 16
    (other / "run.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="its layers or adapter differ .*lizard.window_size: 8 in a, 16 here"):
        soup([a, other], None, tmp_path / "x")
    changed = tmp_path / "changed"  # an adapter replaced since its run wrote it
    shutil.copytree(b, changed)
    shutil.copy(a / "adapter" / "adapter_model.safetensors", changed / "adapter" / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="changed since this run wrote it"):
        soup([a, changed], None, tmp_path / "x")
    base = tmp_path / "base"
    linearize(settings(teacher_dir, data_file, baseline="teacher-lora", stage1_tokens=0, stage2_tokens=128), base)
    with pytest.raises(CheckpointError, match="a teacher-lora baseline has no Lizard layers to average"):
        soup([a, base], None, tmp_path / "x")
    half = tmp_path / "half"  # a run whose stage 2 has not finished
    shutil.copytree(b, half)
    record = json.loads((half / "run.json").read_text())
    record["completed"] = ["stage1"]
    (half / "run.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="half: its stage 2 has not finished"):
        soup([a, half], None, tmp_path / "x")
    stranger = tmp_path / "stranger"  # a run made from another teacher: its recorded fingerprint says so
    shutil.copytree(b, stranger)
    record = json.loads((stranger / "run.json").read_text())
    record["fingerprints"]["teacher"]["samples"] = [x + 1 for x in record["fingerprints"]["teacher"]["samples"]]
    (stranger / "run.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="stranger was made from another teacher than"):
        soup([a, stranger], None, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        soup([a, b], None, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # argparse's one-line usage error
        cli_main(["soup", str(a), str(b), "--weights", "1,-1", "--out", str(tmp_path / "y")])
    assert stop.value.code == 2
    assert "expected a number >= 0" in capsys.readouterr().err
    assert cli_main(["soup", str(a), str(b), "--weights", "1,1,1", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lizardlm: error: 3 weights for 2 runs"] and not (tmp_path / "y").exists()
    assert cli_main(["soup", str(a), str(b), "--out", str(tmp_path / "y")]) == 0
    assert "x 0.5" in capsys.readouterr().err
    assert [r["weight"] for r in json.loads((tmp_path / "y" / "run.json").read_text())["soup"]] == [0.5, 0.5]
