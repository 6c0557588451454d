"""Cheap fingerprints that tie a run directory to its teacher, its data and its own outputs.

A teacher's fingerprint hashes its model type and parameter names/shapes, and keeps 64 parameter
values sampled at fixed positions (compared with a tolerance, so a run loads in any dtype). Data and
stage outputs are hashed byte for byte (token rows, small files).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch

SAMPLES = 64
_REL_TOL, _ABS_TOL = 1e-2, 1e-4  # bf16 keeps ~3 significant digits


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """``{"structure": hash of model type + parameter names and shapes, "samples": 64 values}``."""
    params = sorted(model.named_parameters())
    digest = hashlib.sha256(str(getattr(getattr(model, "config", None), "model_type", "")).encode())
    for name, param in params:
        digest.update(f"{name}:{tuple(param.shape)};".encode())
    samples = []
    with torch.no_grad():
        for k in range(SAMPLES):
            flat = params[k * len(params) // SAMPLES][1].reshape(-1)
            samples.append(float(f"{flat[(k * 2_654_435_761) % flat.numel()].float().item():.5g}"))
    return {"structure": digest.hexdigest()[:16], "samples": samples}


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`model_fingerprint` results describe the same weights (up to dtype rounding)."""
    return a.get("structure") == b.get("structure") and len(a["samples"]) == len(b["samples"]) and all(
        math.isclose(x, y, rel_tol=_REL_TOL, abs_tol=_ABS_TOL) for x, y in zip(a["samples"], b["samples"])
    )


def tensors_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """Hash of the names, dtypes, shapes and bytes of ``tensors`` (token rows, a checkpoint's contents)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def files_fingerprint(*paths: Path) -> str | None:
    """Hash of the bytes of ``paths`` (None if one is missing)."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except FileNotFoundError:
            return None
    return digest.hexdigest()[:16]
