"""One training stage: deterministic batches, AdamW + warmup/cosine, checkpoints, resume; data parallel
over the processes of a ``torchrun`` launch (:mod:`lizardlm.train.distributed`)."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs

from lizardlm.errors import DataError, LizardError, TrainingError, TrainingStopped
from lizardlm.progress import progress
from lizardlm.train.checkpoint import (
    atomic_save,
    atomic_write_text,
    copy_params,
    load_checked,
    optimizer_state,
    plain,
    restore_optimizer,
    restore_rng,
    rng_state,
    writing,
)
from lizardlm.train.distributed import (
    average_gradients,
    broadcast_parameters,
    is_distributed,
    micro_batch_size,
    on_main,
    shard,
    sum_over_ranks,
)
from lizardlm.train.rundir import RunDir
from lizardlm.train.step import EagerStep, GraphedStep, LossFn, adamw


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
    steps_after: int = 0
    """Steps of the stages still to come: the bar's ``all`` ETA counts them at this stage's pace."""
    backward: bool = True
    """Whether :func:`run_stage` backpropagates the loss; False: ``loss_fn`` already did."""
    contiguous: bool = False
    """Batches in lanes that read the rows in order (:func:`batch_at`) instead of a shuffle."""
    before_step: Callable[[int], None] | None = None
    """Called with the step's number before each step (e.g. state passing learns which rows continue their lane)."""


def _eta(seconds: float) -> str:
    """``"~1h05m left"`` / ``"~4m12s left"``: the whole job's time to go, for the progress bar."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"~{h}h{m:02d}m left" if h else f"~{m}m{s:02d}s left"


def batch_at(rows: torch.Tensor, step: int, batch_size: int, seed: int, contiguous: bool = False) -> torch.Tensor:
    """Batch ``step`` of a seeded shuffle of ``rows`` that reshuffles every epoch (pure function of step).

    ``contiguous``: ``rows`` cut into ``batch_size`` lanes of ``n // batch_size`` consecutive rows
    (the rest unused); row ``b`` of batch ``step`` is row ``step mod lane`` of lane ``b``, so each slot
    reads on where it stopped and wraps to its lane's start after ``lane`` steps."""
    n = rows.shape[0]
    if contiguous:
        lane = n // batch_size
        if lane < 1:
            raise DataError(f"contiguous row order needs at least batch-size ({batch_size}) training rows, got {n}")
        return rows[torch.arange(batch_size) * lane + step % lane]
    idx = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(i, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed((seed * 100_003 + epoch) % 2**64))
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
    """Append-only JSONL of per-step metrics; on resume, entries past the checkpoint are dropped.

    A line torn by a kill or a full disk is skipped when read and dropped by :meth:`truncate`."""

    def __init__(self, run: RunDir) -> None:
        self.path = run.metrics

    def _entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        entries = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def truncate(self, stage: str, step: int) -> None:
        """Drop ``stage``'s entries after ``step`` (and torn lines), rewriting the file atomically."""
        keep = [e for e in self._entries() if e.get("stage") != stage or e.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in keep))

    def write(self, entry: dict) -> None:
        with writing(self.path), open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def read(self, stage: str) -> list[dict]:
        return [e for e in self._entries() if e.get("stage") == stage and "loss" in e]


@contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """While training: SIGTERM or a first Ctrl-C asks to stop after the current step (the list gets
    the signal number) instead of killing it mid-step; a second Ctrl-C interrupts at once. Only the
    main thread can take signals; elsewhere nothing is installed."""
    asked: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def ask(signum, frame) -> None:
        if asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked.append(signum)

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield asked
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_signal(asked: list[int]) -> int:
    """The signal this process was asked to stop by, or SIGTERM where only another rank was; 0 for
    none. One tiny all-reduce per step under data parallel, so that every rank stops at the same step."""
    mine = asked[0] if asked else 0
    if not is_distributed():
        return mine
    anyone = sum_over_ranks([float(mine)])[0]  # on every rank, whatever its own answer: none may skip it
    return mine or (int(signal.SIGTERM) if anyone else 0)


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
    cuda_graph: bool = False,
) -> float:
    """Train ``stage`` to its last step, resuming from ``run.checkpoint`` if it belongs to this stage.
    Returns the seconds its steps took in earlier calls (a resumed stage's, kept in its checkpoint; else 0).

    ``batch_size`` is the global batch: with several processes each takes its share of every batch
    and the gradients are averaged; rank 0 alone writes checkpoints and metrics. ``cuda_graph``
    replays each step from one CUDA graph (:class:`~lizardlm.train.step.GraphedStep`; one process).
    """
    world = accelerator.num_processes
    micro_batch_size(batch_size, world)
    if cuda_graph and (world > 1 or accelerator.device.type != "cuda"):
        raise LizardError("--cuda-graphs needs one process on a CUDA device")
    params = [p for p in stage.params.values()]
    optimizer = adamw(params, lr=stage.lr, weight_decay=weight_decay, betas=tuple(adam_betas), graphed=cuda_graph)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(stage.steps, warmup_fraction))
    step, before = _resume(stage, optimizer, scheduler, on_main(lambda: _read_checkpoint(stage, run)), run.checkpoint)
    broadcast_parameters(params)  # identical start on every rank, whatever each one's random init
    runner = (GraphedStep if cuda_graph else EagerStep)(
        stage.loss_fn, params, optimizer, backward=stage.backward, reduce=average_gradients,
        backward_fn=accelerator.backward,
        # a recorded graph must not reuse autocast's cast weights from outside it
        autocast=lambda: accelerator.autocast(AutocastKwargs(cache_enabled=False) if cuda_graph else None))
    try:
        _train(stage, rows, runner, optimizer, scheduler, step, before, batch_size=batch_size, seed=seed,
               checkpoint_every=checkpoint_every, run=run, accelerator=accelerator, log=log)
    finally:
        runner.close()
    return before


def _train(stage: Stage, rows: torch.Tensor, runner: EagerStep, optimizer, scheduler, step: int, before: float, *,
           batch_size: int, seed: int, checkpoint_every: int, run: RunDir, accelerator: Accelerator,
           log: MetricsLog) -> None:
    """The steps of :func:`run_stage` from ``step`` on (``before``: seconds of the steps before it)."""
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    params = runner.params
    if main:
        log.truncate(stage.name, step)
    last_good = step
    tokens_per_step = batch_size * rows.shape[1]
    bar = progress(total=stage.steps, initial=step, desc=stage.label or stage.name, unit="step", dynamic_ncols=True,
                   enable=main)
    first, timed = step, 0.0
    with _stop_requests() as asked:
        while step < stage.steps:
            started = time.perf_counter()
            batch = shard(batch_at(rows, step, batch_size, seed, stage.contiguous), rank, world).to(accelerator.device)
            if stage.before_step is not None:
                stage.before_step(step)
            loss_value, extra = runner.forward_backward(batch)
            if not math.isfinite(loss_value):
                kept = (f"its checkpoint at step {last_good} ({run.checkpoint})" if last_good
                        else "step 0 (no checkpoint yet)")
                raise TrainingError(
                    f"{stage.name} loss became {loss_value} at step {step + 1}; stopped. To go on from {kept}, rerun "
                    f"the same command with --resume and a lower --{stage.name}-lr (now {stage.lr:g}; e.g. {stage.lr / 10:g})"
                )
            runner.update()
            scheduler.step()
            step += 1
            elapsed = time.perf_counter() - started
            if main:
                log.write(
                    {"stage": stage.name, "step": step, "loss": loss_value, "lr": float(scheduler.get_last_lr()[0]),
                     "tokens_per_s": tokens_per_step / elapsed, **extra}
                )
            timed += elapsed
            left = (stage.steps - step + stage.steps_after) * timed / (step - first)
            bar.set_postfix(loss=f"{loss_value:.4g}", tok_s=f"{tokens_per_step / elapsed:.0f}", all=_eta(left))
            bar.update(1)
            sig = _stop_signal(asked)  # a stop request saves the step reached
            if step % checkpoint_every == 0 or step == stage.steps or sig:
                if all(torch.isfinite(p).all() for p in params):
                    if main:
                        _save(stage, optimizer, scheduler, step, run, before + timed)
                    last_good = step
            if sig:
                bar.close()
                raise TrainingStopped(
                    f"stopped by {signal.Signals(sig).name} after step {step} of {stage.steps} of {stage.name}; "
                    f"its checkpoint is at step {last_good} ({run.checkpoint}): run the same command with --resume "
                    "to continue", sig)
    bar.close()


def _save(stage: Stage, optimizer, scheduler, step: int, run: RunDir, seconds: float) -> None:
    """The checkpoint of ``step``; ``seconds``: what the stage's steps so far took, over all calls."""
    opt_tensors, opt_meta = optimizer_state(optimizer)
    tensors = {f"param.{k}": v for k, v in stage.params.items()} | opt_tensors | rng_state()
    meta = {"stage": stage.name, "step": step, "seconds": seconds, "optimizer": opt_meta,
            "scheduler": plain(scheduler.state_dict())}
    atomic_save(tensors, run.checkpoint, meta)


def _read_checkpoint(stage: Stage, run: RunDir) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The checkpoint's tensors and metadata if it belongs to ``stage``, else None."""
    if not run.checkpoint.is_file():
        return None
    tensors, meta = load_checked(run.checkpoint)
    if meta.get("stage") != stage.name:
        return None
    return tensors, meta


def _resume(stage: Stage, optimizer, scheduler, checkpoint: tuple[dict[str, torch.Tensor], dict] | None,
            source: os.PathLike | str) -> tuple[int, float]:
    """Load ``checkpoint`` (from :func:`_read_checkpoint` of ``source``) into the stage; returns the step
    to go on from and the seconds the steps before it took (0 in checkpoints written before they were kept)."""
    if checkpoint is None:
        return 0, 0.0
    tensors, meta = checkpoint
    params = {k.removeprefix("param."): v for k, v in tensors.items() if k.startswith("param.")}
    copy_params(stage.params, params, source)
    restore_optimizer(optimizer, tensors, meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    if scheduler.base_lrs != [stage.lr] * len(scheduler.base_lrs):  # a new learning rate (resume after a NaN stop)
        scheduler.base_lrs = [stage.lr] * len(scheduler.base_lrs)
        for group in optimizer.param_groups:
            group["initial_lr"] = stage.lr
            group["lr"] = stage.lr * scheduler.lr_lambdas[0](scheduler.last_epoch)
    restore_rng(tensors)
    return int(meta["step"]), float(meta.get("seconds", 0.0))
