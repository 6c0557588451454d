"""Stage 2's state passing: rows that start from a long history's memory, at no extra cost.

A recurrent model trained only on rows that start from an empty memory meets, past its training
length, memories it never saw, and fails there (Buitrago Ruiz & Gu 2025, "Understanding and
Improving Length Generalization in Recurrent Models": state passing lets GLA and Mamba trained at
2K hold to 128K). With :attr:`TrainSettings.state_passing` = p, each row of a stage-2 batch starts,
with probability p, from the linear memory that the row in its slot of the previous batch left
(detached: no gradient crosses rows), else from an empty one. Memories chain, so a row's history is
about ``p / (1 - p)`` earlier rows on average (decayed by the gates), of other documents, as in a
long prompt of many. Only the linear memory passes: the window starts each row empty. The validation
loss and every evaluation start from an empty memory as before. Per slot, per process; after
``--resume`` the memories start empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lizardlm.layers.attention import LizardAttention, StateHandoff


class StatePassing:
    """Hands each Lizard layer of ``model`` its rows' starting memories for one forward, and keeps
    the memories they leave for the next (in buffers of fixed address, so a CUDA-graphed step replays
    it: the first call, before any graph, starts empty and allocates them)."""

    def __init__(self, model: nn.Module, probability: float) -> None:
        if not 0 < probability <= 1:
            raise ValueError(f"state passing needs a probability in (0, 1], got {probability}")
        self.layers = [m for m in model.modules() if isinstance(m, LizardAttention)]
        self.probability = probability
        self.memories: list[torch.Tensor] | None = None

    @contextmanager
    def rows(self, batch: torch.Tensor) -> Iterator[None]:
        """Within: a forward of ``batch`` (rows first) starts from the passed memories; after it, their
        final memories are kept. The layers go back to empty memories on leaving."""
        if self.memories is not None and self.memories[0].shape[0] != batch.shape[0]:
            self.memories = None  # another batch size (eager steps only): start these rows empty
        if self.memories is None:
            handoffs = [StateHandoff() for _ in self.layers]
        else:
            kept = (torch.rand(batch.shape[0], device=batch.device) < self.probability).view(-1, 1, 1, 1)
            handoffs = [StateHandoff(memory * kept.to(memory.dtype)) for memory in self.memories]
        for layer, handoff in zip(self.layers, handoffs):
            layer.handoff = handoff
        try:
            yield
        finally:
            for layer in self.layers:
                layer.handoff = None
        finals = [handoff.final for handoff in handoffs]
        if any(final is None for final in finals):
            raise RuntimeError("state passing: a Lizard layer ran no forward without a cache")
        if self.memories is None:
            self.memories = [final.clone() for final in finals]
        else:
            for memory, final in zip(self.memories, finals):
                memory.copy_(final)
