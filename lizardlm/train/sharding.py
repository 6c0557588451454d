"""``--fsdp``: the model's frozen weights sharded over the processes of a launch with FSDP2
(:func:`torch.distributed.fsdp.fully_shard`), for teachers that do not fit one device.

Units: every decoder layer, then the root (embeddings, final norm, LM head, tied or not). A unit's
weights are all-gathered for its forward (and again for the backward through it) and freed after,
so a process holds 1/N of the teacher plus about one layer at a time (and the root's weights, which
FSDP keeps gathered after the root's forward).

What trains (Lizard parameters, LoRA) is not sharded: it is small, and stage 1 backpropagates each
layer's loss inside the forward (:func:`lizardlm.layers.attention_transfer`), where FSDP2 never
runs the post-backward hook that would reduce-scatter a sharded parameter's gradient (its gradient
would be lost at the reshard). So the trainable parameters stay whole on every process, outside
FSDP, and their gradients take the data-parallel all-reduce of
:func:`lizardlm.train.distributed.average_gradients`: one reduction, clipping on the full norm,
checkpoints of whole tensors, exactly as without ``--fsdp``. The Lizard parameters exist before
sharding (conversion changes the root's class, which ``fully_shard`` changes too, so it comes
first) and are passed as ``ignored_params``; LoRA is injected after sharding, into modules FSDP
already manages, so FSDP never sees it.

Every forward must enter through the root, and every rank must run as many forwards (each unit
all-gathers with all ranks): validation evens out the ranks' batch counts
(:func:`lizardlm.train.distributed.batches_behind`). Each process still loads the whole teacher into
host memory before sharding moves its share to the device.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor


def shard_model(model: nn.Module, replicated: Iterable[nn.Parameter], device: torch.device) -> None:
    """Shard ``model`` (a ``...ForCausalLM``, its weights frozen) over all processes, in place: one
    FSDP2 unit per decoder layer and the root; the ``replicated`` parameters stay whole, moved to ``device``."""
    keep = set(replicated)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    units = [*model.model.layers, model]
    for unit in units:
        fully_shard(unit, mesh=mesh, ignored_params=keep)
    # FSDP2 keeps the tensors its first all-gather fills for every later one: fill them here, outside
    # the inference mode of validation (an inference tensor cannot be written in training later)
    for unit in units:
        unit.unshard()
        unit.reshard()
    with torch.no_grad():
        for param in keep:  # fully_shard moves the weights it manages to the mesh's device, not these
            param.data = param.data.to(device)


def held_fraction(model: nn.Module) -> float:
    """Share of ``model``'s parameter elements stored on this process (1.0 unless sharded)."""
    total = held = 0
    for param in model.parameters():
        total += param.numel()
        held += param.to_local().numel() if isinstance(param, DTensor) else param.numel()
    return held / total
