"""Stage 2's weight on answer targets that repeat the target before them (lizardlm.train.answer_repeats)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lizardlm.data.packing import IGNORE_INDEX, without_loss
from lizardlm.train.answer_repeats import answer_repeat_weights


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weights_fall_on_an_answer_rows_repeated_targets(seed):
    """Against a loop over every target: ``w`` where an answer row's target equals the target before it
    (both targets), 1 elsewhere: text rows, first targets, targets after an input-only token."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 3, (6, 40), generator=gen)  # three token ids: many repeats
    targets[torch.rand(6, 40, generator=gen) < 0.3] = IGNORE_INDEX
    answer = torch.rand(6, generator=gen) < 0.5
    answer[:2] = torch.tensor([True, False])
    got = answer_repeat_weights(targets, answer, 4.0)
    for r in range(6):
        for t in range(40):
            repeat = t > 0 and targets[r, t] != IGNORE_INDEX and targets[r, t] == targets[r, t - 1]
            assert got[r, t].item() == (4.0 if repeat and answer[r] else 1.0), (r, t)
    assert (got[~answer] == 1).all() and (got[answer] == 4).any()
    assert (answer_repeat_weights(targets, answer, 1.0) == 1).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_stage2_loss_weighs_an_answers_repeated_targets(tiny_llama, seed):
    """``repeat_weight`` (``rows``): each row's ``sum_t c_t l_t / n_r``, then the mean over rows with targets;
    the value and every gradient against a float64 reference; a text row (no input-only token) keeps its
    plain mean, and the weight changes the loss only where an answer row repeats a target."""
    from lizardlm.train.linearize import _lm_loss_fn

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 4, (4, 24), generator=gen)  # four token ids: repeats in every row
    targets = torch.rand(4, 24, generator=gen) < torch.tensor([[0.6], [1.0], [0.5], [0.7]])
    targets[1] = True  # row 1 is text: every token a target
    batch = without_loss(ids, targets)
    params = [p for p in tiny_llama.parameters() if p.requires_grad]
    loss, _ = _lm_loss_fn(tiny_llama, "rows", repeat_weight=3.0)(batch)
    got = torch.autograd.grad(loss, params)

    double = copy.deepcopy(tiny_llama).double()
    logits = double(ids).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    mask = targets[:, 1:]
    rows = []
    for r in range(4):
        weights = [3.0 if r != 1 and t > 0 and mask[r, t] and mask[r, t - 1] and ids[r, t + 1] == ids[r, t] else 1.0
                   for t in range(23)]
        rows.append((nll[r] * torch.tensor(weights, dtype=torch.float64) * mask[r]).sum() / mask[r].sum())
    expected = torch.stack(rows).mean()
    want = torch.autograd.grad(expected, [p for p in double.parameters() if p.requires_grad])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-7)
    plain, _ = _lm_loss_fn(tiny_llama, "rows")(batch)
    assert loss.item() > plain.item() + 1e-3  # repeats were weighed
    text = batch[1:2]
    assert _lm_loss_fn(tiny_llama, "rows", repeat_weight=3.0)(text)[0].item() == pytest.approx(
        _lm_loss_fn(tiny_llama, "rows")(text)[0].item(), rel=1e-6)


def test_answer_repeat_weight_is_a_setting_of_the_run(tmp_path, teacher_dir, data_file, capsys):
    """``--answer-repeat-weight`` reaches run.json; it needs ``--loss-average rows`` and a weight > 0, each
    refused in one line."""
    from lizardlm.cli import main as cli_main
    from lizardlm.train import TrainSettings

    out = tmp_path / "run"
    argv = ["linearize", "--teacher", str(teacher_dir), "--data", str(data_file), "--out", str(out), "--seq-len", "32",
            "--batch-size", "4", "--stage1-tokens", "128", "--stage2-tokens", "256", "--val-tokens", "128",
            "--device", "cpu", "--feature-dim", "8", "--window-size", "8", "--answer-repeat-weight", "4"]
    assert cli_main(argv) != 0
    assert "answer-repeat-weight weighs targets within a row's mean: it needs --loss-average rows" in capsys.readouterr().err
    assert not out.exists()
    assert cli_main([*argv, "--loss-average", "rows"]) == 0
    assert json.loads((out / "run.json").read_text())["settings"]["answer_repeat_weight"] == 4.0
    with pytest.raises(ValueError, match="answer-repeat-weight must be a finite number > 0"):
        TrainSettings(loss_average="rows", answer_repeat_weight=0)
