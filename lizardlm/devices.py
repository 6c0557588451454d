"""The device a command runs on."""

from __future__ import annotations

import torch

from lizardlm.errors import LizardError


def pick_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; LizardError for ``cuda`` without a CUDA device."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise LizardError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise LizardError("--device cuda was asked for, but no CUDA device is available (use --device cpu)")
    return name
