"""The CUDA-graphed training step against the eager one, on the device. Skipped without CUDA.

In float32: under bf16 autocast the eager steps themselves are not reproducible on a GPU that other
processes share (measured on the H200 with two other processes: the first step's stage-1 loss of the
tiny model moved by up to 7% between identical eager runs, the graphed runs not at all), because a
bf16 rounding flip moves the tiny model's small transfer loss a lot; float32 makes the comparison
well-conditioned."""

from __future__ import annotations

import contextlib
import json
import sys

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

import lizardlm  # noqa: E402
from lizardlm.train.linearize import _lm_loss_fn, _transfer_loss_fn, linearize  # noqa: E402
from lizardlm.train.loop import warmup_cosine  # noqa: E402
from lizardlm.train.settings import TrainSettings  # noqa: E402
from lizardlm.train.step import EagerStep, GraphedStep, adamw  # noqa: E402

LIZARD = {"window_size": 16, "feature_dim": 16, "num_meta_tokens": 2, "mode": "lizard"}


def _losses(kind, loss_fn, params, batches, backward):
    optimizer = adamw(params, lr=3e-3, graphed=kind is GraphedStep)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(len(batches), 0.25))
    step = kind(loss_fn, params, optimizer, backward=backward, autocast=contextlib.nullcontext)
    losses = []
    for batch in batches:
        losses.append(step.forward_backward(batch))
        step.update()
        scheduler.step()
    step.close()
    return losses, [p.detach().clone() for p in params]


def _eager_then_graphed(loss_fn, params, batches, backward, reset=lambda: None):
    """``_losses`` of eager and graphed steps, each from the same starting weights (and ``reset()``: the
    loss's own state, if it keeps one)."""
    start = [p.detach().clone() for p in params]
    results = []
    for kind in (EagerStep, GraphedStep):
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
        reset()
        results.append(_losses(kind, loss_fn, params, batches, backward))
    return results


@pytest.mark.parametrize("mode", ["lizard", "paper"])
def test_graphed_stage_steps_match_eager_steps(tiny_llama, mode):
    from peft import LoraConfig, get_peft_model

    model = lizardlm.convert(tiny_llama, lizardlm.LizardConfig(**{**LIZARD, "mode": mode})).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    two = [torch.randint(0, model.config.vocab_size, (4, 128), generator=gen, device="cuda") for _ in range(2)]
    batches = two * 3  # new data at every replay, and a batch seen again to tell that training helps
    model.requires_grad_(False).train()
    params = list(model.lizard_parameters())
    for p in params:
        p.requires_grad_(True)
    (eager, eager_params), (graphed, graphed_params) = _eager_then_graphed(_transfer_loss_fn(model), params, batches,
                                                                           backward=False)
    assert [b for b, _ in graphed] == pytest.approx([a for a, _ in eager], rel=1e-4)
    assert [e["mse_mean"] for _, e in graphed] == pytest.approx([e["mse_mean"] for _, e in eager], rel=1e-4)
    assert eager[4][0] < eager[0][0]  # it trains
    for a, b in zip(eager_params, graphed_params):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)

    model.requires_grad_(False)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    lora = [p for p in peft_model.parameters() if p.requires_grad]
    (eager, _), (graphed, _) = _eager_then_graphed(_lm_loss_fn(peft_model), lora, batches, backward=True)
    assert [b for b, _ in graphed] == pytest.approx([a for a, _ in eager], rel=1e-4)


@pytest.mark.parametrize("mode", ["lizard", "paper"])
def test_graphed_steps_with_state_passing_match_eager_steps(tiny_llama, mode):
    """Stage 2 with every row starting from the previous batch's memories (p = 1: no random draw, so
    the two runs see the same memories): the graph replays the memory hand-over (fixed buffers), and
    its warm-up steps leave no memory behind."""
    from peft import LoraConfig, get_peft_model

    from lizardlm.train.state_passing import StatePassing

    model = lizardlm.convert(tiny_llama, lizardlm.LizardConfig(**{**LIZARD, "mode": mode})).cuda()
    gen = torch.Generator(device="cuda").manual_seed(1)
    batches = [torch.randint(0, model.config.vocab_size, (4, 128), generator=gen, device="cuda") for _ in range(5)]
    model.requires_grad_(False).train()
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    lora = [p for p in peft_model.parameters() if p.requires_grad]
    with StatePassing(peft_model, 1.0) as passing:
        (eager, _), (graphed, _) = _eager_then_graphed(_lm_loss_fn(peft_model, "rows", passing), lora, batches,
                                                       backward=True, reset=lambda: setattr(passing, "memories", None))
    assert [b for b, _ in graphed] == pytest.approx([a for a, _ in eager], rel=1e-4)


def test_graphed_steps_with_the_answer_rows_gate_match_eager_steps(tiny_llama):
    """``--answer-rows lizard``: the gate's row mask is a device tensor that the graph records once. Replayed,
    the steps match the eager ones, and on batches of answer rows alone LoRA's B (zero at the start) gets no
    gradient and stays exactly zero while the Lizard parameters move."""
    from peft import LoraConfig, get_peft_model

    from lizardlm.data.packing import without_loss
    from lizardlm.train.answer_rows import AdapterRowGate

    model = lizardlm.convert(tiny_llama, lizardlm.LizardConfig(**LIZARD)).cuda()
    gen = torch.Generator(device="cuda").manual_seed(2)
    ids = [torch.randint(0, model.config.vocab_size, (4, 128), generator=gen, device="cuda") for _ in range(5)]
    answers = torch.zeros(4, 128, dtype=torch.bool, device="cuda")
    answers[:, 100:108] = True
    mixed = answers.clone()
    mixed[::2] = True  # rows 0 and 2 are text, 1 and 3 answer rows
    model.requires_grad_(False).train()
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    lizard = list(model.lizard_parameters())
    for p in lizard:
        p.requires_grad_(True)
    names, params = zip(*[(n, p) for n, p in peft_model.named_parameters() if p.requires_grad])
    start = [p.detach().clone() for p in params]
    for targets, b_moves in ((mixed, True), (answers, False)):
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
        batches = [without_loss(i, targets) for i in ids]
        with AdapterRowGate(peft_model) as gate:
            (eager, eager_params), (graphed, graphed_params) = _eager_then_graphed(
                _lm_loss_fn(peft_model, "rows", gate=gate), list(params), batches, backward=True)
        assert [b for b, _ in graphed] == pytest.approx([a for a, _ in eager], rel=1e-4)
        for a, b in zip(eager_params, graphed_params):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
        moved = {n: not torch.equal(p, p0) for n, p, p0 in zip(names, graphed_params, start)}
        assert any(moved[n] for n in names if "lora_B" in n) == b_moves
        assert any(moved[n] for n in names if "lora_" not in n)


@pytest.fixture
def float32_linearize(monkeypatch):
    """``linearize`` without bf16 autocast on CUDA (module docstring)."""
    from accelerate import Accelerator

    monkeypatch.setattr(sys.modules["lizardlm.train.linearize"], "Accelerator",
                        lambda **kw: Accelerator(**{**kw, "mixed_precision": "no"}))


def test_linearize_with_cuda_graphs_logs_the_eager_losses(tmp_path, teacher_dir, data_file, float32_linearize):
    base = dict(teacher=str(teacher_dir), data=str(data_file), seq_len=64, batch_size=4, stage1_tokens=64 * 4 * 8,
                stage2_tokens=64 * 4 * 6, val_tokens=64 * 8, stage1_lr=2e-2, stage2_lr=3e-3, checkpoint_every=3,
                device="cuda", lizard=LIZARD)
    runs = {}
    for graphs in (False, True):
        out = tmp_path / f"graphs-{graphs}"
        linearize(TrainSettings(**base, cuda_graphs=graphs), out)
        runs[graphs] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert (out / "adapter" / "adapter_model.safetensors").exists()
    eager, graphed = runs[False], runs[True]
    assert [(e["stage"], e["step"]) for e in graphed] == [(e["stage"], e["step"]) for e in eager]
    assert [g["loss"] for g in graphed] == pytest.approx([e["loss"] for e in eager], rel=1e-4)
    assert [g["lr"] for g in graphed] == pytest.approx([e["lr"] for e in eager])


def test_graphed_steps_with_a_chunked_loss_log_the_whole_loss_eager_losses(tmp_path, teacher_dir, data_file,
                                                                           float32_linearize):
    """``--loss-chunk``: the LM head's chunks recomputed in the backward inside a recorded step give the
    eager whole-logits run's losses (rows average, 16-position chunks of 64-token rows)."""
    base = dict(teacher=str(teacher_dir), data=str(data_file), seq_len=64, batch_size=4, stage1_tokens=64 * 4 * 4,
                stage2_tokens=64 * 4 * 6, val_tokens=64 * 8, stage2_lr=3e-3, checkpoint_every=3, device="cuda",
                lizard=LIZARD, loss_average="rows")
    losses = {}
    for name, graphs, chunk in (("whole-eager", False, 0), ("chunked-graphed", True, 16)):
        out = tmp_path / name
        linearize(TrainSettings(**base, cuda_graphs=graphs, loss_chunk=chunk), out)
        losses[name] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses["chunked-graphed"] == pytest.approx(losses["whole-eager"], rel=1e-4)


def test_graphed_lanes_reset_at_documents_log_the_eager_losses(tmp_path, teacher_dir, books, float32_linearize):
    """Contiguous rows of documents two rows long at P = 1 with ``reset_at_documents``: the graph reads
    which rows may pass from a buffer the host fills before each replay, so its losses are the eager ones."""
    base = dict(teacher=str(teacher_dir), data=f"retrieval:count=40:length=512:seed=1:filler={books}", seq_len=256,
                batch_size=2, stage1_tokens=256 * 2 * 2, stage2_tokens=256 * 2 * 8, val_tokens=256 * 2,
                checkpoint_every=20, device="cuda", lizard=LIZARD, state_passing=1.0, row_order="contiguous",
                reset_at_documents=True)
    losses = {}
    for graphs in (False, True):
        out = tmp_path / f"graphs-{graphs}"
        linearize(TrainSettings(**base, cuda_graphs=graphs), out)
        losses[graphs] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_graphed_run_stopped_mid_stage_resumes_like_an_uninterrupted_one(tmp_path, teacher_dir, data_file,
                                                                          float32_linearize, monkeypatch):
    """Ctrl-C after a replayed stage-2 step checkpoints it; ``--resume`` records a new graph from the
    loaded weights and AdamW state (its step counts and tensor learning rates) and ends where an
    uninterrupted graphed run ends."""
    import signal

    from lizardlm.errors import TrainingStopped

    settings = TrainSettings(teacher=str(teacher_dir), data=str(data_file), seq_len=64, batch_size=4,
                             stage1_tokens=64 * 4 * 6, stage2_tokens=64 * 4 * 8, val_tokens=64 * 8, stage1_lr=2e-2,
                             stage2_lr=3e-3, checkpoint_every=100, device="cuda", lizard=LIZARD, cuda_graphs=True)
    linearize(settings, tmp_path / "whole")
    whole = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]

    replays = {"n": 0}
    real = GraphedStep.forward_backward

    def ctrl_c_at_stage2_step_3(self, batch):
        out = real(self, batch)
        replays["n"] += 1
        if replays["n"] == 6 + 3:  # stage 1's 6 steps, then the third of stage 2
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(GraphedStep, "forward_backward", ctrl_c_at_stage2_step_3)
    with pytest.raises(TrainingStopped):
        linearize(settings, tmp_path / "cut")
    monkeypatch.setattr(GraphedStep, "forward_backward", real)
    linearize(settings, tmp_path / "cut", resume=True)
    cut = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [(e["stage"], e["step"]) for e in cut] == [(e["stage"], e["step"]) for e in whole]
    assert [e["loss"] for e in cut] == pytest.approx([e["loss"] for e in whole], rel=1e-4)
    assert [e["lr"] for e in cut] == pytest.approx([e["lr"] for e in whole])


def test_recording_out_of_memory_runs_on_eagerly_with_the_eager_losses(tmp_path, teacher_dir, data_file,
                                                                      float32_linearize, monkeypatch, capsys):
    """Recording that runs out of memory (after its warm-up updated the weights) puts the weights back
    and the run goes on with eager steps of the capturable optimizer: an eager run's losses."""
    base = dict(teacher=str(teacher_dir), data=str(data_file), seq_len=64, batch_size=4, stage1_tokens=64 * 4 * 6,
                stage2_tokens=64 * 4 * 4, val_tokens=64 * 8, stage1_lr=2e-2, stage2_lr=3e-3, checkpoint_every=100,
                device="cuda", lizard=LIZARD)
    linearize(TrainSettings(**base, cuda_graphs=False), tmp_path / "eager")

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(torch.cuda, "graph", no_memory)
    linearize(TrainSettings(**base, cuda_graphs=True), tmp_path / "fallback")
    assert capsys.readouterr().err.count("going on with eager steps") == 2  # once a stage
    eager, fallback = ([json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                       for run in ("eager", "fallback"))
    assert [(e["stage"], e["step"]) for e in fallback] == [(e["stage"], e["step"]) for e in eager]
    assert [e["loss"] for e in fallback] == pytest.approx([e["loss"] for e in eager], rel=1e-4)
