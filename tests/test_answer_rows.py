"""``--answer-rows lizard``: the rows with input-only tokens train the Lizard parameters and not the LoRA
adapter (float64 against the loss written out), and a run trained on answer rows alone leaves its
adapter where it started."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lizardlm
from lizardlm.data.packing import without_loss
from lizardlm.train.activations import checkpoint_decoder_layers
from lizardlm.train.answer_rows import AdapterRowGate, _RowGatedLinear, answer_rows
from lizardlm.train.linearize import _lm_loss_fn
from lizardlm.train.settings import TrainSettings


def _peft_student(tiny_llama):
    from peft import LoraConfig, get_peft_model

    student = lizardlm.convert(tiny_llama, lizardlm.LizardConfig(window_size=4, feature_dim=8, num_meta_tokens=2,
                                                                 chunk_size=4)).double()
    model = get_peft_model(student, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                                               init_lora_weights=False))
    for name, p in model.named_parameters():
        if "feature_map" in name or "gate" in name:
            p.requires_grad_(True)
    return model.train()


def _batch(vocab: int, seed: int) -> torch.Tensor:
    """Four rows of 14 tokens: 0 and 2 carry loss everywhere (text), 1 and 3 on a few answers."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (4, 14), generator=gen)
    targets = torch.ones_like(ids, dtype=torch.bool)
    for r in (1, 3):
        targets[r] = False
        start = int(torch.randint(5, 10, (1,), generator=gen))
        targets[r, start:start + 3] = True
    return without_loss(ids, targets)


def _rows_nll(model, batch: torch.Tensor) -> torch.Tensor:
    """Each row's mean next-token NLL over its own targets, from the whole float64 logits."""
    ids = torch.where(batch < 0, -batch - 1, batch)
    nll = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[:, :-1].transpose(1, 2), ids[:, 1:],
                                            reduction="none")
    carried = (batch[:, 1:] >= 0).double()
    return (nll * carried).sum(1) / carried.sum(1)


def _grads(model, loss: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names], retain_graph=True)))


def test_answer_rows_are_the_rows_with_input_only_tokens():
    batch = _batch(50, seed=0)
    assert answer_rows(batch).tolist() == [False, True, False, True]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("variant", ["whole", "chunked", "recomputed", "keep q_proj"])
def test_answer_rows_train_the_lizard_parameters_alone(tiny_llama, seed, variant):
    """Same loss; the adapter's gradient is that of the text rows' share of the loss (the answer rows
    still count in the mean), every Lizard parameter's that of the whole loss. ``recomputed``: activation
    checkpointing runs the forward again in the backward, with the same rows constant. ``keep q_proj``:
    the LoRA of q_proj trains on every row, as the Lizard parameters do."""
    keep = ("q_proj",) if variant == "keep q_proj" else ()
    model = _peft_student(tiny_llama)
    if variant == "recomputed":
        checkpoint_decoder_layers(model)
    batch = _batch(tiny_llama.config.vocab_size, seed)
    lora = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n and not
            any(f".{k}." in n for k in keep)]
    lizard = [n for n, p in model.named_parameters() if p.requires_grad and n not in lora]
    assert len(lora) == (8 if keep else 12) and lizard and all("lora_" not in n for n in lizard) != bool(keep)

    rows = _rows_nll(model, batch)
    text = ~answer_rows(batch)
    want_lora = _grads(model, (rows * text).sum() / len(rows), lora)
    want_lizard = _grads(model, rows.mean(), lizard)

    with AdapterRowGate(model, keep) as gate:
        loss, _ = _lm_loss_fn(model, "rows", chunk=5 if variant == "chunked" else 0, gate=gate)(batch)
        got = _grads(model, loss, lora + lizard)
    torch.testing.assert_close(loss, rows.mean(), rtol=1e-12, atol=1e-12)
    for name in lora:
        torch.testing.assert_close(got[name], want_lora[name], rtol=1e-10, atol=1e-12)
    for name in lizard:
        torch.testing.assert_close(got[name], want_lizard[name], rtol=1e-10, atol=1e-12)
    assert any((want_lora[n] - _grads(model, rows.mean(), [n])[n]).abs().max() > 1e-6 for n in lora)

    loss, _ = _lm_loss_fn(model, "rows")(batch)  # the gate left: every row trains the adapter again
    after = _grads(model, loss, lora)
    whole = _grads(model, rows.mean(), lora)
    for name in lora:
        torch.testing.assert_close(after[name], whole[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 5, 16, 4), (3, 5, 4, 16)])  # lora_A (wide in, rank out) and lora_B
def test_the_gated_linear_under_autocast(shape):
    """In bf16 autocast (as on the GPU) the gated product keeps autocast's dtypes: the output in bf16,
    each gradient in its tensor's float32, the weight's from the rows not frozen alone."""
    rows, length, d_in, d_out = shape
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(rows, length, d_in, generator=gen, requires_grad=True)
    weight = torch.randn(d_out, d_in, generator=gen, requires_grad=True)
    dy = torch.randn(rows, length, d_out, generator=gen)
    frozen = torch.tensor([False, True, False])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _RowGatedLinear.apply(x, weight, frozen)
        want = torch.nn.functional.linear(x, weight)
    assert y.dtype == torch.bfloat16 and torch.equal(y, want)
    dx, dw = torch.autograd.grad(y, [x, weight], dy)
    want_dx, = torch.autograd.grad(want, [x], dy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept = torch.nn.functional.linear(x[~frozen], weight)
    want_dw, = torch.autograd.grad(kept, [weight], dy[~frozen])
    assert dx.dtype == dw.dtype == torch.float32
    torch.testing.assert_close(dx, want_dx, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(dw, want_dw, rtol=1e-2, atol=1e-2)


def test_answer_rows_settings():
    for wrong in ("adapter", "lizard:up_proj", "lizard:q_proj,", "lizard,q_proj"):
        with pytest.raises(ValueError, match="answer-rows must be all, lizard or lizard:TARGET"):
            TrainSettings(answer_rows=wrong, stage2_train_lizard=True)
    with pytest.raises(ValueError, match="needs --stage2-train-lizard"):
        TrainSettings(answer_rows="lizard")
    with pytest.raises(ValueError, match="needs --stage2-train-lizard"):
        TrainSettings(answer_rows="lizard", stage2_train_lizard=True, baseline="teacher-lora")
    with pytest.raises(ValueError, match="keeps every LoRA target training on the answer rows: that is answer-rows all"):
        TrainSettings(answer_rows="lizard:q_proj,k_proj", lora_targets=["q_proj", "k_proj"], stage2_train_lizard=True)
    assert TrainSettings(answer_rows="lizard", stage2_train_lizard=True).answer_rows_lora == []
    assert TrainSettings(answer_rows="lizard:q_proj,k_proj", stage2_train_lizard=True).answer_rows_lora == ["q_proj", "k_proj"]
    assert TrainSettings().answer_rows_lora is None


def test_a_gate_with_no_lora_layer_left_to_hold_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="needs a LoRA adapter"):
        AdapterRowGate(tiny_llama)
    model = _peft_student(tiny_llama)
    with pytest.raises(ValueError, match="needs a LoRA adapter beside the targets it keeps training"):
        AdapterRowGate(model, keep=("q_proj", "v_proj", "o_proj"))


@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed")
def test_a_gate_on_lora_layers_with_a_bias_is_refused(tiny_llama):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama, LoraConfig(r=4, target_modules=["q_proj"], lora_bias=True))
    with pytest.raises(ValueError, match="needs LoRA layers without a bias"):
        AdapterRowGate(model)


def test_a_run_on_answer_rows_alone_keeps_its_adapter_where_it_started(books, teacher_dir, tmp_path, capsys):
    """Retrieval documents with the answers-only loss and ``--answer-rows lizard``: stage 2 moves the
    Lizard parameters, and LoRA's B, which starts at zero, stays exactly zero (no gradient reaches it);
    with ``all`` it moves. The setting is recorded in run.json."""
    from lizardlm.cli import main as cli_main

    spec = f"retrieval:count=6:length=128:seed=1:keys=1:key-tokens=3:loss=answers:filler={books}"
    adapters, lizards = {}, {}
    for rows in ("lizard", "all"):
        out = tmp_path / rows
        argv = ["linearize", "--teacher", str(teacher_dir), "--data", spec, "--out", str(out), "--seq-len", "128",
                "--batch-size", "2", "--stage1-tokens", "256", "--stage2-tokens", "512", "--val-tokens", "256",
                "--device", "cpu", "--feature-dim", "8", "--window-size", "8", "--stage2-train-lizard",
                "--answer-rows", rows]
        assert cli_main(argv) == 0, capsys.readouterr().err
        assert json.loads((out / "run.json").read_text())["settings"]["answer_rows"] == rows
        adapters[rows] = load_file(out / "adapter" / "adapter_model.safetensors")
        lizards[rows] = load_file(out / "lizard.safetensors")
    b = {k: v for k, v in adapters["lizard"].items() if "lora_B" in k}
    assert b and all(v.abs().max() == 0 for v in b.values())
    assert any(adapters["all"][k].abs().max() > 0 for k in b)
    assert any(not torch.equal(lizards["lizard"][k], lizards["all"][k]) for k in lizards["all"])
