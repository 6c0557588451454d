"""The training step's CPU-checkable parts: the warm-up undo of the CUDA-graphed step, the stage-2 loss
without a host branch, checkpoints of tensor learning rates and the refused combinations. The graph
itself runs in ``tests/gpu/test_graphed_step.py``."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

from lizardlm.data.packing import IGNORE_INDEX, without_loss
from lizardlm.train.checkpoint import optimizer_state, plain, restore_optimizer
from lizardlm.train.linearize import _lm_loss_fn
from lizardlm.train.settings import TrainSettings
from lizardlm.train.step import EagerStep, GraphedStep, snapshot


def _adamw_steps(params, optimizer, grads):
    for g in grads:
        for p, gp in zip(params, g):
            p.grad = gp.clone()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("steps_before", [0, 2])
def test_snapshot_puts_weights_and_adamw_state_back_exactly(steps_before):
    gen = torch.Generator().manual_seed(steps_before)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=gen, dtype=torch.float64)),
              torch.nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64))]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params] for _ in range(6)]
    optimizer = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.99))
    ref_optimizer = torch.optim.AdamW(reference, lr=1e-2, betas=(0.9, 0.99))
    _adamw_steps(params, optimizer, grads[:steps_before])
    _adamw_steps(reference, ref_optimizer, grads[:steps_before])

    restore = snapshot(params, optimizer)
    _adamw_steps(params, optimizer, grads[3:6])  # the warm-up: other gradients, state made if there was none
    assert not torch.equal(params[0], reference[0])
    restore()
    _adamw_steps(params, optimizer, grads[2:4])
    _adamw_steps(reference, ref_optimizer, grads[2:4])
    for p, r in zip(params, reference):
        assert torch.equal(p, r)


def test_lm_loss_is_the_mean_over_carried_tokens_and_zero_without_any(tiny_llama):
    model = tiny_llama.double()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=gen)
    batch = ids.clone()
    batch[0, :5] = without_loss(ids[0, :5], torch.zeros(5, dtype=torch.bool))  # a prompt that carries no loss
    loss, _ = _lm_loss_fn(model)(batch)
    logits = model(input_ids=ids).logits[:, :-1].double()
    targets = ids[:, 1:].clone()
    targets[0, :4] = IGNORE_INDEX  # tokens 1..4 are input-only
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-7)  # HF takes the loss in float32

    silent, _ = _lm_loss_fn(model)(without_loss(ids, torch.zeros_like(ids, dtype=torch.bool)))
    assert silent.item() == 0.0 and silent.requires_grad
    silent.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_checkpoint_of_tensor_learning_rates_is_plain_json():
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = torch.optim.AdamW(params, lr=torch.tensor(3e-4))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5)
    params[0].grad = torch.ones(3)
    optimizer.step()
    scheduler.step()
    tensors, meta = optimizer_state(optimizer)
    json.dumps(meta), json.dumps(plain(scheduler.state_dict()))  # no tensor left in either
    assert meta["param_groups"][0]["lr"] == pytest.approx(1.5e-4)
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1.0)
    restore_optimizer(fresh, tensors, meta)
    assert fresh.param_groups[0]["lr"] == pytest.approx(1.5e-4)
    assert plain({"a": [torch.tensor(2.0), (torch.tensor(1),)], "b": "x"}) == {"a": [2.0, (1,)], "b": "x"}


def test_cuda_graphs_are_refused_where_they_cannot_run():
    for bad in (dict(device="cpu"), dict(fsdp=True), dict(gradient_checkpointing=True)):
        with pytest.raises(ValueError, match="cuda-graphs"):
            TrainSettings(cuda_graphs=True, **bad)
    assert TrainSettings(cuda_graphs=True, device="cuda").cuda_graphs
    params = [torch.nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="capturable"):
        GraphedStep(lambda b: (b.sum(), {}), params, torch.optim.AdamW(params), backward=True, autocast=torch.no_grad)


def test_cuda_graphs_auto_turns_on_only_where_they_can_run():
    from lizardlm.cli import build_parser
    from lizardlm.train.settings import settings_from_preset

    for preset in ("gpu", "paper"):
        settings = settings_from_preset(preset, device="cpu")  # "auto" is never refused
        assert settings.cuda_graphs == "auto"
        assert settings.use_cuda_graphs("cuda", 1) and not settings.use_cuda_graphs("cpu", 1)
        assert not settings.use_cuda_graphs("cuda", 2)
        assert not settings_from_preset(preset, gradient_checkpointing=True).use_cuda_graphs("cuda", 1)
        assert not settings_from_preset(preset, cuda_graphs=False).use_cuda_graphs("cuda", 1)
    assert not TrainSettings().use_cuda_graphs("cuda", 1)  # off unless asked for, outside the GPU presets
    assert TrainSettings(cuda_graphs=True).use_cuda_graphs("cuda", 1)
    with pytest.raises(ValueError, match="cuda-graphs must be"):
        TrainSettings(cuda_graphs="yes")
    parse = build_parser().parse_args
    assert parse(["linearize", "--out", "r", "--no-cuda-graphs"]).cuda_graphs is False
    assert parse(["linearize", "--out", "r", "--cuda-graphs"]).cuda_graphs is True
    assert parse(["linearize", "--out", "r"]).cuda_graphs is None  # the preset decides


def test_eager_step_reads_tensor_metrics_as_floats():
    params = [torch.nn.Parameter(torch.tensor([1.0, 2.0]))]

    def loss_fn(batch):
        loss = (params[0] * batch).sum()
        return loss, {"double": 2 * loss.detach()}

    step = EagerStep(loss_fn, params, torch.optim.AdamW(params, lr=0.1), backward=True,
                     autocast=lambda: torch.autocast("cpu", enabled=False))
    loss, extra = step.forward_backward(torch.tensor([1.0, 1.0]))
    assert loss == 3.0 and extra == {"double": 6.0} and isinstance(extra["double"], float)
    step.update()
    assert params[0].grad is None and not torch.equal(params[0].detach(), torch.tensor([1.0, 2.0]))


def test_a_step_that_cannot_be_recorded_says_what_to_do(capsys):
    from lizardlm.cli import main as cli_main
    from lizardlm.errors import LizardError

    params = [torch.nn.Parameter(torch.ones(2))]
    step = GraphedStep(lambda b: ((params[0] * b).sum(), {}), params, torch.optim.AdamW(params, capturable=True),
                       backward=True, autocast=torch.no_grad)
    with pytest.raises(LizardError, match="recording the training step failed .*rerun with --no-cuda-graphs"):
        step.forward_backward(torch.ones(2))  # here: no CUDA at all
    assert cli_main(["linearize", "--cuda-graphs", "--device", "cpu", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda-graphs needs a CUDA device" in err[0]

def test_recording_out_of_memory_goes_on_eagerly_from_the_same_state(monkeypatch, capsys):
    """Recording runs out of GPU memory (another process holds it) in the warm-up, after that warm-up
    changed the parameters: they are put back, one line says so, and the steps go on eagerly with
    exactly an eager step's numbers. The CPU stands in for the device (fake streams; its AdamW
    cannot be capturable, so the flag is dropped once the step exists)."""
    class FakeStream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    start = torch.randn(3, dtype=torch.float64)
    batch = torch.randn(3, dtype=torch.float64)

    def make(kind, fail_calls):
        params = [torch.nn.Parameter(start.clone())]
        calls = []

        def loss_fn(b):
            calls.append(1)
            if len(calls) in fail_calls:
                with torch.no_grad():
                    params[0].add_(5.0)  # a half-done warm-up step that must not count
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")
            return ((params[0] * b) ** 2).sum(), {"norm": params[0].detach().norm()}

        optimizer = torch.optim.AdamW(params, lr=torch.tensor(0.125), capturable=kind is GraphedStep)  # float32, as recording holds it
        step = kind(loss_fn, params, optimizer, backward=True, autocast=contextlib.nullcontext)
        for group in optimizer.param_groups:
            group["capturable"] = False
        return step, params

    eager, eager_params = make(EagerStep, ())
    graphed, graphed_params = make(GraphedStep, (1,))
    for _ in range(3):
        want = eager.forward_backward(batch)
        eager.update()
        got = graphed.forward_backward(batch)
        graphed.update()
        assert got[0] == pytest.approx(want[0], rel=1e-12) and got[1]["norm"] == pytest.approx(want[1]["norm"], rel=1e-12)
        torch.testing.assert_close(graphed_params[0].detach(), eager_params[0].detach(), rtol=1e-12, atol=0)
    assert graphed.eager and graphed.graph is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ran out of GPU memory (CUDA out of memory. Tried to allocate 3.00 GiB)" in err[0]
    assert "going on with eager steps" in err[0]

