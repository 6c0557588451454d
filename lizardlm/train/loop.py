"""One training stage: deterministic batches, AdamW + warmup/cosine, checkpoints, resume."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from lizardlm.errors import CheckpointError, TrainingError
from lizardlm.progress import progress
from lizardlm.train.checkpoint import (
    atomic_save,
    load_checked,
    optimizer_state,
    restore_optimizer,
    restore_rng,
    rng_state,
)
from lizardlm.train.rundir import RunDir

LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Stage:
    """What a stage trains and how: ``loss_fn(batch) -> (loss, extra metrics)``."""

    name: str
    steps: int
    lr: float
    params: dict[str, torch.nn.Parameter]
    loss_fn: LossFn
    label: str = ""
    """What the progress bar says (default: ``name``)."""


def batch_at(rows: torch.Tensor, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """Batch ``step`` of a seeded shuffle of ``rows`` that reshuffles every epoch (pure function of step)."""
    n = rows.shape[0]
    idx = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(i, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        idx.append(perm[pos])
    return rows[torch.stack(idx)]


def warmup_cosine(steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class MetricsLog:
    """Append-only JSONL of per-step metrics; on resume, entries past the checkpoint are dropped."""

    def __init__(self, run: RunDir) -> None:
        self.path = run.metrics

    def truncate(self, stage: str, step: int) -> None:
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("stage") != stage or entry.get("step", 0) <= step:
                keep.append(line)
        self.path.write_text("".join(f"{line}\n" for line in keep))

    def write(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def read(self, stage: str) -> list[dict]:
        if not self.path.is_file():
            return []
        entries = (json.loads(line) for line in self.path.read_text().splitlines())
        return [e for e in entries if e.get("stage") == stage and "loss" in e]


def run_stage(
    stage: Stage,
    rows: torch.Tensor,
    *,
    batch_size: int,
    seed: int,
    warmup_fraction: float,
    weight_decay: float,
    checkpoint_every: int,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    run: RunDir,
    accelerator: Accelerator,
    log: MetricsLog,
) -> None:
    """Train ``stage`` to its last step, resuming from ``run.checkpoint`` if it belongs to this stage."""
    params = [p for p in stage.params.values()]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=weight_decay, betas=tuple(adam_betas), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(stage.steps, warmup_fraction))
    step = _resume(stage, optimizer, scheduler, run)
    log.truncate(stage.name, step)
    last_good = step
    tokens_per_step = batch_size * rows.shape[1]
    bar = progress(total=stage.steps, initial=step, desc=stage.label or stage.name, unit="step", dynamic_ncols=True)
    while step < stage.steps:
        started = time.perf_counter()
        batch = batch_at(rows, step, batch_size, seed).to(accelerator.device)
        with accelerator.autocast():
            loss, extra = stage.loss_fn(batch)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"{stage.name} loss became {loss.item()} at step {step + 1}; stopped. The last good checkpoint "
                f"(step {last_good}) is kept in {run.checkpoint}: lower the learning rate and resume"
            )
        accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - started
        log.write(
            {"stage": stage.name, "step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0],
             "tokens_per_s": tokens_per_step / elapsed, **extra}
        )
        bar.set_postfix(loss=f"{loss.item():.4g}", tok_s=f"{tokens_per_step / elapsed:.0f}")
        bar.update(1)
        if step % checkpoint_every == 0 or step == stage.steps:
            if all(torch.isfinite(p).all() for p in params):
                _save(stage, optimizer, scheduler, step, run)
                last_good = step
    bar.close()


def _save(stage: Stage, optimizer, scheduler, step: int, run: RunDir) -> None:
    opt_tensors, opt_meta = optimizer_state(optimizer)
    tensors = {f"param.{k}": v for k, v in stage.params.items()} | opt_tensors | rng_state()
    meta = {"stage": stage.name, "step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict()}
    atomic_save(tensors, run.checkpoint, meta)


def _resume(stage: Stage, optimizer, scheduler, run: RunDir) -> int:
    if not run.checkpoint.is_file():
        return 0
    tensors, meta = load_checked(run.checkpoint)
    if meta.get("stage") != stage.name:
        return 0
    names = {k.removeprefix("param.") for k in tensors if k.startswith("param.")}
    if names != set(stage.params):
        raise CheckpointError(f"{run.checkpoint} holds other parameters than this {stage.name} trains")
    with torch.no_grad():
        for name, param in stage.params.items():
            param.copy_(tensors[f"param.{name}"])
    restore_optimizer(optimizer, tensors, meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    restore_rng(tensors)
    return int(meta["step"])
