"""Stage 2's loss with the LM head taken a chunk of positions at a time (``--loss-chunk``): the same
loss and gradients as the whole logits, in float64, for both averages and a PEFT-wrapped Lizard model."""

from __future__ import annotations

import json

import pytest
import torch

import lizardlm
from lizardlm.data.packing import without_loss
from lizardlm.train.linearize import _lm_loss_fn
from lizardlm.train.settings import TrainSettings


def _batch(vocab: int, seed: int) -> torch.Tensor:
    """Three rows of 13 tokens: one carries loss everywhere, one on a few answer tokens, one nowhere."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 13), generator=gen)
    targets = torch.ones_like(ids, dtype=torch.bool)
    targets[1] = False
    targets[1, 9:12] = True
    targets[2] = False
    return without_loss(ids, targets)


def _loss_and_grads(model, loss_fn, batch):
    model.zero_grad(set_to_none=True)
    loss, _ = loss_fn(batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def _reference(model, average: str):
    """Stage 2's loss from the whole float64 logits, written out."""

    def loss_fn(batch):
        ids = torch.where(batch < 0, -batch - 1, batch)
        nll = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[:, :-1].transpose(1, 2), ids[:, 1:],
                                                reduction="none")
        carried = (batch[:, 1:] >= 0).double()
        if average == "tokens":
            return (nll * carried).sum() / carried.sum(), {}
        rows = carried.sum(1) > 0
        return ((nll * carried).sum(1)[rows] / carried.sum(1)[rows]).mean(), {}

    return loss_fn


@pytest.mark.parametrize("average", ["tokens", "rows"])
@pytest.mark.parametrize("chunk", [1, 5, 12, 64])
def test_chunked_loss_and_gradients_equal_the_whole_logits(tiny_llama, average, chunk):
    model = tiny_llama.double().train()
    batch = _batch(model.config.vocab_size, seed=chunk)
    want, want_grads = _loss_and_grads(model, _reference(model, average), batch)
    loss, grads = _loss_and_grads(model, _lm_loss_fn(model, average, chunk=chunk), batch)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_chunked_loss_reaches_the_lora_and_lizard_parameters_of_a_peft_model(tiny_llama):
    from peft import LoraConfig, get_peft_model

    student = lizardlm.convert(tiny_llama, lizardlm.LizardConfig(window_size=4, feature_dim=8, num_meta_tokens=2,
                                                                 chunk_size=4)).double()
    model = get_peft_model(student, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    for name, p in model.named_parameters():
        if "feature_map" in name:
            p.requires_grad_(True)
    batch = _batch(tiny_llama.config.vocab_size, seed=3)
    want, want_grads = _loss_and_grads(model, _reference(model, "rows"), batch)
    loss, grads = _loss_and_grads(model, _lm_loss_fn(model, "rows", chunk=4), batch)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    assert len(grads) > 4 and all(g.abs().sum() > 0 for g in grads)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_loss_chunk_settings(tmp_path, teacher_dir, data_file):
    with pytest.raises(ValueError, match="loss-chunk must be >= 0"):
        TrainSettings(loss_chunk=-1)
    with pytest.raises(ValueError, match="fsdp"):
        TrainSettings(loss_chunk=64, fsdp=True)
    from lizardlm.train import linearize

    base = dict(teacher=str(teacher_dir), data=str(data_file), seq_len=32, batch_size=2, stage1_tokens=32 * 2 * 2,
                stage2_tokens=32 * 2 * 3, val_tokens=64, device="cpu", lizard={"window_size": 8, "feature_dim": 8,
                                                                                 "num_meta_tokens": 2})
    runs = {}
    for chunk in (0, 8):
        out = tmp_path / f"chunk{chunk}"
        linearize(TrainSettings(**base, loss_chunk=chunk), out)
        runs[chunk] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert runs[8] == pytest.approx(runs[0], rel=1e-5)
    linearize(TrainSettings(**base, loss_chunk=0), tmp_path / "chunk8", resume=True)  # how it runs, not what: resumable
