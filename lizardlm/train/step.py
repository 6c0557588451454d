"""One optimizer step of a training stage: eager, or replayed from a CUDA graph.

A step is ``loss, extra = loss_fn(batch)`` under autocast, its backward (unless ``loss_fn`` did it),
the gradient all-reduce of a multi-process run, clipping to norm 1 and an AdamW update. At 135M
parameters (and even at 8B with one 2K row) such a step is bound by the host: ~10K kernel launches
of a few microseconds each. :class:`GraphedStep` records the whole step once as a CUDA graph and then
replays it, so the host only copies the next batch in and reads the loss back:

* the batch lives in one static buffer; the learning rate in a tensor that the scheduler fills in
  place (``capturable`` AdamW reads it on the device);
* before recording, warm-up steps on a side stream compile the Triton kernels and build the
  optimizer's state; the parameters and that state are then put back exactly as they were (and a
  ``loss_fn`` that carries state between batches puts its own back: ``loss_fn.snapshot()``, if it
  has one, returns the function that does), so a graphed run takes the same steps as an eager one;
* the loss and the ``extra`` metrics stay tensors inside the graph and are read after each replay;
  a non-finite loss is found after the update has run: the run then stops (as in eager mode) and
  ``--resume`` goes on from the last checkpoint, whose parameters were finite;
* recording needs memory beyond an eager step's (the warm-up's and the graph's pool). When it runs
  out (another process holds the GPU), the parameters and the optimizer state are put back and the
  run goes on with eager steps, saying so once: the same steps, slower.

Single-process only (the all-reduce of data parallel is not recorded).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from lizardlm.errors import LizardError

LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor | float]]]
Reduce = Callable[[list[torch.nn.Parameter], torch.Tensor, dict[str, float]], tuple[float, dict[str, float]]]


def adamw(params: list[torch.nn.Parameter], *, lr: float, weight_decay: float = 0.0,
          betas: tuple[float, float] = (0.9, 0.999), graphed: bool = False) -> torch.optim.AdamW:
    """The AdamW a step updates with: PyTorch's fused kernel on CUDA (one launch for every parameter
    instead of a dozen per tensor group; the same update math in float32), ``capturable`` for a
    :class:`GraphedStep`. Eager and graphed steps on CUDA thus run the same optimizer kernel."""
    on_cuda = bool(params) and params[0].is_cuda
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=1e-8,
                             capturable=graphed, fused=on_cuda or None)


def _floats(extra: dict[str, torch.Tensor | float]) -> dict[str, float]:
    return {k: float(v) for k, v in extra.items()}


def snapshot(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """A function that puts ``params`` and ``optimizer``'s state back, in place, to what they are now;
    state made after this call (AdamW's first step) goes back to zero, where AdamW starts it."""
    params_before = [p.detach().clone() for p in params]
    state_before = {id(p): {k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
                    for p in params if p in optimizer.state}

    @torch.no_grad()
    def restore() -> None:
        for p, before in zip(params, params_before):
            p.copy_(before)
        for p in params:
            saved = state_before.get(id(p), {})
            for name, value in optimizer.state[p].items():
                if not torch.is_tensor(value):
                    continue
                if name in saved:
                    value.copy_(saved[name])
                else:
                    value.zero_()

    return restore


class EagerStep:
    """The step as plain PyTorch calls: :meth:`forward_backward`, the caller's checks, :meth:`update`."""

    def __init__(self, loss_fn: LossFn, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, *,
                 backward: bool, autocast: Callable[[], AbstractContextManager], reduce: Reduce | None = None,
                 backward_fn: Callable[[torch.Tensor], None] | None = None) -> None:
        self.loss_fn, self.params, self.optimizer = loss_fn, params, optimizer
        self.backward, self.autocast = backward, autocast
        self.reduce = reduce or (lambda params, loss, extra: (loss.item(), extra))
        self.backward_fn = backward_fn or (lambda loss: loss.backward())

    def _loss_and_gradients(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        with self.autocast():
            loss, extra = self.loss_fn(batch)
        if self.backward:
            self.backward_fn(loss)
        return loss, extra

    def _apply(self) -> None:
        """Clip the gradients to norm 1 and take the AdamW step."""
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()

    def forward_backward(self, batch: torch.Tensor) -> tuple[float, dict[str, float]]:
        """Loss and metrics of ``batch`` (averaged over processes), gradients in ``.grad``."""
        loss, extra = self._loss_and_gradients(batch)
        return self.reduce(self.params, loss, _floats(extra))

    def update(self) -> None:
        """Clip the gradients to norm 1, take the AdamW step, drop the gradients."""
        self._apply()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Nothing to release."""


class GraphedStep(EagerStep):
    """The same step recorded once as a CUDA graph (at the first batch) and replayed for every batch:
    :meth:`forward_backward` runs the whole step, update included; :meth:`update` does nothing.

    ``optimizer`` must be a ``capturable`` AdamW whose state (if resumed) is already loaded.
    """

    def __init__(self, *args, warmup: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not all(g.get("capturable") for g in self.optimizer.param_groups):
            raise ValueError("a CUDA-graphed step needs AdamW(..., capturable=True)")
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager = False  # recording ran out of memory: eager steps from then on

    def _whole_step(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        loss, extra = self._loss_and_gradients(batch)
        self._apply()
        return loss.detach(), extra

    def _record(self, batch: torch.Tensor) -> None:
        device = batch.device
        self.batch = batch.clone()
        for group in self.optimizer.param_groups:  # the scheduler fills these in place from now on
            if not torch.is_tensor(group["lr"]):
                group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        restore = snapshot(self.params, self.optimizer)
        restore_loss_state = getattr(self.loss_fn, "snapshot", lambda: lambda: None)()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        try:
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._whole_step(self.batch)
        finally:
            torch.cuda.current_stream(device).wait_stream(side)
            restore()  # also after a failed warm-up: its updates must not count
            restore_loss_state()
        torch.cuda.empty_cache()  # the warm-up's cached blocks are not the graph's pool: hand them back first
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward writes fresh gradients each replay
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss, self.extra = self._whole_step(self.batch)

    def _give_up_recording(self, err: torch.cuda.OutOfMemoryError) -> None:
        """Drop what recording left (the graph, its pool, gradients) and step eagerly from now on."""
        self.graph = self.loss = self.extra = self.batch = None
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        self.eager = True
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        print(f"lizardlm: --cuda-graphs: recording the training step ran out of GPU memory ({first}); "
              "going on with eager steps (the same steps, slower; --no-cuda-graphs skips recording)",
              file=sys.stderr, flush=True)

    def forward_backward(self, batch: torch.Tensor) -> tuple[float, dict[str, float]]:
        if self.graph is None and not self.eager:
            try:
                self._record(batch)
            except torch.cuda.OutOfMemoryError as err:
                self._give_up_recording(err)
            except RuntimeError as err:  # an operation a CUDA graph cannot hold
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise LizardError(f"--cuda-graphs: recording the training step failed ({first}); "
                                  "rerun with --no-cuda-graphs (and --resume)") from err
        elif not self.eager:
            self.batch.copy_(batch)
        if self.eager:
            return super().forward_backward(batch)
        self.graph.replay()
        return self.loss.item(), _floats(self.extra)

    def update(self) -> None:
        """Already done by the replay (an eager step's update after recording gave up)."""
        if self.eager:
            super().update()

    def close(self) -> None:
        """Release the graph and its memory pool (the gradients live there)."""
        self.graph = None
        self.loss = self.extra = self.batch = None
        for p in self.params:
            p.grad = None
