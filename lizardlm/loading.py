"""Load a Lizard model (run directory or saved model directory), or anything the CLI accepts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lizardlm.errors import CheckpointError
from lizardlm.models import ARCHITECTURES
from lizardlm.train.rundir import RunDir, load_run

_LIZARD_TYPES = {a.config_class.model_type for a in ARCHITECTURES.values()}


def _saved_model_type(path: Path) -> str | None:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError):
        return None


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A Lizard model from a run directory (teacher + trained deltas, LoRA merged) or from a
    directory written by ``save_pretrained``."""
    return load_with_tokenizer(path, device=device, dtype=dtype)[0]


def load_with_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Like :func:`load`, returning ``(model, tokenizer)`` (tokenizer None if the directory has none)."""
    path = Path(path)
    if RunDir(path).is_run():
        return load_run(path, device=device, dtype=dtype)
    if _saved_model_type(path) in _LIZARD_TYPES:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        has_tokenizer = any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
        return model, AutoTokenizer.from_pretrained(path) if has_tokenizer else None
    raise CheckpointError(f"{path} is neither a lizardlm run directory nor a saved Lizard model")


def load_any(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` for a run directory, a saved Lizard model, or a teacher name/path."""
    path = Path(spec).expanduser()
    if path.is_dir() and (RunDir(path).is_run() or _saved_model_type(path) in _LIZARD_TYPES):
        return load_with_tokenizer(path, device=device, dtype=dtype)
    from lizardlm.teachers import load_teacher

    return load_teacher(spec, dtype=dtype, device=device)
