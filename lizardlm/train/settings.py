"""Settings of a linearization run, and the named presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lizardlm.config import LizardConfig

BASELINES = ("teacher-lora",)
"""Runs that train no Lizard layer: ``teacher-lora`` = stage 2 alone (same LoRA, data, tokens, schedule
and seed) on the unconverted teacher, the fair quality ceiling of a linearization."""
LOSS_AVERAGES = ("tokens", "rows")
"""How stage 2 averages the next-token loss over a batch (:attr:`TrainSettings.loss_average`)."""
ROW_ORDERS = ("shuffled", "contiguous")
"""The order of stage 2's rows (:attr:`TrainSettings.row_order`)."""


@dataclass
class TrainSettings:
    """Everything that defines a linearization run (recorded in ``run.json``).

    Token budgets count training tokens (``steps = tokens // (batch_size * seq_len)``); a budget is 0
    (skip the stage's training) or at least one batch. ``gradient_checkpointing`` recomputes
    stage 2's activations in the backward (:mod:`lizardlm.train.activations`): less memory, same
    losses and gradients. ``fsdp`` shards the frozen weights over the processes of a multi-process
    launch (:mod:`lizardlm.train.sharding`): less memory per device, same losses. ``cuda_graphs``
    replays each training step from one CUDA graph (:mod:`lizardlm.train.step`): the same steps with
    a fraction of the host's launch work (one process, CUDA); ``"auto"`` (the GPU presets) turns it on
    where it can run: one process on CUDA, without ``fsdp`` or ``gradient_checkpointing``. ``baseline`` (one
    of :data:`BASELINES`) skips conversion and stage 1; ``softmax_select`` (``auto:K`` / ``even:K``,
    :mod:`lizardlm.train.hybrid`) picks the hybrid's softmax layers during the run instead of
    ``lizard["softmax_layers"]``. ``loss_average`` (one of :data:`LOSS_AVERAGES`) is how stage 2
    averages its next-token loss: ``"tokens"`` weighs every target token the same (sum over the
    batch's targets / their count); ``"rows"`` takes each row's mean over its own targets, then the
    mean over the rows that have any, so a row of 40 answer tokens (``retrieval:...:loss=answers``)
    weighs as much as a row of 2,047 text tokens and a mixture's data shares are its loss shares.
    ``answer_rows``: what the rows with input-only tokens (``retrieval:...:loss=answers`` documents)
    train in stage 2: ``"all"`` trainable parameters; ``"lizard"``: the Lizard parameters alone, so that
    the LoRA adapter learns from the other rows only; ``"lizard:q_proj,k_proj"``: those and the LoRA of
    the targets named (:mod:`lizardlm.train.answer_rows`; needs ``stage2_train_lizard``).
    ``answer_repeat_weight`` (1: off; needs ``loss_average="rows"``): how many times an answer target that
    repeats the target before it (a doubled digit's second copy) counts in its row's loss
    (:mod:`lizardlm.train.answer_repeats`).
    ``init_from`` (a finished run directory) starts the Lizard parameters and the LoRA adapter from
    that run's instead of the converted teacher's and a fresh adapter, to train a linearized model on
    further data (``stage1_tokens=0`` goes straight to stage 2); the run must have this run's teacher,
    Lizard settings and LoRA shape (:func:`lizardlm.train.rundir.read_init`).
    ``state_passing`` (0: off) is the probability that a stage-2 row starts from the linear memory the
    previous batch's row in its slot left (:mod:`lizardlm.train.state_passing`): training rows with a
    long history behind them, for length generalisation; with contiguous rows of a ``mix:``, a list of
    one probability per part (in the spec's order) gives each part's lanes their own, e.g. books that
    read on from their own memory beside passkey documents that start empty. ``row_order`` (one of :data:`ROW_ORDERS`) is
    the order of stage 2's rows: ``"shuffled"`` (a seeded shuffle each epoch); ``"contiguous"``: the
    batch's rows are lanes that each read on through the data in order, so that with state passing a
    row starts from the memory of the text before it (truncated backpropagation through time, for long
    documents; a mixture's parts get lanes by their shares). A row in lanes whose previous row is not
    the text just before it (a lane's first row, a row after a validation row) always starts empty;
    ``reset_at_documents`` also starts every row that begins a document empty, as every evaluation
    does, so that a document longer than a row (e.g. ``retrieval:length=16384`` at 2K rows) is read
    from its first row on with its own memory only.
    """

    teacher: str = "smollm2-135m"
    data: str = "default"
    seq_len: int = 256
    batch_size: int = 4
    stage1_tokens: int = 65_536
    stage2_tokens: int = 32_768
    val_tokens: int = 16_384
    stage1_lr: float = 1e-2
    stage2_lr: float = 5e-4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    stage2_train_lizard: bool = False
    checkpoint_every: int = 25
    gradient_checkpointing: bool = False
    fsdp: bool = False
    cuda_graphs: bool | str = False
    seed: int = 0
    device: str = "auto"
    baseline: str | None = None
    softmax_select: str | None = None
    loss_average: str = "tokens"
    loss_chunk: int = 0
    answer_rows: str = "all"
    answer_repeat_weight: float = 1.0
    state_passing: float | list[float] = 0.0
    row_order: str = "shuffled"
    reset_at_documents: bool = False
    init_from: str | None = None
    lizard: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "val_tokens", "lora_rank", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        batch_tokens = int(self.batch_size) * int(self.seq_len)
        for name in ("stage1_tokens", "stage2_tokens"):
            tokens = int(getattr(self, name))
            if tokens < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {tokens}")
            if 0 < tokens < batch_tokens:
                raise ValueError(
                    f"{name.replace('_', '-')} {tokens} is less than one batch (batch-size {self.batch_size} x "
                    f"seq-len {self.seq_len} = {batch_tokens} tokens), which trains 0 steps: give at least "
                    f"{batch_tokens}, or 0 to skip the stage"
                )
        for name in ("stage1_lr", "stage2_lr", "answer_repeat_weight"):
            if not 0 < float(getattr(self, name)) < math.inf:
                raise ValueError(f"{name.replace('_', '-')} must be a finite number > 0, got {getattr(self, name)}")
        if not 0 <= int(self.seed) < 2**64:
            raise ValueError(f"seed must be a whole number in [0, 2**64), got {self.seed}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam-betas must be two numbers in [0, 1), got {self.adam_betas}")
        self.adam_betas = [float(b) for b in self.adam_betas]
        if self.cuda_graphs not in (True, False, "auto"):
            raise ValueError(f"cuda-graphs must be true, false or 'auto', got {self.cuda_graphs!r}")
        if self.cuda_graphs is True and (self.device == "cpu" or self.fsdp or self.gradient_checkpointing):
            raise ValueError("cuda-graphs needs a CUDA device and does not combine with fsdp or gradient-checkpointing")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup-fraction must lie in [0, 1), got {self.warmup_fraction}")
        if self.loss_average not in LOSS_AVERAGES:
            raise ValueError(f"loss-average must be one of {', '.join(LOSS_AVERAGES)}, got {self.loss_average!r}")
        self._check_answer_rows()
        if self.answer_repeat_weight != 1 and self.loss_average != "rows":
            raise ValueError("answer-repeat-weight weighs targets within a row's mean: it needs --loss-average rows")
        if int(self.loss_chunk) < 0:
            raise ValueError(f"loss-chunk must be >= 0 (0: the LM head over the whole row at once), got {self.loss_chunk}")
        if self.loss_chunk and self.fsdp:
            raise ValueError("loss-chunk calls the decoder and the LM head apart, which fsdp's sharded forward does not allow")
        if self.row_order not in ROW_ORDERS:
            raise ValueError(f"row-order must be one of {', '.join(ROW_ORDERS)}, got {self.row_order!r}")
        self._check_state_passing()
        if self.passes_state and self.baseline is not None:
            raise ValueError(f"state-passing needs Lizard layers; the {self.baseline} baseline has none")
        if self.init_from is not None and (self.baseline is not None or self.softmax_select is not None):
            raise ValueError("init-from starts from a run's Lizard layers: it takes no baseline, and the softmax "
                             "layers as a list (--softmax-layers 3,7), not chosen again")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise ValueError(f"unknown baseline {self.baseline!r}; choose one of {', '.join(BASELINES)}")
        if self.softmax_select is not None:
            from lizardlm.train.hybrid import parse_select

            parse_select(self.softmax_select)
        lizard = self.lizard_config()  # validates the Lizard fields too
        if self.softmax_select is not None and lizard.softmax_layers:
            raise ValueError(f"softmax layers given twice: {lizard.softmax_layers} and {self.softmax_select!r}")
        if self.baseline is None and self.seq_len < lizard.window_size:
            raise ValueError(
                f"seq-len {self.seq_len} is shorter than the window ({lizard.window_size}): "
                "the linear branch would never be trained"
            )

    def _check_answer_rows(self) -> None:
        """``answer_rows``: ``all``, ``lizard`` or ``lizard:TARGET,...`` with LoRA targets of this run."""
        if self.answer_rows == "all":
            return
        if self.answer_rows.partition(":")[0] != "lizard" or not set(self.answer_rows_lora) <= set(self.lora_targets):
            raise ValueError(f"answer-rows must be all, lizard or lizard:TARGET,... with LoRA targets of this run "
                             f"({','.join(self.lora_targets)}), got {self.answer_rows!r}")
        if set(self.answer_rows_lora) == set(self.lora_targets):
            raise ValueError(f"answer-rows {self.answer_rows} keeps every LoRA target training on the answer rows: "
                             "that is answer-rows all")
        if not (self.stage2_train_lizard and self.baseline is None):
            raise ValueError("answer-rows lizard trains the Lizard parameters on the answer rows: it needs "
                             "--stage2-train-lizard (and no baseline)")

    @property
    def answer_rows_lora(self) -> list[str] | None:
        """The LoRA targets that the answer rows train (None: all of them, ``answer_rows="all"``)."""
        if self.answer_rows == "all":
            return None
        targets = self.answer_rows.partition(":")[2]
        return targets.split(",") if targets else []

    def _check_state_passing(self) -> None:
        """``state_passing``: a probability in [0, 1], or one per part of a contiguous ``mix:``."""
        if isinstance(self.state_passing, (list, tuple)):
            from lizardlm.data.mixture import parse_mixture  # here: the CLI's help must not import torch

            self.state_passing = [float(p) for p in self.state_passing]
            mixture = self.data.startswith("mix:")
            parts = len(parse_mixture(self.data)) if mixture else 1
            if not (self.contiguous_rows and mixture and len(self.state_passing) == parts):
                raise ValueError(
                    f"state-passing {','.join(f'{p:g}' for p in self.state_passing)} gives one probability per part "
                    f"of a mix: data spec, read in contiguous lanes: it needs --row-order contiguous and a mixture "
                    f"of {len(self.state_passing)} parts (the data has {parts})")
        if not all(0 <= p <= 1 for p in self.passing_probabilities):
            raise ValueError(f"state-passing is a probability in [0, 1], got {self.state_passing}")
        if self.contiguous_rows and not self.passes_state:
            raise ValueError("row-order contiguous hands each row the memory of the text before it: it needs --state-passing")
        if self.reset_at_documents and not self.contiguous_rows:
            raise ValueError("reset-at-documents starts the rows that begin a document empty in lanes of contiguous rows: "
                             "it needs --row-order contiguous and --state-passing")

    @property
    def passing_probabilities(self) -> list[float]:
        """``state_passing`` as a list: one probability, or one per mixture part."""
        return [float(p) for p in (self.state_passing if isinstance(self.state_passing, list) else [self.state_passing])]

    @property
    def passes_state(self) -> bool:
        """Whether any stage-2 row may start from a passed memory (``state_passing`` above 0 anywhere)."""
        return any(p > 0 for p in self.passing_probabilities)

    @property
    def contiguous_rows(self) -> bool:
        """Whether stage 2 reads its rows in lanes, in order (``row_order="contiguous"``)."""
        return self.row_order == "contiguous"

    def use_cuda_graphs(self, device: str, processes: int) -> bool:
        """Whether the steps replay from CUDA graphs on ``device`` with ``processes`` processes (``"auto"``:
        where they can; ``True`` where they cannot is refused when training starts)."""
        if self.cuda_graphs != "auto":
            return bool(self.cuda_graphs)
        return device == "cuda" and processes == 1 and not (self.fsdp or self.gradient_checkpointing)

    def lizard_config(self) -> LizardConfig:
        return LizardConfig.from_dict(self.lizard)

    def steps(self, stage: int) -> int:
        tokens = self.stage1_tokens if stage == 1 else self.stage2_tokens
        return tokens // (self.batch_size * self.seq_len)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSettings":
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)} (written by another lizardlm version?)")
        return cls(**data)


PRESETS: dict[str, dict[str, Any]] = {
    # Finishes on a 2-core CPU in well under 15 minutes with the embedded 135M teacher.
    # Stage 2 recomputes activations: its peak RSS on the 135M teacher falls from 5.5 to 2.4 GiB (6 steps,
    # so the recompute costs seconds); stage 1 holds one layer's activations at a time anyway.
    "cpu-demo": dict(
        seq_len=256, batch_size=4, stage1_tokens=16_384, stage2_tokens=6_144, val_tokens=4_096, checkpoint_every=4,
        gradient_checkpointing=True,
    ),
    # The paper's recipe (docs/method.md, arXiv 2507.09025 section 2): Alpaca-cleaned, 2048-token
    # sequences, global batch 8, AdamW (0.9, 0.99), 10% warm-up then cosine to 0.1x, clipping 1.0,
    # LR 1e-3 / 5e-4, LoRA r 8, alpha 16, dropout 0 on q/k/v, 20M + 20M tokens, the paper's layer.
    # The shipped early cleaned copy has 50,921 examples (the paper: about 50K, 2 epochs per stage ~ 20M
    # tokens). A 135M teacher's numbers in the README use a reduced budget (--stage1/2-tokens).
    "paper": dict(
        data="alpaca-cleaned", seq_len=2048, batch_size=8, stage1_tokens=20_000_000, stage2_tokens=20_000_000,
        val_tokens=131_072, stage1_lr=1e-3, stage2_lr=5e-4, warmup_fraction=0.1, adam_betas=[0.9, 0.99],
        lora_rank=8, lora_alpha=16.0, lora_targets=["q_proj", "k_proj", "v_proj"], checkpoint_every=100,
        lizard={"mode": "paper"}, cuda_graphs="auto",
    ),
    # Our recipe scaled to a small teacher on one GPU (bf16 autocast). Both GPU presets replay their steps
    # from CUDA graphs where they can (H200: 135M stage 1 1.6x, stage 2 1.0x the teacher's LoRA step, from
    # 0.75x / 0.62x eager; benchmarks/results/scale-graphs-nvidia-h200.json).
    "gpu": dict(
        seq_len=1024, batch_size=8, stage1_tokens=4_194_304, stage2_tokens=4_194_304, val_tokens=131_072,
        checkpoint_every=50, cuda_graphs="auto",
    ),
    # The best long-context recipe measured so far (issue 19's `mixr2k`, H200: passkey 1.00 / 0.98 / 0.86 /
    # 0.72 at 1K-8K from 2K rows, 0.10 at 16K-32K; benchmarks/results/passkey-mix-nvidia-h200.json):
    # Alpaca-cleaned mixed half and half with synthetic passkey documents in varied wordings, answers-only
    # loss averaged per row, window 128, 256 features, a write gate, the gate starting at 0.9999, the
    # Lizard parameters trained in stage 2 too, 1M + 16M tokens of 2048. Its second seed at the knobs
    # `lizardlm tune` chose (decay scale 0.125, write contrast 3) scores 1.00 / 0.98 / 1.00 / 0.96 / 0.96 / 0.94
    # at 1K-32K (H100, passkey-contrast-nvidia-h100-80gb-hbm3.json): tune a trained run before serving it.
    "long-context": dict(
        data="mix:alpaca-cleaned=0.5,retrieval:loss=answers:template=varied:count=4300=0.5", seq_len=2048,
        batch_size=8, stage1_tokens=1_048_576, stage2_tokens=16_777_216, val_tokens=131_072, checkpoint_every=50,
        cuda_graphs="auto", loss_average="rows", stage2_train_lizard=True,
        lizard={"window_size": 128, "feature_dim": 256, "write_gate": "head", "gate_init": 0.9999},
    ),
}


def settings_from_preset(preset: str | None, **overrides: Any) -> TrainSettings:
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS.get(preset, {}))
    lizard = {**values.get("lizard", {}), **(overrides.pop("lizard", None) or {})}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if lizard:
        values["lizard"] = lizard
    return TrainSettings(**values)
