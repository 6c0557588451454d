"""Data-dependent gates of the linear branch: the decay gate (one module, four designs,
``LizardConfig.gate``), and the write and read gates (``LizardConfig.write_gate`` /
``read_gate``, one module: :class:`StrengthGate`).

Every design returns log-decays ``log a_t <= 0`` for each head (or one shared by all heads) and
starts, for a zero input, at ``a = a0`` (``gate_init``, close to 1: little forgetting):

* ``scalar`` (ours): ``a_{t,h} = sigmoid(x_t . W_h + b_h) ** (1 / tau)``, one per head.
* ``token`` (the paper): ``a_t = sigmoid(x_t . w + b)``, one per token shared by all heads.
* ``mamba2``: ``log a_{t,h} = -exp(A_log_h) * softplus(x_t . W_h + dt_bias_h)`` (Mamba-2's
  discretised decay ``exp(-dt A)``, scalar per head); ``A_log = 0`` and ``dt_bias`` set so that
  ``softplus(dt_bias) = -log a0``.
* ``pooled_key`` (Liger, arXiv 2503.01496, gate built from the key projection):
  ``a_{t,h} = sigmoid(mean_d k_{t,h,d} + b_h) ** (1 / tau)`` with ``k`` the teacher's key
  projection before RoPE, averaged over the head dimension (each key/value head feeding its
  query heads). Liger's gate has no parameter at all; the per-head bias ``b`` here (one number per
  head) is what lets it start near ``a0`` like the other designs.

``W`` starts at zero, so every design but ``pooled_key`` begins at exactly ``a0`` for every input.
Every design's log-decay is then multiplied by ``scale`` (``LizardConfig.decay_scale``, 1 unless a
user stretches the memory for long prompts: ``a -> a^scale``).

The write gate scales what a token writes: ``phi_k(k_t) -> s_t phi_k(k_t)`` with
``s_{t,h} = 2 sigmoid(x_t . W_h + b_h)`` per key/value head, ``W = 0`` and ``b = 0`` at start
(``s = 1``, the layer unchanged). Hedgehog features sum to 2 for every token, so without it every
token writes the same mass into the state and its normaliser, and one needle among n filler tokens
can hold at most its similarity advantage over 1/n of the read-out; with it a token can write almost
nothing (filler) or twice the default (a fact worth keeping), the role Mamba's step size ``dt``
plays for its input. It does not touch the decay, so what is written stays as long as before.
At inference its logits may be multiplied by a contrast ``c`` (``LizardConfig.write_contrast``, 1 unless
set): ``s = 2 sigmoid(c (x W + b))`` keeps each token's side of 1 and pushes it further out.

The read gate (shared form) scales what a token reads: ``phi_q(q_t) -> r_t phi_q(q_t)`` with
``r_{t,h} = 2 sigmoid(x_t . W_h + b_h)`` per query head, 1 at start. In the shared normaliser
``y = (o + N) / (1 + Z)`` this moves the linear memory's share ``Z / (1 + Z)`` per token: without
it that share is set by per-head constants (``beta``) and the similarity mass, so a question cannot
turn to the memory more than any other token does. (In the sum form ``N / Z`` does not change when
``phi_q`` is scaled, so there it would do nothing.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GATES = ("scalar", "token", "mamba2", "pooled_key")


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class DecayGate(nn.Module):
    """Log-decays ``(B, heads, T)`` (``heads`` = 1 for ``token``) from the hidden states ``x`` and the
    un-rotated keys ``k``; see the module docstring for each ``kind``'s equation.

    Parameters: ``proj`` (hidden -> heads, with bias ``b``) for ``scalar`` / ``token``; ``dt_proj``
    (hidden -> heads, no bias), ``dt_bias`` and ``A_log`` (per head) for ``mamba2``; ``key_bias``
    (per head) for ``pooled_key``.
    """

    def __init__(self, kind: str, hidden_size: int, num_heads: int, num_kv_heads: int, temperature: float,
                 init: float, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        if kind not in GATES:
            raise ValueError(f"unknown gate {kind!r}; choose one of {', '.join(GATES)}")
        self.kind = kind
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.temperature = temperature if kind in ("scalar", "pooled_key") else 1.0
        self.init = init
        if kind in ("scalar", "token"):
            self.proj = nn.Linear(hidden_size, num_heads if kind == "scalar" else 1)
        elif kind == "mamba2":
            self.dt_proj = nn.Linear(hidden_size, num_heads, bias=False)
            self.dt_bias = nn.Parameter(torch.empty(num_heads))
            self.A_log = nn.Parameter(torch.empty(num_heads))
        else:
            self.key_bias = nn.Parameter(torch.empty(num_heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.kind in ("scalar", "token"):
                self.proj.weight.zero_()
                self.proj.bias.fill_(_logit(self.init**self.temperature))
            elif self.kind == "mamba2":
                self.dt_proj.weight.zero_()
                self.A_log.zero_()
                self.dt_bias.fill_(math.log(math.expm1(-math.log(self.init))))  # softplus^-1(-log a0)
            else:
                self.key_bias.fill_(_logit(self.init**self.temperature))

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, hidden)``, ``k`` ``(B, Hk, T, D)`` -> log-decays ``(B, heads, T)``, all <= 0."""
        log_a = self._log_decay(x, k)
        return log_a if self.scale == 1.0 else log_a * self.scale

    def _log_decay(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if self.kind in ("scalar", "token"):
            return (F.logsigmoid(self.proj(x).float()) / self.temperature).transpose(1, 2)
        if self.kind == "mamba2":
            dt = F.softplus(self.dt_proj(x).float() + self.dt_bias.float())
            return (-self.A_log.float().exp() * dt).transpose(1, 2)
        pooled = k.float().mean(-1).repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
        return F.logsigmoid(pooled + self.key_bias.float()[:, None]) / self.temperature


class StrengthGate(nn.Module):
    """Strengths ``s = 2 sigmoid(contrast (x W + b))`` ``(B, heads, T)`` in (0, 2), one per token and
    head (``proj``: hidden -> heads, zero at start so ``s = 1``; ``contrast`` 1 but at inference): the
    write gate (key/value heads, scaling ``phi_k``) and the read gate (query heads, scaling ``phi_q``);
    see the module docstring."""

    def __init__(self, hidden_size: int, heads: int, contrast: float = 1.0) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, heads)
        self.contrast = contrast
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.proj(x).float()
        return (2.0 * torch.sigmoid(logits if self.contrast == 1.0 else logits * self.contrast)).transpose(1, 2)
