"""Stage 2's state passing (lizardlm.train.state_passing) on a tiny converted Llama, on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from transformers import AutoTokenizer

import lizardlm
from lizardlm.data import build_splits
from lizardlm.cache import CACHE_KWARG, LizardCache
from lizardlm.config import LizardConfig
from lizardlm.errors import DataError
from lizardlm.ops import linear_state
from lizardlm.train import TrainSettings, linearize
from lizardlm.train.loop import batch_at
from lizardlm.cli import build_parser
from lizardlm.train.state_passing import StatePassing, slot_probabilities

LIZARD = {"window_size": 8, "feature_dim": 8, "num_meta_tokens": 2, "chunk_size": 8}


@pytest.fixture(params=["lizard", "paper"])
def student(request, tiny_llama):
    config = LizardConfig(mode=request.param, window_size=8, feature_dim=8, chunk_size=8)
    return lizardlm.convert(tiny_llama, config).eval()


def _rows(seed: int, rows: int = 3, length: int = 29) -> torch.Tensor:
    return torch.randint(0, 500, (rows, length), generator=torch.Generator().manual_seed(seed))


def _forward(passing: StatePassing, model, ids: torch.Tensor, **kw):
    """One training-style forward under state passing: start, forward, keep."""
    passing.start(ids)
    out = model(ids, use_cache=False, **kw)
    passing.keep()
    return out


def _linearize_seeing_memories(kw: dict, out) -> tuple[list[tuple[torch.Tensor, list, list]], dict]:
    """Run ``linearize``; its summary, and at each stage-2 step's start the batch, each Lizard layer's
    starting memory (None: empty) and the memories the previous step left."""
    seen: list[tuple[torch.Tensor, list, list]] = []
    original = StatePassing.start

    def start(self, batch):
        original(self, batch)
        seen.append((batch.clone(), [h.initial for h in self.handoffs], [m.clone() for m in self.memories or []]))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StatePassing, "start", start)
        summary = linearize(TrainSettings(**kw), out)
    return seen, summary


def _logits_from(model, ids: torch.Tensor, memories: list[torch.Tensor] | None) -> tuple[torch.Tensor, list]:
    """Logits of ``ids`` through the cached (prefill) path, each Lizard layer's cache starting from
    ``memories`` (None: empty), and the memories the cache holds after."""
    cache = LizardCache.for_model(model)
    if memories is not None:
        with torch.no_grad():  # the shapes of an empty state, from a throw-away prefill of one token
            probe = LizardCache.for_model(model)
            model(ids[:, :1], **{CACHE_KWARG: probe})
        for layer, probe_layer, memory in zip(cache.layers, probe.layers, memories):
            s = probe_layer.state
            layer.state = linear_state(memory, s.keys.new_empty(s.keys.shape[0], memory.shape[1], 0, 1),
                                       s.keys[:, :, :0], s.values[:, :, :0], s.key_features[:, :, :0])
    with torch.no_grad():
        logits = model(ids, **{CACHE_KWARG: cache}).logits
    return logits, [layer.state.kv_state for layer in cache.layers]


def test_rows_start_from_the_memories_the_previous_rows_left(student):
    """With p = 1: the first batch starts empty and leaves exactly the memories a prefill leaves; the
    next batch's logits are those of a prefill whose cache starts from those memories, and differ
    from an empty start; after the context, forwards start empty again."""
    first, second = _rows(0), _rows(1)
    with torch.no_grad(), StatePassing(student, 1.0) as passing:
        logits_first = _forward(passing, student, first).logits
        expected_first, left = _logits_from(student, first, None)
        torch.testing.assert_close(logits_first, expected_first, rtol=1e-5, atol=1e-5)
        assert len(passing.memories) == 2
        for memory, prefill_memory in zip(passing.memories, left):
            torch.testing.assert_close(memory, prefill_memory, rtol=1e-6, atol=1e-6)
        kept = [m.clone() for m in passing.memories]
        logits_second = _forward(passing, student, second).logits
    expected_second, left_second = _logits_from(student, second, kept)
    torch.testing.assert_close(logits_second, expected_second, rtol=1e-5, atol=1e-5)
    fresh, _ = _logits_from(student, second, None)
    assert (logits_second - fresh).abs().max() > 1e-3  # the memory changes what the rows predict
    for memory, prefill_memory in zip(passing.memories, left_second):
        torch.testing.assert_close(memory, prefill_memory, rtol=1e-6, atol=1e-6)
    assert all(layer.handoff is None for layer in passing.layers)  # evaluation starts empty again
    with torch.no_grad():
        assert torch.equal(student(second, use_cache=False).logits, fresh)


def test_a_row_not_kept_starts_empty_and_gradients_stay_in_the_row(student):
    """Rows drawn out (probability near 0 here) start from an empty memory; the loss backpropagates
    into the model and never into the memories."""
    first, second = _rows(2), _rows(3)
    with StatePassing(student, 1e-9) as passing:
        _forward(passing, student, first)
        logits = _forward(passing, student, second).logits
        fresh, _ = _logits_from(student, second, None)
        torch.testing.assert_close(logits.detach(), fresh, rtol=1e-5, atol=1e-5)
        student.train()
        _forward(passing, student, second, labels=second).loss.backward()
    assert all(not m.requires_grad for m in passing.memories)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_gradient_checkpointing_recomputes_from_the_same_memories(student):
    """Under activation checkpointing the backward recomputes each layer from the memories its
    forward started from: the same gradients as without checkpointing."""
    from lizardlm.train.activations import checkpoint_decoder_layers

    student.train()
    first, second = _rows(6), _rows(7)
    grads = []
    for checkpointed in (False, True):
        if checkpointed:
            checkpoint_decoder_layers(student)
        student.zero_grad(set_to_none=True)
        with StatePassing(student, 1.0) as passing:
            with torch.no_grad():
                _forward(passing, student, first)
            _forward(passing, student, second, labels=second).loss.backward()
        grads.append({n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_snapshot_puts_the_memories_back_and_an_unmade_memory_starts_as_empty(student):
    """What a CUDA-graphed step relies on around its warm-up steps: memories made after a snapshot
    taken before any batch come back as zeros, which start the rows exactly as no memory does; a later
    snapshot restores the values it saw."""
    first, second = _rows(8), _rows(9)
    with torch.no_grad(), StatePassing(student, 1.0) as passing:
        restore = passing.snapshot()
        _forward(passing, student, first)
        restore()
        assert all(not m.any() for m in passing.memories)
        logits = _forward(passing, student, second).logits
        fresh, left = _logits_from(student, second, None)
        assert torch.equal(logits, fresh)
        restore = passing.snapshot()
        _forward(passing, student, first)
        restore()
        for memory, prefill_memory in zip(passing.memories, left):
            torch.testing.assert_close(memory, prefill_memory, rtol=1e-6, atol=1e-6)


def test_another_batch_size_starts_empty(student):
    with torch.no_grad(), StatePassing(student, 1.0) as passing:
        _forward(passing, student, _rows(4, rows=3))
        logits = _forward(passing, student, _rows(5, rows=2)).logits
    fresh, _ = _logits_from(student, _rows(5, rows=2), None)
    torch.testing.assert_close(logits, fresh, rtol=1e-5, atol=1e-5)
    assert passing.memories[0].shape[0] == 2


@pytest.mark.parametrize("bad, match", [
    ({"state_passing": 1.5}, "probability"),
    ({"state_passing": 0.5, "baseline": "teacher-lora"}, "no Lizard layers|has none"),
    ({"row_order": "contiguous"}, "needs --state-passing"),
    ({"row_order": "sorted", "state_passing": 1.0}, "row-order must be one of shuffled, contiguous"),
    ({"state_passing": [0.9, 0.0], "data": "mix:a=1,b=1"}, "needs --row-order contiguous"),
    ({"state_passing": [0.9, 0.0, 0.5], "data": "mix:a=1,b=1", "row_order": "contiguous"},
     r"mixture of 3 parts \(the data has 2\)"),
    ({"state_passing": [0.9, 0.0], "data": "a.txt", "row_order": "contiguous"}, r"\(the data has 1\)"),
    ({"state_passing": [0.9], "data": "a.txt", "row_order": "contiguous"}, r"\(the data has 1\)"),
    ({"state_passing": [0.0, 0.0], "data": "mix:a=1,b=1", "row_order": "contiguous"}, "needs --state-passing"),
    ({"state_passing": [1.5, 0.0], "data": "mix:a=1,b=1", "row_order": "contiguous"}, "probability in"),
    ({"state_passing": 1.0, "reset_at_documents": True}, "reset-at-documents .* needs --row-order contiguous"),
])
def test_settings_refuse_what_state_passing_cannot_do(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainSettings(**bad)


def test_a_run_with_state_passing_trains_and_records_it(tmp_path, teacher_dir, data_file):
    kw = dict(teacher=str(teacher_dir), data=str(data_file), seq_len=32, batch_size=4, stage1_tokens=32 * 4 * 4,
              stage2_tokens=32 * 4 * 6, val_tokens=32 * 8, checkpoint_every=3, device="cpu", lizard=LIZARD,
              state_passing=0.75)
    summary = linearize(TrainSettings(**kw), tmp_path / "run")
    assert summary["student_val_loss"] < summary["stage1_val_loss"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"]["state_passing"] == 0.75
    model = lizardlm.load(tmp_path / "run")
    assert all(layer.handoff is None for layer in model.modules() if hasattr(layer, "handoff"))


def test_contiguous_batches_read_each_lane_on_in_order():
    rows = torch.arange(11).view(11, 1)  # row i holds i: 2 lanes of 5 rows, row 10 unused
    seen = [batch_at(rows, step, 2, seed=0, contiguous=True).flatten().tolist() for step in range(7)]
    assert seen == [[0, 5], [1, 6], [2, 7], [3, 8], [4, 9], [0, 5], [1, 6]]  # wraps to the lane's start
    shuffled = [batch_at(rows, step, 2, seed=0).flatten().tolist() for step in range(5)]
    assert shuffled != seen[:5]
    with pytest.raises(DataError, match="at least batch-size"):
        batch_at(rows[:1], 0, 2, seed=0, contiguous=True)


def test_a_contiguous_run_hands_each_row_the_memory_of_the_text_before_it(tmp_path, teacher_dir, data_file):
    """Each slot of stage 2 reads its lane of the in-order rows, and its memory after step i is what
    the row after started with at step i + 1 (P = 1: every row is kept), unless that row does not
    follow it (the lane's first row again, or a row after a validation row taken out): then empty."""
    kw = dict(teacher=str(teacher_dir), data=str(data_file), seq_len=32, batch_size=2, stage1_tokens=32 * 2 * 2,
              stage2_tokens=32 * 2 * 4, val_tokens=32 * 4, checkpoint_every=10, device="cpu", lizard=LIZARD,
              state_passing=1.0, row_order="contiguous")
    seen, summary = _linearize_seeing_memories(kw, tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["settings"]["row_order"] == "contiguous" and run["data"]["train_in_order"] is True
    lane = run["data"]["train_rows"] // 2
    batches = torch.stack([b for b, _, _ in seen])
    assert len(seen) == 4 and batches.shape[1:] == (2, 32)
    splits = build_splits(str(data_file), AutoTokenizer.from_pretrained(teacher_dir), 32, train_tokens=32 * 2 * 4,
                          val_tokens=32 * 4, in_order=True, lanes=2)
    for step, batch in enumerate(batches):
        assert torch.equal(batch, splits.train[torch.arange(2) * lane + step % lane])
    assert all(initial is None for initial in seen[0][1])  # the first rows start empty
    follows = splits.passes_on(reset_at_documents=False)
    kept = [batch_at(follows, step, 2, seed=0, contiguous=True) for step in range(4)]
    assert torch.stack(kept[1:]).any() and not torch.stack(kept[1:]).all()  # both cases are checked
    for (_, initials, memories), rows in zip(seen[1:], kept[1:]):  # later ones from the memory the slot left
        for initial, memory in zip(initials, memories):
            assert torch.equal(initial[rows], memory[rows]) and not initial[~rows].any()


def test_state_passing_refuses_a_probability_outside_0_1_and_keep_without_a_forward(student):
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\], some above 0"):
        StatePassing(student, 0.0)
    with StatePassing(student, 0.5) as passing:
        with pytest.raises(RuntimeError, match="keep\\(\\) without a forward"):
            passing.keep()
        passing.start(_rows(10))
        with pytest.raises(RuntimeError, match="keep\\(\\) without a forward"):
            passing.keep()


def test_rows_not_allowed_to_pass_start_empty_even_at_probability_1(student):
    with torch.no_grad(), StatePassing(student, 1.0) as passing:
        passing.allow(torch.tensor([True, False, True]))  # before any memory: all start empty anyway
        _forward(passing, student, _rows(0))
        memories = [m.clone() for m in passing.memories]
        buffer = passing.allowed
        passing.allow(torch.tensor([False, True, True]))
        assert passing.allowed is buffer  # copied in place: a CUDA graph reads the same address
        passing.start(_rows(1))
        for handoff, memory in zip(passing.handoffs, memories):
            assert not handoff.initial[0].any() and memory[0].abs().sum() > 0
            assert torch.equal(handoff.initial[1:], memory[1:])


def test_each_part_of_a_contiguous_mixture_passes_with_its_own_probability():
    meta = {"parts": [{"lanes": 2}, {"lanes": 1}, {"lanes": 1}]}  # slots 0-1, 2 and 3
    assert slot_probabilities(0.5, meta) == 0.5
    assert slot_probabilities([0.9, 0.0, 0.5], meta).tolist() == pytest.approx([0.9, 0.9, 0.0, 0.5])
    assert slot_probabilities([0.9, 0.0, 0.5], meta, rank=1, world=2).tolist() == pytest.approx([0.9, 0.5])
    with pytest.raises(ValueError):
        slot_probabilities([0.9, 0.0], meta)


def test_rows_of_probability_0_start_empty_and_rows_of_1_from_their_memory(student):
    with torch.no_grad(), StatePassing(student, torch.tensor([1.0, 0.0, 1.0])) as passing:
        _forward(passing, student, _rows(0))
        memories = [m.clone() for m in passing.memories]
        passing.start(_rows(1))
        for handoff, memory in zip(passing.handoffs, memories):
            assert torch.equal(handoff.initial[[0, 2]], memory[[0, 2]]) and memory[1].abs().sum() > 0
            assert not handoff.initial[1].any()
    with torch.no_grad(), StatePassing(student, torch.tensor([1.0, 0.0])) as passing:
        _forward(passing, student, _rows(0))
        with pytest.raises(ValueError, match="2 probabilities for 3 rows"):
            passing.start(_rows(1))


def test_the_cli_reads_one_passing_probability_or_one_per_part(capsys):
    parser = build_parser()
    assert parser.parse_args(["linearize", "--out", "o", "--state-passing", "0.9"]).state_passing == 0.9
    assert parser.parse_args(["linearize", "--out", "o", "--state-passing", "0.9,0,1"]).state_passing == [0.9, 0, 1]
    assert parser.parse_args(["linearize", "--out", "o", "--reset-at-documents"]).reset_at_documents is True
    assert parser.parse_args(["linearize", "--out", "o"]).reset_at_documents is None  # the preset's
    for bad in ("0", "0.9,1.5", "0.9,x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["linearize", "--out", "o", "--state-passing", bad])
    assert "--state-passing" in capsys.readouterr().err


def test_a_contiguous_mixture_passes_memories_in_the_lanes_of_the_parts_that_ask(tmp_path, teacher_dir, data_file):
    """``state_passing=[1, 0]`` on a mixture of two parts, one lane each: slot 0 (the first part) starts
    every row after the first from its memory, slot 1 (the second) always from an empty one."""
    text = data_file.read_text(encoding="utf-8")
    other = tmp_path / "other.txt"
    other.write_text(text[len(text) // 2:] + text[: len(text) // 2], encoding="utf-8")
    kw = dict(teacher=str(teacher_dir), data=f"mix:{data_file}=1,{other}=1", seq_len=32, batch_size=2,
              stage1_tokens=32 * 2 * 2, stage2_tokens=32 * 2 * 4, val_tokens=32 * 4, checkpoint_every=10,
              device="cpu", lizard=LIZARD, state_passing=[1.0, 0.0], row_order="contiguous")
    seen = [(initials, memories) for _, initials, memories in _linearize_seeing_memories(kw, tmp_path / "run")[0]]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["settings"]["state_passing"] == [1.0, 0.0] and [p["lanes"] for p in run["data"]["parts"]] == [1, 1]
    assert len(seen) == 4 and all(initial is None for initial in seen[0][0])
    for initials, memories in seen[1:]:
        for initial, memory in zip(initials, memories):
            assert torch.equal(initial[0], memory[0]) and memory[0].abs().sum() > 0
            assert not initial[1].any() and memory[1].abs().sum() > 0


def test_a_run_reset_at_documents_reads_each_long_document_with_its_own_memory(tmp_path, teacher_dir, tiny_tokenizer,
                                                                              books):
    """Retrieval documents of 2 rows in 2 lanes at P = 1 with ``reset_at_documents``: a row that begins
    a document (or follows a gap in its lane) starts empty, the row after it from the memory it left."""
    data = f"retrieval:count=24:length=512:seed=1:filler={books}"
    kw = dict(teacher=str(teacher_dir), data=data, seq_len=256, batch_size=2, stage1_tokens=256 * 2 * 2,
              stage2_tokens=256 * 2 * 6, val_tokens=256 * 2, checkpoint_every=10, device="cpu", lizard=LIZARD,
              state_passing=1.0, row_order="contiguous", reset_at_documents=True)
    seen = [(initials, memories) for _, initials, memories in _linearize_seeing_memories(kw, tmp_path / "run")[0]]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["settings"]["reset_at_documents"] is True and run["data"]["lanes_at_document_start"] == 2
    splits = build_splits(data, tiny_tokenizer, 256, train_tokens=256 * 2 * 6, val_tokens=256 * 2, in_order=True,
                          lanes=2)
    passes = [batch_at(splits.passes_on(True), step, 2, seed=0, contiguous=True) for step in range(6)]
    opens = [batch_at(splits.train_starts_document, step, 2, seed=0, contiguous=True) for step in range(6)]
    assert torch.stack(passes[1:]).any() and torch.stack(opens[1:]).any()
    for (initials, memories), rows, first in zip(seen[1:], passes[1:], opens[1:]):
        assert not (rows & first).any()
        for initial, memory in zip(initials, memories):
            assert torch.equal(initial[rows], memory[rows]) and not initial[~rows].any()
