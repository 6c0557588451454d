"""Layout of a run directory, its manifest, and loading a finished run as a model.

    run.json                  teacher reference, settings, Lizard config, status, versions
    lizard.safetensors        trained Lizard parameters (feature maps, gates, meta memory, beta)
    adapter/                  LoRA adapter of stage 2 (peft format, safetensors)
    checkpoints/last.safetensors   in-progress state of the current stage (resume)
    metrics.jsonl, stage1_loss.png, stage2_loss.png, summary.json
    merged/                   full weights, with --merge
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lizardlm.errors import CheckpointError
from lizardlm.train.checkpoint import load_checked
from lizardlm.train.settings import TrainSettings

MANIFEST = "run.json"


class RunDir:
    """Paths and manifest of one linearization run."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = self.path / MANIFEST
        self.lizard_weights = self.path / "lizard.safetensors"
        self.adapter = self.path / "adapter"
        self.checkpoint = self.path / "checkpoints" / "last.safetensors"
        self.metrics = self.path / "metrics.jsonl"
        self.summary = self.path / "summary.json"
        self.merged = self.path / "merged"

    def is_run(self) -> bool:
        return self.manifest.is_file()

    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} is not a lizardlm run directory (no {MANIFEST})") from None
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{self.manifest} is corrupt ({err})") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest.with_name(f".{MANIFEST}.tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, self.manifest)

    def check_new(self) -> None:
        """A fresh run needs an absent or empty directory."""
        if self.is_run():
            raise CheckpointError(
                f"output directory {self.path} already holds a run: pass --resume to continue it, or choose another --out"
            )
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise CheckpointError(f"output directory {self.path} exists and is not empty: choose another --out")

    def check_resumable(self, settings: TrainSettings, teacher: dict[str, Any]) -> dict[str, Any]:
        """The manifest of the run to resume; CheckpointError if it was made with other settings."""
        manifest = self.read_manifest()
        if manifest.get("teacher") != teacher:
            raise CheckpointError(
                f"cannot resume {self.path}: it was made from teacher {manifest.get('teacher', {}).get('name')!r}, "
                f"not {teacher.get('name')!r}"
            )
        ours, theirs = _flatten(settings.to_dict()), _flatten(manifest.get("settings", {}))
        differing = [
            f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}"
            for k in sorted(set(ours) | set(theirs))
            if ours.get(k) != theirs.get(k) and k not in ("device", "gradient_checkpointing")
        ]
        if differing:
            raise CheckpointError(f"cannot resume {self.path}: settings differ from the original run ({'; '.join(differing)})")
        return manifest


def _flatten(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"lizard": {"window_size": 8}}`` -> ``{"lizard.window_size": 8}``, with Lizard defaults filled in."""
    from lizardlm.config import LizardConfig

    flat = {k: v for k, v in settings.items() if k != "lizard"}
    flat.update({f"lizard.{k}": v for k, v in LizardConfig.from_dict(settings.get("lizard", {})).to_dict().items()})
    return flat


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Rebuild a trained Lizard model from a run directory: teacher + trained Lizard parameters
    + merged LoRA. Returns ``(model, tokenizer)``."""
    from lizardlm.convert import convert
    from lizardlm.teachers import TeacherRef, load_teacher

    run = RunDir(path)
    manifest = run.read_manifest()
    ref = TeacherRef.from_dict(manifest["teacher"])
    model, tokenizer = load_teacher(ref, dtype=dtype, device=device)
    settings = TrainSettings.from_dict(manifest["settings"])
    model = convert(model, settings.lizard_config())
    if run.lizard_weights.is_file():
        tensors, _ = load_checked(run.lizard_weights)
        load_lizard_state(model, tensors, source=run.lizard_weights)
    if (run.adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(run.adapter)).merge_and_unload()
    return model.eval(), tokenizer


def load_lizard_state(model, tensors: dict[str, torch.Tensor], source: os.PathLike | str) -> None:
    """Copy trained Lizard parameters into ``model``; every name and shape must match."""
    params = dict(model.lizard_named_parameters())
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match this model/config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with torch.no_grad():
        for name, param in params.items():
            if param.shape != tensors[name].shape:
                raise CheckpointError(f"{source}: {name} has shape {tuple(tensors[name].shape)}, expected {tuple(param.shape)}")
            param.copy_(tensors[name])
