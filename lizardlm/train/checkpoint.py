"""Training checkpoints: one safetensors file (tensors + JSON metadata), written atomically.

Holds only what trains (Lizard parameters, LoRA weights), the optimizer's tensors, RNG states,
and in the metadata the step, scheduler and optimizer hyperparameters, and a checksum of the tensors
(a flipped bit is reported, not loaded). No pickle anywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from lizardlm.errors import CheckpointError
from lizardlm.train.fingerprint import tensors_fingerprint

_META_KEY = "lizardlm"
_CHECKSUM_KEY = "lizardlm.checksum"


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Report an OSError while writing ``path`` (disk full, no permission) as one CheckpointError line."""
    try:
        yield
    except OSError as err:
        raise CheckpointError(
            f"could not write {path}: {err.strerror or err}; the files written before are kept "
            "(free space, then continue with --resume)"
        ) from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path):
        tmp.write_text(text)
        os.replace(tmp, path)


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, Any] | None = None) -> None:
    """Write ``tensors`` (+ JSON ``meta`` and a checksum) to ``path`` via a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {_META_KEY: json.dumps(meta or {}), _CHECKSUM_KEY: tensors_fingerprint(tensors)}
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata=metadata)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checked(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`atomic_save`; CheckpointError if missing, corrupt or its checksum differs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:  # one read: a file replaced meanwhile (a running trainer's next checkpoint) cannot mix two versions
        data = path.read_bytes()
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])  # safetensors: u64 length, JSON
        metadata = header.get("__metadata__") or {}
        meta = json.loads(metadata.get(_META_KEY, "{}"))
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({err})") from None
    expected = metadata.get(_CHECKSUM_KEY)  # files written before checksums existed have none
    if expected is not None and tensors_fingerprint(tensors) != expected:
        raise CheckpointError(
            f"checkpoint {path} is corrupt (checksum mismatch): restore it, or delete it to redo its stage"
        )
    return tensors, meta


def copy_params(params: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: os.PathLike | str) -> None:
    """Copy ``tensors`` into ``params`` in place; CheckpointError unless names and shapes all match."""
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match this model/config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, param in params.items():
        if param.shape != tensors[name].shape:
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(tensors[name].shape)}, expected {tuple(param.shape)} "
                "(written with another config?)"
            )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


def plain(value: Any) -> Any:
    """``value`` with every one-element tensor inside it (a CUDA-graphed step's learning rate) as a float."""
    if torch.is_tensor(value):
        return value.item()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and JSON-able hyperparameters."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": plain(state["param_groups"]), "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> dict[str, torch.Tensor]:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    try:
        torch.set_rng_state(tensors["rng.cpu"])
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"the checkpoint's random-number state is unusable ({err})") from None
