"""Lizard hyperparameters: what replaces each softmax attention, the two forms and the ablation presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["lizard", "lolcats", "no_gate", "no_meta", "paper", "paper_no_gate", "paper_no_sink", "paper_no_window"]
Combine = Literal["shared", "sum"]
Rope = Literal["window", "none", "both"]
Meta = Literal["kv", "sink"]
GateKind = Literal["scalar", "token", "mamba2", "pooled_key", "none"]
StrengthKind = Literal["none", "head"]
Backend = Literal["auto", "triton", "torch"]

OURS: dict[str, Any] = dict(combine="shared", rope="window", meta="kv", gate="scalar", write_gate="none",
                            read_gate="none", value_map="none", window_size=64, feature_dim=64, num_meta_tokens=4)
"""Our reading (LoLCATs-style): shared normaliser, shifted linear state, RoPE in the window, meta key/value slots."""
PAPER: dict[str, Any] = dict(combine="sum", rope="none", meta="sink", gate="token", write_gate="none",
                             read_gate="none", value_map="none", window_size=128, feature_dim=128, num_meta_tokens=4)
"""The paper's layer (arXiv 2507.09025 and ``docs/method.md``): y = y_gla + alpha * y_win, no RoPE,
sink logits, one sigmoid gate per token, window 128, feature dim 128."""

MODE_FORMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # mode: (form whose values fill unset fields, ablation forced whatever was given)
    "lizard": (OURS, {}),
    "lolcats": (OURS, dict(gate="none", num_meta_tokens=0)),
    "no_gate": (OURS, dict(gate="none")),
    "no_meta": (OURS, dict(num_meta_tokens=0)),
    "paper": (PAPER, {}),
    "paper_no_gate": (PAPER, dict(gate="none")),
    "paper_no_sink": (PAPER, dict(num_meta_tokens=0)),
    "paper_no_window": (PAPER, dict(window_size=0, num_meta_tokens=0)),  # y = y_gla: pure gated linear attention
}
MODES: tuple[str, ...] = tuple(MODE_FORMS)

INFERENCE_KNOBS = ("decay_scale", "write_contrast", "read_sharpness")
"""The :class:`LizardConfig` fields that change how a trained model runs, not its weights (1 = as trained)."""

ALPHA_INIT = 0.25
"""Initial alpha of the ``sum`` form (the paper does not state it): the lowest attention-transfer MSE
after a short stage 1 of 0, 0.1, 0.25, 0.5, 1 (``benchmarks/stage1_sweep.py --name alpha-init``, docs/method.md)."""

_CHOICES = dict(combine=("shared", "sum"), rope=("window", "none", "both"), meta=("kv", "sink"),
                gate=("scalar", "token", "mamba2", "pooled_key", "none"), write_gate=("none", "head"),
                read_gate=("none", "head"), value_map=("none", "head"),
                backend=("auto", "triton", "torch"))


@dataclass
class LizardConfig:
    """Configuration of the Lizard attention that replaces each teacher attention.

    Per layer and head, window ``w``, ``m`` meta slots, feature maps ``phi_q, phi_k``, log-decays ``g``.

    ``combine="shared"`` (our reading; modes ``lizard``, ``lolcats``, ``no_*``)::

        (o_t, lse_t) = softmax over {k_j : t-w < j <= t} and the meta slots
        S_t = a_t S_{t-1} + D(t-w, t) phi(k_{t-w}) v_{t-w}^T              (tokens that left the window)
        y_t = (o_t + e^beta phi(q_t) S_t) / (1 + e^beta phi(q_t) z_t)     (one shared normaliser)

    ``combine="sum"`` (the paper; modes ``paper``, ``paper_no_*``)::

        S_t = a_t S_{t-1} + phi(k_t) v_t^T,  z_t = a_t z_{t-1} + phi(k_t)   (all tokens 1..t)
        y_t = phi(q_t) S_t / phi(q_t) z_t + alpha * sum_win e^{s_tj} v_j / (sum_i e^{tau_i} + sum_win e^{s_tj})

    Attributes:
        mode: preset; fields left None take the mode's form (``OURS`` or ``PAPER``) and its
            ablation (``gate="none"`` / no meta slots) is forced.
        combine: ``shared`` normaliser over the shifted linear state, or ``sum`` of two separately
            normalised branches (the linear one over all tokens) with a learned per-head ``alpha``.
        rope: where the teacher's RoPE rotates q/k: the ``window`` branch only, ``none``, or ``both``.
        meta: ``kv`` = learned key/value slots with a logit bias; ``sink`` = scalar logits in the
            window's denominator only (no keys, no values).
        window_size: tokens of exact softmax attention (the current token included); 0 (sum form
            only, mode ``paper_no_window``) drops the window branch: ``y_t = N_t / Z_t``.
        num_meta_tokens: meta slots / sink logits per head.
        feature_dim: Hedgehog projection width per half; phi has ``2 * feature_dim`` features.
        gate: ``scalar`` = one decay per head and token, ``a = sigmoid(x W + b) ** (1 / tau)``;
            ``token`` = one decay per token shared by all heads, ``a = sigmoid(x w + b)``;
            ``mamba2`` = ``log a = -exp(A_log) softplus(x W + dt_bias)`` per head; ``pooled_key`` =
            Liger's gate from the key projection, ``a = sigmoid(mean_d k + b) ** (1 / tau)`` per head;
            ``none`` (see :mod:`lizardlm.layers.gate`).
        gate_temperature: tau of the ``scalar`` and ``pooled_key`` gates.
        gate_init: initial decay (bias set so that the gate starts at this value for every input).
        decay_scale: ``s``, every log-decay times ``s`` (``a -> a^s``) when the model runs; ``s < 1``
            stretches every half-life by ``1 / s``, to carry the memory over prompts longer than
            training (an inference knob: 1 = as trained; :meth:`set_decay_scale` changes it on a
            loaded model).
        write_gate: ``none``, or ``head`` = a learned write strength per token and key/value head,
            ``s = 2 sigmoid(x W + b)`` (1 at start), scaling ``phi(k)`` in the state and the
            normaliser alike, so a token can write more or less than another
            (:class:`~lizardlm.layers.gate.StrengthGate`).
        write_contrast: ``c``, the write gate's logits times ``c`` when the model runs,
            ``s = 2 sigmoid(c (x W + b))``; ``c > 1`` widens the gap between what the tokens write
            (what the gate keeps nearer 2, filler nearer 0), for prompts longer than training, where
            the filler's mass drowns a needle (an inference knob: 1 = as trained;
            :meth:`set_write_contrast` changes it on a loaded model).
        read_sharpness: ``t``, the query feature map's logits times ``t`` when the model runs,
            ``phi_q(u) = [softmax(t u W), softmax(-t u W)]`` (keys, values and the window untouched);
            ``t > 1`` sharpens what a query reads from the linear memory, for copies that slip onto a
            neighbouring token of the needle (an inference knob: 1 = as trained;
            :meth:`set_read_sharpness` changes it on a loaded model).
        read_gate: ``none``, or ``head`` (shared form only) = a learned read strength per token and
            query head, ``r = 2 sigmoid(x W + b)`` (1 at start), scaling ``phi(q)``, so a token can
            turn to the linear memory more or less than another.
        value_map: ``none``, or ``head`` = a learned map ``W_h`` (V x V, identity at start) per
            key/value head on the values the linear memory stores, ``v W_h`` (the window reads ``v``):
            the memory's read-out gets parameters of its own, apart from the adapter on ``v_proj`` /
            ``o_proj`` that the window (and every short prompt) reads. Either form; the state and
            decoding keep their size.
        short_conv: ``c``, a causal depthwise convolution of width ``c`` over time on the linear
            branch's queries and keys before their feature maps, ``q'_t = sum_{i<c} w_i * q_{t-i}``
            (identity at start; :class:`~lizardlm.layers.short_conv.ShortConvolution`), so the memory's
            keys can hold the tokens before them; 0 = none. The window reads ``q`` and ``k`` as they
            are; decoding keeps the last ``c - 1`` queries and keys.
        long_adapter: ``r``, a rank-``r`` adapter of its own on each projection in ``long_adapter_targets``
            (:class:`~lizardlm.layers.long_adapter.LongAdapter`, zero at start) that acts only on the tokens at
            position ``p >= window_size`` in their sequence, where the linear memory holds something; 0 = none.
            Retrieval rows that train it and not the LoRA adapter (``--answer-rows lizard``) leave the LoRA,
            which every prompt reads, to the other rows. Decoding needs nothing more: the position is known.
        long_adapter_targets: the projections it adapts, of ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``
            (default ``v_proj``, ``o_proj``: the read-out that the passkey lookup needs).
        long_adapter_alpha: its scale ``alpha / r`` (as LoRA's).
        alpha_init: initial alpha of the ``sum`` form.
        softmax_layers: layer indices that keep the teacher's full softmax attention (hybrid).
        chunk_size: chunk length of the parallel (training) form.
        backend: ``auto`` = Triton kernels on CUDA (training, full-sequence forward and every chunk of
            a chunked prefill), torch otherwise; ``triton`` / ``torch`` force one (``triton`` fails
            clearly without CUDA).
    """

    mode: Mode = "lizard"
    combine: Combine | None = None
    rope: Rope | None = None
    meta: Meta | None = None
    window_size: int | None = None
    num_meta_tokens: int | None = None
    feature_dim: int | None = None
    gate: GateKind | None = None
    gate_temperature: float = 16.0
    gate_init: float = 0.995
    decay_scale: float = 1.0
    write_gate: StrengthKind | None = None
    write_contrast: float = 1.0
    read_sharpness: float = 1.0
    read_gate: StrengthKind | None = None
    value_map: StrengthKind | None = None
    short_conv: int = 0
    long_adapter: int = 0
    long_adapter_targets: list[str] = field(default_factory=lambda: ["v_proj", "o_proj"])
    long_adapter_alpha: float = 16.0
    alpha_init: float = ALPHA_INIT
    softmax_layers: list[int] = field(default_factory=list)
    chunk_size: int = 64
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODE_FORMS:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        form, forced = MODE_FORMS[self.mode]
        for name, value in form.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name, value in forced.items():
            setattr(self, name, value)
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(choices)}")
        if self.read_gate == "head" and self.combine == "sum":
            raise ValueError("read_gate 'head' needs combine 'shared': in the sum form y_gla = N / Z does not change "
                             "when phi(q) is scaled")
        window_min = 0 if self.combine == "sum" else 1  # the sum form's linear branch stands alone
        for name, minimum in (("window_size", window_min), ("feature_dim", 1), ("chunk_size", 1), ("num_meta_tokens", 0),
                              ("short_conv", 0), ("long_adapter", 0)):
            value = getattr(self, name)
            whole = isinstance(value, int) or isinstance(value, float) and value.is_integer()
            if isinstance(value, bool) or not whole:
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")
            setattr(self, name, int(value))
        if self.window_size == 0 and self.num_meta_tokens:
            raise ValueError("window_size 0 (no window branch) leaves the sink logits nothing to act on: "
                             "set num_meta_tokens 0")
        if not 0.0 < self.gate_init < 1.0:
            raise ValueError(f"gate_init must lie in (0, 1), got {self.gate_init}")
        if isinstance(self.decay_scale, bool) or not (self.decay_scale > 0 and math.isfinite(self.decay_scale)):
            raise ValueError(f"decay_scale must be a finite number > 0, got {self.decay_scale}")
        if isinstance(self.write_contrast, bool) or not (self.write_contrast > 0 and math.isfinite(self.write_contrast)):
            raise ValueError(f"write_contrast must be a finite number > 0, got {self.write_contrast}")
        if isinstance(self.read_sharpness, bool) or not (self.read_sharpness > 0 and math.isfinite(self.read_sharpness)):
            raise ValueError(f"read_sharpness must be a finite number > 0, got {self.read_sharpness}")
        if self.decay_scale != 1.0 and self.gate == "none":
            raise ValueError("decay_scale stretches the decay gate's half-lives: it needs a gate other than 'none'")
        if self.write_contrast != 1.0 and self.write_gate == "none":
            raise ValueError("write_contrast sharpens the write gate: it needs write_gate 'head'")
        if not (self.gate_temperature > 0 and math.isfinite(self.gate_temperature)):
            raise ValueError(f"gate_temperature must be a finite number > 0, got {self.gate_temperature}")
        targets = ("q_proj", "k_proj", "v_proj", "o_proj")
        if not self.long_adapter_targets or not set(self.long_adapter_targets) <= set(targets):
            raise ValueError(f"long_adapter_targets must name some of {', '.join(targets)}, got {self.long_adapter_targets!r}")
        self.long_adapter_targets = [t for t in targets if t in self.long_adapter_targets]
        if isinstance(self.long_adapter_alpha, bool) or not (self.long_adapter_alpha > 0 and math.isfinite(self.long_adapter_alpha)):
            raise ValueError(f"long_adapter_alpha must be a finite number > 0, got {self.long_adapter_alpha}")
        if not math.isfinite(self.alpha_init):
            raise ValueError(f"alpha_init must be finite, got {self.alpha_init}")
        self.softmax_layers = sorted(int(i) for i in self.softmax_layers)

    @property
    def shift(self) -> int:
        """Delay before a token enters the linear state: ``w`` (shared form) or 0 (sum form)."""
        return self.window_size if self.combine == "shared" else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LizardConfig":
        """From :meth:`to_dict` output, including configs saved before the paper form existed
        (their ``linear_rope`` flag becomes ``rope``)."""
        data = dict(data)
        if "linear_rope" in data:
            data.setdefault("rope", "both" if data.pop("linear_rope") else "window")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown LizardConfig fields: {sorted(unknown)}")
        return cls(**data)
