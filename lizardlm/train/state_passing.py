"""Stage 2's state passing: rows that start from a long history's memory, at no extra cost.

A recurrent model trained only on rows that start from an empty memory meets, past its training
length, memories it never saw, and fails there (Buitrago Ruiz & Gu 2025, "Understanding and
Improving Length Generalization in Recurrent Models": state passing lets GLA and Mamba trained at
2K hold to 128K). With :attr:`TrainSettings.state_passing` = p, each row of a stage-2 batch starts,
with probability p, from the linear memory that the row in its slot of the previous batch left
(detached: no gradient crosses rows), else from an empty one. Memories chain, so a row's history is
about ``p / (1 - p)`` earlier rows on average (decayed by the gates), of other documents, as in a
long prompt of many. With ``row_order="contiguous"`` the slot's previous row is the text just before
the row (:func:`lizardlm.train.loop.batch_at`), so at p = 1 each row starts from its own document's
memory, as truncated backpropagation through time trains a recurrent model. Only the linear memory
passes: the window starts each row empty. The validation loss and every evaluation start from an
empty memory as before. Per slot, per process; after ``--resume`` the memories start empty. With
gradient checkpointing the recomputed forward starts from the same memories. A contiguous mixture may
give each part's lanes a probability of its own (:func:`slot_probabilities`). In lanes, a row that does
not follow its slot's previous row (a lane's first row, a row after a validation row taken out) starts
empty, and so, with ``reset_at_documents``, does a row that begins a document
(:meth:`StatePassing.allow`, from :meth:`lizardlm.data.packing.PackedSplits.passes_on`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lizardlm.layers.attention import LizardAttention, StateHandoff
from lizardlm.train.distributed import shard


def slot_probabilities(state_passing: float | list[float], data_meta: dict, rank: int = 0,
                       world: int = 1) -> float | torch.Tensor:
    """The probability that each of this process's batch slots starts from its passed memory: one
    number for all, or, given one per part of a contiguous mixture, each part's for the slots its
    lanes fill (a slot reads one lane, :func:`lizardlm.train.loop.batch_at`; the mixture's lanes come
    part after part, ``data_meta["parts"][i]["lanes"]`` of them), then this process's share of the
    slots (:func:`lizardlm.train.distributed.shard`)."""
    if not isinstance(state_passing, list):
        return float(state_passing)
    lanes = [part["lanes"] for part in data_meta["parts"]]
    per_slot = torch.tensor([p for p, count in zip(state_passing, lanes, strict=True) for _ in range(count)])
    return shard(per_slot, rank, world)


class StatePassing:
    """Hands each Lizard layer of ``model`` its rows' starting memories and keeps the memories they
    leave, in buffers of fixed address, so a CUDA-graphed step replays it (the first batch, before any
    graph, starts empty and allocates them). Use as a context over the training: each step calls
    :meth:`start` before its forward and :meth:`keep` after it; the layers keep the step's memories
    until the next :meth:`start` (a backward that recomputes the forward, under gradient
    checkpointing, reads the same ones) and go back to empty memories when the context ends."""

    def __init__(self, model: nn.Module, probability: float | torch.Tensor) -> None:
        """``probability``: one for every row, or one per row of the batch (:func:`slot_probabilities`)."""
        per_row = torch.as_tensor(probability, dtype=torch.float32)
        if not (((per_row >= 0) & (per_row <= 1)).all() and (per_row > 0).any()):
            raise ValueError(f"state passing needs probabilities in [0, 1], some above 0, got {probability}")
        self.layers = [m for m in model.modules() if isinstance(m, LizardAttention)]
        self.probability = per_row
        self.allowed: torch.Tensor | None = None
        self.memories: list[torch.Tensor] | None = None
        self.handoffs: list[StateHandoff] = []

    def __enter__(self) -> "StatePassing":
        return self

    def __exit__(self, *exc) -> None:
        for layer in self.layers:
            layer.handoff = None
        self.handoffs = []

    def allow(self, rows: torch.Tensor) -> None:
        """Which rows of the next batch may start from a passed memory at all (bool, one per row; the
        others start empty): copied into a buffer of fixed address, outside any CUDA graph, like the batch."""
        if self.allowed is None or self.allowed.shape != rows.shape:
            self.allowed = rows.to(torch.bool, copy=True)  # its own buffer, never the caller's tensor
        else:
            self.allowed.copy_(rows)

    def start(self, batch: torch.Tensor) -> None:
        """The next forward, of ``batch`` (rows first), starts from the passed memories: each row's
        with probability p, else an empty one."""
        if self.memories is not None and self.memories[0].shape[0] != batch.shape[0]:
            self.memories = None  # another batch size (eager steps only): start these rows empty
        if self.memories is None:
            self.handoffs = [StateHandoff() for _ in self.layers]
        else:
            if self.probability.dim() and self.probability.shape[0] != batch.shape[0]:
                raise ValueError(f"state passing: {self.probability.shape[0]} probabilities for {batch.shape[0]} rows")
            self.probability = self.probability.to(batch.device)  # once: a CUDA graph replays this address
            kept = torch.rand(batch.shape[0], device=batch.device) < self.probability
            if self.allowed is not None:
                self.allowed = self.allowed.to(batch.device)  # likewise
                kept = kept & self.allowed
            kept = kept.view(-1, 1, 1, 1)
            self.handoffs = [StateHandoff(memory * kept.to(memory.dtype)) for memory in self.memories]
        for layer, handoff in zip(self.layers, self.handoffs):
            layer.handoff = handoff

    def snapshot(self) -> Callable[[], None]:
        """A function that puts the memories back to what they are now; memories not yet made (no
        batch so far) go back to zero, which starts a row exactly as an empty memory does. A
        CUDA-graphed step calls it around its warm-up steps (:class:`~lizardlm.train.step.GraphedStep`)."""
        saved = None if self.memories is None else [m.clone() for m in self.memories]

        @torch.no_grad()
        def restore() -> None:
            for i, memory in enumerate(self.memories or []):
                if saved is None:
                    memory.zero_()
                else:
                    memory.copy_(saved[i])

        return restore

    def keep(self) -> None:
        """Keep the memories the forward since :meth:`start` left, for the next batch's rows."""
        finals = [handoff.final for handoff in self.handoffs]
        if not finals or any(final is None for final in finals):
            raise RuntimeError("state passing: keep() without a forward of every Lizard layer since start()")
        if self.memories is None:
            self.memories = [final.clone() for final in finals]
        else:
            for memory, final in zip(self.memories, finals):
                memory.copy_(final)
