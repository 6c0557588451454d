"""Settings of a linearization run, and the named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lizardlm.config import LizardConfig


@dataclass
class TrainSettings:
    """Everything that defines a linearization run (recorded in ``run.json``).

    Token budgets count training tokens (``steps = tokens // (batch_size * seq_len)``).
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
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    stage2_train_lizard: bool = False
    checkpoint_every: int = 25
    seed: int = 0
    device: str = "auto"
    lizard: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "val_tokens", "lora_rank", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("stage1_tokens", "stage2_tokens"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("stage1_lr", "stage2_lr"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup-fraction must lie in [0, 1), got {self.warmup_fraction}")
        lizard = self.lizard_config()  # validates the Lizard fields too
        if self.seq_len < lizard.window_size:
            raise ValueError(
                f"seq-len {self.seq_len} is shorter than the window ({lizard.window_size}): "
                "the linear branch would never be trained"
            )

    def lizard_config(self) -> LizardConfig:
        return LizardConfig.from_dict(self.lizard)

    def steps(self, stage: int) -> int:
        tokens = self.stage1_tokens if stage == 1 else self.stage2_tokens
        return tokens // (self.batch_size * self.seq_len)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSettings":
        return cls(**data)


PRESETS: dict[str, dict[str, Any]] = {
    # Finishes on a 2-core CPU in well under 15 minutes with the embedded 135M teacher.
    "cpu-demo": dict(
        seq_len=256, batch_size=4, stage1_tokens=16_384, stage2_tokens=6_144, val_tokens=4_096, checkpoint_every=4,
    ),
    # The paper's recipe scaled to a small teacher on one GPU (bf16 autocast).
    "gpu": dict(
        seq_len=1024, batch_size=8, stage1_tokens=4_194_304, stage2_tokens=4_194_304, val_tokens=131_072,
        checkpoint_every=50,
    ),
}


def settings_from_preset(preset: str | None, **overrides: Any) -> TrainSettings:
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS.get(preset, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainSettings(**values)
