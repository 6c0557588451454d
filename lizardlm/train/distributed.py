"""Data parallelism across the processes of ``torchrun`` / ``accelerate launch``.

The process group is the one :class:`accelerate.Accelerator` opens from the standard variables
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): gloo on CPU, nccl on
CUDA with rank r on ``cuda:LOCAL_RANK``. Without those variables every helper here is the identity
(one process).

Each rank takes the rows ``rank, rank + W, ...`` of a step's global batch of B rows (B / W each),
and the trainable parameters' gradients (small: Lizard parameters, LoRA) are averaged in one
all-reduce::

    g = (1/W) sum_r grad L_r,    L_r = mean loss over rank r's B/W rows,

which is the gradient of the mean loss over all B rows because every rank holds as many rows of
equal length. Clipping and AdamW then see what one process with batch B sees, so the losses match
one process up to float rounding, and the global batch (hence the run's settings) does not depend
on W. Only rank 0 touches the run directory (it reads what a resume needs and broadcasts it) and
builds the data rows, which every rank then receives.
With ``--fsdp`` the frozen weights are sharded on top of this (:mod:`lizardlm.train.sharding`); the
trainable parameters and their all-reduce stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
import torch.distributed as dist

from lizardlm.errors import LizardError

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return not is_distributed() or dist.get_rank() == 0


def micro_batch_size(batch_size: int, world_size: int) -> int:
    """Rows per rank of a global batch; LizardError unless ``world_size`` divides ``batch_size``."""
    if batch_size % world_size:
        raise LizardError(
            f"batch size {batch_size} is not divisible by the {world_size} processes: the global batch is split "
            f"evenly over them, so choose a --batch-size that is a multiple of {world_size} (or another process count)"
        )
    return batch_size // world_size


def shard(rows: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s rows of ``rows``: indices ``rank, rank + world_size, ...`` (a pure function: resumable)."""
    return rows[rank::world_size]


def batches_behind(rows: int, batch_size: int) -> int:
    """How many fewer batches of ``batch_size`` this rank's share of ``rows`` (:func:`shard`) makes than
    rank 0's, the largest: under ``--fsdp`` every forward all-gathers weights with all ranks, so a rank
    that is behind runs that many more (their results dropped) to keep in step."""
    if not is_distributed():
        return 0
    world = dist.get_world_size()

    def batches(rank: int) -> int:
        return math.ceil(len(range(rank, rows, world)) / batch_size)

    return batches(0) - batches(dist.get_rank())


def _reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def average_gradients(params: Iterable[torch.nn.Parameter], loss: torch.Tensor, extra: dict[str, float]) -> tuple[float, dict[str, float]]:
    """Average the gradients of ``params``, ``loss`` and the ``extra`` metrics over ranks in one all-reduce.

    Returns the averaged loss and metrics as floats; a parameter without a gradient counts as zeros.
    """
    if not is_distributed():
        return loss.item(), extra
    params = list(params)
    device = _reduce_device()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    scalars = torch.tensor([0.0, *extra.values()], dtype=torch.float32, device=device)
    scalars[0] = loss.detach().float()
    flat = torch.cat([g.reshape(-1).float().to(device) for g in grads] + [scalars])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    sizes = [g.numel() for g in grads]
    *parts, scalars = flat.split(sizes + [scalars.numel()])
    for p, part in zip(params, parts):
        p.grad = part.view_as(p).to(device=p.device, dtype=p.dtype)
    values = scalars.tolist()
    return values[0], dict(zip(extra, values[1:]))


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    return t.tolist()


def broadcast_parameters(params: Iterable[torch.Tensor]) -> None:
    """Overwrite every rank's ``params`` with rank 0's values."""
    if not is_distributed():
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only; every rank gets its result, or raises the exception it raised."""
    if not is_distributed():
        return fn()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, fn())
        except Exception as err:  # handed to every rank, so none waits forever on a failed rank 0
            box[0] = (False, err)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def shutdown() -> None:
    """Close the process group, if one was opened."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
