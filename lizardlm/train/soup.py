"""Weight averaging of finished runs of one conversion ("model soup", Wortsman et al. 2022; between a run
and its own continuation, WiSE-FT): ``theta = sum_i w_i * theta_i`` over the trained Lizard parameters and
the LoRA adapter's A and B tensors, written as a new run directory that loads, evaluates and generates like
a trained run.

The runs must share the teacher, the Lizard form and the LoRA shape (what ``--init-from`` requires of a run
to start from); averaging is meaningful where they also share a starting point (one run read on from
another, or two tails of one run), which this cannot check. Weights are non-negative and normalised to sum
to 1. The soup's ``run.json`` takes the first run's settings, records every run with its weight and output
fingerprints under ``"soup"``, and no training results: its validation losses were never measured.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lizardlm.errors import CheckpointError
from lizardlm.train.checkpoint import atomic_save, atomic_write_text, load_checked
from lizardlm.train.fingerprint import files_fingerprint, same_model
from lizardlm.train.rundir import RunDir, finished_lizard_run, form_differences, shared_form


def soup(runs: Sequence[str | os.PathLike], weights: Sequence[float] | None, out: str | os.PathLike) -> dict[str, Any]:
    """Average the finished runs ``runs`` with ``weights`` (default equal) into the new run directory ``out``.

    Returns ``{"runs": [{"path", "weight", "fingerprints"}, ...]}``, what its ``run.json`` holds under ``"soup"``.
    CheckpointError (nothing written) unless every run finished stage 2, is not a baseline, its outputs match
    its ``run.json``, and all share teacher, Lizard form and LoRA shape; ValueError for fewer than two runs or
    unusable weights."""
    weights = _normalised(len(runs), weights)
    dirs = [RunDir(p) for p in runs]
    manifests = [_finished(d) for d in dirs]
    _check_alike(dirs, manifests)
    lizard = _average([d.lizard_weights for d in dirs], weights)
    adapter = _average([d.outputs("adapter")[-1] for d in dirs], weights)

    target = RunDir(out)
    target.check_new()
    target.lock()
    try:
        atomic_save(lizard, target.lizard_weights)
        target.adapter.mkdir(exist_ok=True)
        shutil.copyfile(dirs[0].outputs("adapter")[0], target.outputs("adapter")[0])
        atomic_save(adapter, target.outputs("adapter")[-1])
        record = [{"path": str(d.path.absolute()), "weight": w,
                   "fingerprints": {k: m.get("fingerprints", {}).get(k) for k in ("lizard", "adapter")}}
                  for d, m, w in zip(dirs, manifests, weights)]
        first = manifests[0]
        fingerprints = {k: v for k, v in first.get("fingerprints", {}).items() if k == "teacher"}
        fingerprints.update({name: files_fingerprint(*target.outputs(name)) for name in ("lizard", "adapter")})
        softmax = first.get("results", {}).get("softmax_layers")  # the layers even:K / auto:K chose
        target.write_manifest({"teacher": first["teacher"], "settings": first["settings"], "fingerprints": fingerprints,
                               "completed": ["stage1", "stage2"], "soup": record,
                               "results": {} if softmax is None else {"softmax_layers": softmax}})
        atomic_write_text(target.summary, json.dumps({"soup": record}, indent=2))
    finally:
        target.unlock()
    return {"runs": record}


def _normalised(n: int, weights: Sequence[float] | None) -> list[float]:
    """``weights`` (default equal) for ``n`` runs, scaled to sum to 1; ValueError where that cannot be."""
    if n < 2:
        raise ValueError(f"a soup needs two runs or more, got {n}")
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} runs")
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative and not all zero, got {weights}")
    return [w / sum(weights) for w in weights]


def _finished(run: RunDir) -> dict[str, Any]:
    """The manifest of a finished Lizard run whose outputs are the ones it wrote."""
    manifest, _ = finished_lizard_run(run, str(run.path), "average")
    for name in ("lizard", "adapter"):
        run.check_output(manifest, name)
    return manifest


def _check_alike(dirs: list[RunDir], manifests: list[dict[str, Any]]) -> None:
    """CheckpointError unless every run shares the first's teacher, Lizard form and LoRA shape."""
    first = shared_form(dirs[0].settings(manifests[0]), manifests[0])
    teacher = manifests[0].get("fingerprints", {}).get("teacher")
    for d, m in zip(dirs[1:], manifests[1:]):
        theirs = m.get("fingerprints", {}).get("teacher")
        same = (same_model(teacher, theirs) if teacher is not None and theirs is not None
                else m["teacher"] == manifests[0]["teacher"])  # runs made before fingerprints: the same reference
        if not same:
            raise CheckpointError(f"{d.path} was made from another teacher than {dirs[0].path}")
        differing = form_differences(first, shared_form(d.settings(m), m), f"in {dirs[0].path.name}")
        if differing:
            raise CheckpointError(f"{d.path}: its layers or adapter differ ({'; '.join(differing)})")


def _average(paths: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """``sum_i w_i * tensors_i`` (in float64, stored in the first file's dtypes); CheckpointError unless all
    files hold the same names and shapes."""
    tensors = [load_checked(p)[0] for p in paths]
    for p, t in zip(paths[1:], tensors[1:]):
        if t.keys() != tensors[0].keys() or any(t[k].shape != tensors[0][k].shape for k in t):
            raise CheckpointError(f"{p} holds other tensors than {paths[0]}: not runs of one conversion")
    return {k: sum(w * t[k].double() for w, t in zip(weights, tensors)).to(tensors[0][k].dtype) for k in tensors[0]}
