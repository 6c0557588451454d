"""Layout of a run directory, its manifest, its lock, and loading a finished run as a model.

    run.json                  teacher reference, settings, Lizard config, status, fingerprints, versions
    lizard.safetensors        trained Lizard parameters (feature maps, gates, meta memory, beta)
    adapter/                  LoRA adapter of stage 2 (peft format, safetensors)
    checkpoints/last.safetensors   in-progress state of the current stage (resume)
    metrics.jsonl, stage1_loss.png, stage2_loss.png, summary.json
    merged/                   full weights, with --merge
    .lock                     held (flock) by the process writing the run

``run.json`` records fingerprints (:mod:`lizardlm.train.fingerprint`) of the teacher, the data and
each stage's output; resuming and loading check them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from lizardlm.config import INFERENCE_KNOBS
from lizardlm.errors import CheckpointError
from lizardlm.train.checkpoint import atomic_write_text, copy_params, load_checked, writing
from lizardlm.train.fingerprint import files_fingerprint, same_model
from lizardlm.train.settings import TrainSettings

logger = logging.getLogger(__name__)

MANIFEST = "run.json"
LOCK = ".lock"
# Settings a resume may change: how the run is executed, not what it computes. Teacher and data are
# compared by fingerprint (so ./teacher and its absolute path are the same), the learning rates may
# change after a NaN stop.
NON_SEMANTIC = ("device", "checkpoint_every", "gradient_checkpointing", "fsdp", "cuda_graphs", "loss_chunk")
BY_FINGERPRINT = ("teacher", "data")
LEARNING_RATES = ("stage1_lr", "stage2_lr")


def _is_leftover(name: str) -> bool:
    """Temp files of an interrupted write (``.run.json.tmp``, ``.last.safetensors.tmp-PID``) or the lock file."""
    return name == LOCK or (name.startswith(".") and ".tmp" in name)


class RunDir:
    """Paths, manifest and lock of one linearization run."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = self.path / MANIFEST
        self.lizard_weights = self.path / "lizard.safetensors"
        self.adapter = self.path / "adapter"
        self.checkpoint = self.path / "checkpoints" / "last.safetensors"
        self.metrics = self.path / "metrics.jsonl"
        self.summary = self.path / "summary.json"
        self.merged = self.path / "merged"
        self._lock_fd: int | None = None

    def is_run(self) -> bool:
        return self.manifest.is_file()

    def is_empty(self) -> bool:
        """An existing directory with nothing in it but temp files of an interrupted start."""
        return self.path.is_dir() and all(_is_leftover(p.name) for p in self.path.iterdir())

    def outputs(self, name: str) -> tuple[Path, ...]:
        """The files of a stage output: ``lizard`` (stage 1, and stage 2 with --stage2-train-lizard) or ``adapter``."""
        if name == "lizard":
            return (self.lizard_weights,)
        return (self.adapter / "adapter_config.json", self.adapter / "adapter_model.safetensors")

    def lock(self) -> None:
        """Create the directory if needed and lock it for this process until :meth:`unlock` or exit, then
        delete temp files that interrupted writes left. Uses ``fcntl.flock`` (Linux, macOS; not Windows)."""
        import fcntl  # POSIX only: imported here so that loading models works everywhere

        if self._lock_fd is not None:
            return
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CheckpointError(
                f"another lizardlm process is writing {self.path}: wait for it to end, or choose another --out"
            ) from None
        self._lock_fd = fd
        for folder in (self.path, self.checkpoint.parent):
            for leftover in folder.glob(".*.tmp*"):
                leftover.unlink(missing_ok=True)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.manifest.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} is not a lizardlm run directory (no {MANIFEST})") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{self.manifest} is corrupt ({err})") from None
        if not (isinstance(manifest, dict) and isinstance(manifest.get("teacher"), dict)
                and isinstance(manifest.get("settings"), dict)):
            raise CheckpointError(f"{self.manifest} is corrupt (no teacher or settings record)")
        return manifest

    def settings(self, manifest: dict[str, Any]) -> TrainSettings:
        """The run's settings from its manifest; CheckpointError if they are not valid settings."""
        try:
            return TrainSettings.from_dict(manifest["settings"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{self.manifest} has unusable settings: {err}") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.manifest, json.dumps(manifest, indent=2))

    def check_new(self) -> None:
        """A fresh run needs an absent or empty directory (temp files of an interrupted start do not count)
        that can be created."""
        if self.is_run():
            raise CheckpointError(
                f"output directory {self.path} already holds a run: pass --resume to continue it, or choose another --out"
            )
        if self.is_empty():
            return
        if self.path.is_dir():
            raise CheckpointError(f"output directory {self.path} exists and is not empty: choose another --out")
        if self.path.exists():
            raise CheckpointError(f"output path {self.path} is a file, not a directory: choose another --out")
        ancestor = next(p for p in self.path.absolute().parents if p.exists())
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            why = "not a directory" if not ancestor.is_dir() else "not writable"
            raise CheckpointError(f"cannot create output directory {self.path}: {ancestor} is {why}")

    def check_resumable(self, settings: TrainSettings) -> dict[str, Any]:
        """The manifest of the run to resume; CheckpointError if it was made with other settings.

        Teacher and data are compared later, by fingerprint (:meth:`check_teacher`, :meth:`check_data`)."""
        manifest = self.read_manifest()
        may_change = {*NON_SEMANTIC, *BY_FINGERPRINT, *(LEARNING_RATES if manifest.get("diverged") else ())}
        ours, theirs = _flatten(settings.to_dict()), _flatten(self.settings(manifest).to_dict())
        differing = [
            f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}"
            for k in sorted(set(ours) | set(theirs))
            if ours.get(k) != theirs.get(k) and k not in may_change
        ]
        if differing:
            raise CheckpointError(f"cannot resume {self.path}: settings differ from the original run ({'; '.join(differing)})")
        return manifest

    def check_teacher(self, manifest: dict[str, Any], fingerprint: dict[str, Any], where: str) -> None:
        """CheckpointError unless the teacher loaded from ``where`` is the one this run was made from."""
        recorded = manifest.get("fingerprints", {}).get("teacher")
        if recorded is None:  # a run made before fingerprints: the teacher's resolved path must match
            same = manifest["teacher"].get("path") == where
        else:
            same = same_model(recorded, fingerprint)
        if not same:
            raise CheckpointError(
                f"the teacher at {where} is not the one {self.path} was made from (its weights or shapes differ "
                f"from the fingerprint in {MANIFEST})"
            )

    def check_data(self, manifest: dict[str, Any], fingerprint: str, spec: str) -> None:
        """CheckpointError unless the packed data are the rows this run was trained and validated on."""
        recorded = manifest.get("fingerprints", {}).get("data")
        if recorded is not None and recorded != fingerprint:
            raise CheckpointError(
                f"cannot resume {self.path}: the data ({spec!r}) changed since the run started (its token rows differ "
                f"from the fingerprint in {MANIFEST}); resuming would train on other data and mix validation "
                "numbers: restore the data, or start a new run"
            )

    def check_init(self, manifest: dict[str, Any], fingerprint: str | None, path: str | None) -> None:
        """CheckpointError unless the run this one started from (``init_from``) holds the weights it held
        when this run started (checked while this run still reads them: ``fingerprint`` None skips it)."""
        recorded = manifest.get("fingerprints", {}).get("init_from")
        if fingerprint is not None and recorded is not None and fingerprint != recorded:
            raise CheckpointError(
                f"cannot resume {self.path}: the run it started from ({path}) holds other weights than when it "
                "started; restore that run, or start a new one"
            )

    def check_output(self, manifest: dict[str, Any], name: str, verify: bool = True) -> None:
        """CheckpointError unless stage output ``name`` exists and (``verify``) is the one this run wrote."""
        paths = self.outputs(name)
        found = files_fingerprint(*paths)
        if found is None:
            missing = next(p for p in paths if not p.is_file())
            raise CheckpointError(
                f"{missing} is missing, though {MANIFEST} lists {', '.join(manifest.get('completed', []))} as complete: "
                "restore it, or start a new run"
            )
        recorded = manifest.get("fingerprints", {}).get(name)
        if verify and recorded is not None and found != recorded:
            raise CheckpointError(
                f"{paths[-1]} changed since this run wrote it (its fingerprint differs from {MANIFEST}: "
                "corrupt, or copied from another run?)"
            )


def _flatten(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"lizard": {"window_size": 8}}`` -> ``{"lizard.window_size": 8}``, with Lizard defaults filled in."""
    from lizardlm.config import LizardConfig

    flat = {k: v for k, v in settings.items() if k != "lizard"}
    flat.update({f"lizard.{k}": v for k, v in LizardConfig.from_dict(settings.get("lizard", {})).to_dict().items()})
    return flat


INIT_FREE = ("lizard.gate_init", "lizard.alpha_init", "lizard.chunk_size", "lizard.backend",
             *(f"lizard.{k}" for k in INFERENCE_KNOBS))
"""Lizard settings a run started from another (``init_from``) may give otherwise: initial values its
weights replace, and how the layers run (not what they compute)."""
LONG_ADAPTER = ("lizard.long_adapter", "lizard.long_adapter_targets", "lizard.long_adapter_alpha")
"""The long adapter's settings: a run started from one without it (``long_adapter`` 0) may add one, which starts
at zero (:class:`~lizardlm.layers.long_adapter.LongAdapter`), so the model starts as the run it comes from."""
INIT_SHAPE = ("lora_rank", "lora_alpha", "lora_targets")
"""Settings of the LoRA adapter that a run started from another must share with it."""


def init_settings(path: str | os.PathLike) -> dict[str, Any]:
    """What a run started from the run in ``path`` takes from it where not given: its teacher spec, LoRA
    shape (:data:`INIT_SHAPE`) and Lizard settings (with the softmax layers ``even:K`` / ``auto:K`` chose)."""
    run = RunDir(path)
    manifest = run.read_manifest()
    theirs = run.settings(manifest)
    return {"teacher": theirs.teacher, **{k: getattr(theirs, k) for k in INIT_SHAPE}, "lizard": _lizard_of(theirs, manifest)}


def shared_form(settings: TrainSettings, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """What two runs must share for one to start from the other (``init_from``) or to be averaged with it
    (:mod:`lizardlm.train.soup`): the Lizard settings but :data:`INIT_FREE`, flattened (``lizard.window_size``),
    and the LoRA shape (:data:`INIT_SHAPE`). ``manifest``: a finished run's, whose ``even:K`` / ``auto:K``
    chose its softmax layers."""
    lizard = _lizard_of(settings, manifest) if manifest is not None else settings.lizard
    flat = _flatten({**settings.to_dict(), "lizard": lizard})
    return {k: v for k, v in flat.items() if k.startswith("lizard.") and k not in INIT_FREE or k in INIT_SHAPE}


def form_differences(there: dict[str, Any], here: dict[str, Any], where: str = "there") -> list[str]:
    """``"key: X <where>, Y here"`` for every key where two :func:`shared_form` results differ."""
    return [f"{k}: {there.get(k)!r} {where}, {here.get(k)!r} here"
            for k in sorted(set(there) | set(here)) if there.get(k) != here.get(k)]


def _lizard_of(settings: TrainSettings, manifest: dict[str, Any]) -> dict[str, Any]:
    """A run's Lizard settings, with the softmax layers that ``even:K`` / ``auto:K`` chose."""
    lizard = dict(settings.lizard)
    if settings.softmax_select is not None:
        lizard["softmax_layers"] = manifest.get("results", {}).get("softmax_layers", [])
    return lizard


def finished_lizard_run(run: RunDir, given_as: str, purpose: str) -> tuple[dict[str, Any], TrainSettings]:
    """The manifest and settings of ``run``; CheckpointError unless its stage 2 finished and it is not a
    baseline. ``given_as`` (e.g. ``--init-from DIR``) opens the message, ``purpose`` (e.g. ``start from``)
    says what the caller wanted its Lizard layers for."""
    manifest = run.read_manifest()
    settings = run.settings(manifest)
    if settings.baseline is not None:
        raise CheckpointError(f"{given_as}: a {settings.baseline} baseline has no Lizard layers to {purpose}")
    if "stage2" not in manifest.get("completed", []):
        raise CheckpointError(f"{given_as}: its stage 2 has not finished; finish it first "
                              f"(`lizardlm linearize --out {run.path} --resume` and its other flags)")
    return manifest, settings


def read_init(path: str | os.PathLike, settings: TrainSettings,
              teacher: dict[str, Any], where: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """The Lizard parameters and the LoRA adapter tensors (peft's names) of the finished run in ``path``
    that a run with ``settings`` starts from (``init_from``), and their files' fingerprint;
    CheckpointError unless that run finished stage 2, is not a baseline, was made from this teacher
    (``teacher``: its fingerprint, loaded from ``where``), and has the same Lizard form (but
    :data:`INIT_FREE`, and a long adapter this run adds to one without: :data:`LONG_ADAPTER`) and LoRA shape
    (:data:`INIT_SHAPE`)."""
    run = RunDir(path)
    manifest, theirs = finished_lizard_run(run, f"--init-from {run.path}", "start from")
    run.check_teacher(manifest, teacher, where)
    ours, there = shared_form(settings), shared_form(theirs, manifest)
    if not there.get("lizard.long_adapter"):  # a long adapter may be added (at zero)
        ours, there = ({k: v for k, v in form.items() if k not in LONG_ADAPTER} for form in (ours, there))
    differing = form_differences(there, ours)
    if differing:
        raise CheckpointError(f"--init-from {run.path}: its layers or adapter differ from this run's "
                              f"({'; '.join(differing)})")
    for name in ("lizard", "adapter"):
        run.check_output(manifest, name)
    files = (*run.outputs("lizard"), *run.outputs("adapter"))
    return load_checked(run.lizard_weights)[0], load_checked(files[-1])[0], files_fingerprint(*files)


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             adapter: bool = True):
    """Rebuild a trained Lizard model from a run directory: teacher + trained Lizard parameters
    + merged LoRA (unless ``adapter`` is False: the base the adapter applies to); a ``baseline`` run
    (``teacher-lora``) gives the teacher with its LoRA merged. Returns ``(model, tokenizer)``.

    Refuses a run whose stage 1 has not finished, or whose teacher or outputs differ from the
    fingerprints in ``run.json``; warns when stage 2 has not finished (the stage-1 model is loaded)."""
    from lizardlm.convert import convert
    from lizardlm.teachers import TeacherRef, load_teacher
    from lizardlm.train.fingerprint import model_fingerprint

    run = RunDir(path)
    manifest = run.read_manifest()
    settings = run.settings(manifest)
    completed = manifest.get("completed", [])
    if settings.baseline is not None and "stage2" not in completed:
        raise CheckpointError(
            f"{run.path}: this {settings.baseline} baseline's stage 2 has not finished (stopped, or still running); "
            f"continue it with `lizardlm linearize --out {run.path} --resume` and the run's other flags"
        )
    if settings.baseline is None and "stage1" not in completed:
        raise CheckpointError(
            f"{run.path}: stage 1 has not finished (stopped, or still running), so its Lizard parameters are "
            f"untrained; continue it with `lizardlm linearize --out {run.path} --resume` and the run's other flags"
        )
    ref = TeacherRef.from_dict(manifest["teacher"])
    model, tokenizer = load_teacher(ref, dtype=dtype, device=device)
    run.check_teacher(manifest, model_fingerprint(model), ref.path)
    if settings.baseline is None:
        lizard = settings.lizard_config()
        if settings.softmax_select is not None:  # the layers even:K / auto:K chose
            lizard.softmax_layers = manifest["results"]["softmax_layers"]
        model = convert(model, lizard)
        run.check_output(manifest, "lizard")
        copy_params(dict(model.lizard_named_parameters()), load_checked(run.lizard_weights)[0], run.lizard_weights)
    if not adapter:
        return model.eval(), tokenizer
    if "stage2" not in completed:
        logger.warning("%s: stage 2 (LoRA) has not finished; loading the stage-1 model without an adapter", run.path)
        return model.eval(), tokenizer
    run.check_output(manifest, "adapter")
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, str(run.adapter)).merge_and_unload()
    except Exception as err:  # peft raises many kinds of errors on a corrupt or mismatched adapter
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"the adapter in {run.adapter} is corrupt or does not fit this model ({first})") from None
    return model.eval(), tokenizer
