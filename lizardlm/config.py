"""Lizard hyperparameters: what replaces each softmax attention, and the ablation presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["lizard", "lolcats", "no_gate", "no_meta"]
GateKind = Literal["scalar", "none"]
Backend = Literal["auto", "triton", "torch"]

MODES: tuple[str, ...] = ("lizard", "lolcats", "no_gate", "no_meta")


@dataclass
class LizardConfig:
    """Configuration of the Lizard attention that replaces each teacher attention.

    Per layer and head, with window ``w``, meta slots ``M`` and feature map ``phi``::

        o_t = softmax-weighted sum over {k_j : t-w < j <= t} U M of v   (log-sum-exp lse_t)
        S_t = a_t S_{t-1} + D(t-w, t) phi(k_{t-w}) v_{t-w}^T              (tokens that left the window)
        y_t = (o_t + e^beta phi(q_t) S_t) / (1 + e^beta phi(q_t) z_t)     (one shared normaliser)

    Attributes:
        mode: preset; ``lolcats`` = no gate and no meta memory, ``no_gate`` / ``no_meta`` drop one part.
        window_size: tokens of exact softmax attention (the current token included).
        num_meta_tokens: learned key/value slots every query attends to (attention-sink role).
        feature_dim: Hedgehog projection width per half; phi has ``2 * feature_dim`` features.
        gate: ``scalar`` = one data-dependent decay per head and token (Mamba-2 style); ``none`` = a_t = 1.
        gate_temperature: tau in a_t = sigmoid(x W + b) ** (1 / tau).
        gate_init: initial decay a_t (bias set so that sigmoid(b) ** (1/tau) == gate_init).
        linear_rope: apply the teacher's RoPE to q/k before the feature map of the linear branch.
        softmax_layers: layer indices that keep the teacher's full softmax attention (hybrid).
        chunk_size: chunk length of the parallel (training) form.
        backend: ``auto`` = Triton kernels on CUDA (training and full-sequence forward), torch
            otherwise; ``triton`` / ``torch`` force one (``triton`` fails clearly without CUDA).
    """

    mode: Mode = "lizard"
    window_size: int = 64
    num_meta_tokens: int = 4
    feature_dim: int = 64
    gate: GateKind = "scalar"
    gate_temperature: float = 16.0
    gate_init: float = 0.995
    linear_rope: bool = False
    softmax_layers: list[int] = field(default_factory=list)
    chunk_size: int = 64
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.mode in ("lolcats", "no_gate"):
            self.gate = "none"
        if self.mode in ("lolcats", "no_meta"):
            self.num_meta_tokens = 0
        if self.backend not in ("auto", "triton", "torch"):
            raise ValueError(f"unknown backend {self.backend!r}; choose auto, triton or torch")
        if self.gate not in ("scalar", "none"):
            raise ValueError(f"unknown gate kind {self.gate!r}; choose 'scalar' or 'none'")
        for name in ("window_size", "feature_dim", "chunk_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_meta_tokens < 0:
            raise ValueError(f"num_meta_tokens must be >= 0, got {self.num_meta_tokens}")
        if not 0.0 < self.gate_init < 1.0:
            raise ValueError(f"gate_init must lie in (0, 1), got {self.gate_init}")
        if self.gate_temperature <= 0:
            raise ValueError(f"gate_temperature must be > 0, got {self.gate_temperature}")
        self.softmax_layers = sorted(int(i) for i in self.softmax_layers)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LizardConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown LizardConfig fields: {sorted(unknown)}")
        return cls(**data)
