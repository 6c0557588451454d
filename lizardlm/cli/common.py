"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from lizardlm.config import MODES, LizardConfig
from lizardlm.errors import DataError, LizardError


def _number(cast: type, minimum: float, inclusive: bool):
    """An argparse type: ``cast(text)``, at least (or above) ``minimum``, with a one-line error."""
    noun = "a whole number" if cast is int else "a number"
    relation = ">=" if inclusive else ">"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {noun} {relation} {minimum}, got {value}")
        return value

    return parse


positive_int = _number(int, 1, inclusive=True)
non_negative_int = _number(int, 0, inclusive=True)
positive_float = _number(float, 0, inclusive=False)
non_negative_float = _number(float, 0, inclusive=True)


def seed(text: str) -> int:
    """An argparse type: a random seed, a whole number in [0, 2**64) (what torch accepts)."""
    value = non_negative_int(text)
    if value >= 2**64:
        raise argparse.ArgumentTypeError(f"expected a seed below 2**64, got {value}")
    return value


def probability(text: str) -> float:
    """An argparse type: a number in (0, 1] (nucleus sampling's top-p)."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
    return value


def passing_probabilities(text: str) -> float | list[float]:
    """An argparse type: a probability in (0, 1], or ``P,P,...`` in [0, 1], one per part of a mixture."""
    if "," not in text:
        return probability(text)
    values = [non_negative_float(x) for x in text.split(",")]
    if any(v > 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers in [0, 1], got {text!r}")
    return values


def open_unit(text: str) -> float:
    """An argparse type: a number in (0, 1) (a decay)."""
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def sizes(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated whole numbers > 0, ``k`` for 1024 tokens (``16k,32768``: 16384, 32768)."""
    try:
        vals = tuple(int(x[:-1]) * 1024 if x.endswith("k") else int(x)
                     for x in (x.strip().lower() for x in text.split(",")) if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def float_list(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated finite numbers > 0 (``1,0.5,0.25``)."""
    vals = tuple(positive_float(x.strip()) for x in text.split(",") if x.strip())
    if not vals:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers > 0, got {text!r}")
    return vals


def batch_size(text: str) -> int | str:
    """An argparse type: ``auto`` or a whole number >= 1."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number >= 1, got {text!r}") from None


def softmax_layers(text: str) -> list[int] | str:
    """An argparse type: layer indices ``0,15``, or a selection ``even:K`` / ``auto:K`` (kept as text)."""
    if ":" not in text:
        return int_list(text)
    from lizardlm.train.hybrid import parse_select

    try:
        parse_select(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_lizard_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of :class:`~lizardlm.config.LizardConfig` (unset ones keep the config defaults)."""
    g = p.add_argument_group("Lizard attention")
    g.add_argument("--mode", choices=MODES, default=None,
                   help="lizard (default: our form), paper (the paper's layer), or an ablation preset")
    g.add_argument("--window-size", type=non_negative_int, default=None,
                   help="window of exact softmax; 0 (sum form only) drops the window branch")
    g.add_argument("--num-meta-tokens", type=non_negative_int, default=None)
    g.add_argument("--feature-dim", type=positive_int, default=None)
    g.add_argument("--softmax-layers", type=softmax_layers, default=None,
                   help="layers that keep softmax attention: e.g. 0,15; even:K (K evenly spaced); auto:K (linearize "
                   "only: the K layers with the highest attention-transfer error after stage 1)")
    g.add_argument("--combine", choices=("shared", "sum"), default=None, help="shared normaliser, or the paper's sum")
    g.add_argument("--rope", choices=("window", "none", "both"), default=None, help="which branches rotate q/k")
    g.add_argument("--meta", choices=("kv", "sink"), default=None, help="meta key/value slots, or sink logits")
    g.add_argument("--gate", choices=("scalar", "token", "mamba2", "pooled_key", "none"), default=None,
                   help="decay gate: per-head sigmoid, the paper's per-token sigmoid, Mamba-2 style, Liger's pooled key, or none")
    g.add_argument("--gate-init", type=open_unit, default=None,
                   help="the decay gate's initial value (default 0.995: a half-life of ~140 tokens)")
    g.add_argument("--write-gate", choices=("none", "head"), default=None,
                   help="head: a learned write strength per token and key/value head scales phi(k) (default none)")
    g.add_argument("--read-gate", choices=("none", "head"), default=None,
                   help="head (shared form): a learned read strength per token and query head scales phi(q) (default none)")
    g.add_argument("--value-map", choices=("none", "head"), default=None,
                   help="head: the linear memory stores v W_h, a learned V x V map per key/value head (identity at "
                   "start; the window reads v) (default none)")
    g.add_argument("--short-conv", type=int, default=None, metavar="C",
                   help="a causal depthwise convolution of width C over time on the linear branch's queries and keys "
                   "(identity at start; the window reads q and k as they are), so the memory's keys can hold the tokens "
                   "before them (default 0: none; at 1M + 16M tokens it cost the passkey lookup on the H200: docs/method.md)")
    g.add_argument("--long-adapter", type=non_negative_int, default=None, metavar="R",
                   help="a rank-R adapter of the layer's own on v_proj and o_proj (--long-adapter-targets) that acts only on tokens at least a "
                   "window into their sequence (zero at start; a Lizard parameter): with --answer-rows lizard, retrieval "
                   "rows train it and leave the LoRA, which every prompt shorter than the window reads (default 0: none)")
    g.add_argument("--long-adapter-targets", type=lambda s: s.split(","), default=None, metavar="PROJ,...",
                   help="the projections the long adapter adapts, of q_proj,k_proj,v_proj,o_proj (default v_proj,o_proj)")


def lizard_overrides(args: argparse.Namespace) -> dict:
    """The LizardConfig fields given as flags (a ``--softmax-layers`` selection is not one: see
    :func:`softmax_select`)."""
    names = ("mode", "combine", "rope", "meta", "gate", "gate_init", "write_gate", "read_gate", "value_map", "short_conv",
             "long_adapter", "long_adapter_targets", "window_size", "num_meta_tokens", "feature_dim", "softmax_layers")
    given = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if softmax_select(args) is not None:
        del given["softmax_layers"]
    return given


def softmax_select(args: argparse.Namespace) -> str | None:
    """``--softmax-layers even:K`` / ``auto:K`` (None for an explicit list or no flag)."""
    value = getattr(args, "softmax_layers", None)
    return value if isinstance(value, str) else None


def lizard_config_from_args(args: argparse.Namespace) -> LizardConfig:
    if softmax_select(args) is not None:
        raise LizardError(f"--softmax-layers {softmax_select(args)} is resolved by `lizardlm linearize`; give layer indices here")
    try:
        return LizardConfig(**lizard_overrides(args))
    except ValueError as err:
        raise LizardError(str(err)) from None


def add_inference_knobs(p: argparse.ArgumentParser, window: bool = True) -> None:
    """``--decay-scale S``, ``--write-contrast C``, ``--read-sharpness T`` and ``--window-size W`` of the commands
    that run a model (``eval``, ``generate``); ``window=False`` where :func:`add_lizard_arguments` already gave
    ``--window-size`` (``generate``: the window of a ``--convert``, and of a Lizard model loaded as it is)."""
    p.add_argument("--decay-scale", type=float, default=None, metavar="S",
                   help="a Lizard model's log-decays times S (S < 1 stretches every half-life by 1/S, for prompts "
                   "longer than training; default: as saved, 1 unless set)")
    p.add_argument("--write-contrast", type=float, default=None, metavar="C",
                   help="a Lizard model's write-gate logits times C (C > 1 widens the gap between what the tokens "
                   "write, for prompts longer than training; needs a write gate; default: as saved, 1 unless set)")
    p.add_argument("--read-sharpness", type=float, default=None, metavar="T",
                   help="a Lizard model's query feature-map logits times T (T > 1 sharpens what a query reads from "
                   "the linear memory; default: as saved, 1 unless set)")
    if window:
        p.add_argument("--window-size", type=positive_int, default=None, metavar="W",
                       help="a Lizard model's softmax window at W tokens instead of as trained (wider: more recent text "
                       "read exactly, a cache still constant at W keys and values a layer)")


def set_inference_knobs(model, args: argparse.Namespace, spec: str) -> None:
    """``--decay-scale`` / ``--write-contrast`` / ``--read-sharpness`` / ``--window-size``:
    :meth:`~lizardlm.models.modeling.LizardModelMixin.set_decay_scale` / ``set_write_contrast`` /
    ``set_read_sharpness`` / ``set_window_size`` (nothing for those not given), or a one-line error for a
    model without Lizard layers (or write gate, or window) or a value out of range."""
    from lizardlm.models.modeling import is_lizard_model

    for flag, value, setter, what in (("--decay-scale", args.decay_scale, "set_decay_scale", "decay to scale"),
                                      ("--write-contrast", args.write_contrast, "set_write_contrast", "write gate"),
                                      ("--read-sharpness", args.read_sharpness, "set_read_sharpness", "feature map"),
                                      ("--window-size", args.window_size, "set_window_size", "window")):
        if value is None:
            continue
        if not is_lizard_model(model):
            raise LizardError(f"{flag}: {spec} is not a Lizard model (it has no {what})")
        try:
            getattr(model, setter)(value)
        except ValueError as err:
            raise LizardError(f"{flag}: {err}") from None


def add_device_and_dtype(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype`` of a command that runs a model (read by :func:`run_device_and_dtype`)."""
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (default: bfloat16 on cuda, float32 on cpu)")


def run_device_and_dtype(args: argparse.Namespace):
    """``(on_gpu, dtype)`` of a command that runs a model (``--device``, ``--dtype``): bfloat16 on CUDA and
    float32 on CPU unless ``--dtype``; a one-line error when CUDA is asked for and absent."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise LizardError("--device cuda asked for, but no CUDA device is available")
    on_gpu = args.device == "cuda"
    return on_gpu, getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))


def load_model_for_eval(spec: str, device: str = "cpu", dtype=None):
    """``(model, tokenizer)`` in eval mode for a run dir / saved Lizard model / teacher name or path."""
    import torch

    from lizardlm.loading import load_any

    model, tokenizer = load_any(spec, device=device, dtype=dtype or torch.float32)
    return model.eval(), tokenizer


def check_paths(args: argparse.Namespace, out_dir: Path) -> None:
    """Before any model loads: explicit data paths exist, and the output directory can be written."""
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise DataError(f"--data-dir {args.data_dir}: no such directory")
    for task, path in getattr(args, "task_data", ()):
        if not Path(path).expanduser().exists():
            raise DataError(f"--task-data {task}={path}: no such file or directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LizardError(f"cannot create output directory {out_dir}: {err.strerror or err}") from None
    if not os.access(out_dir, os.W_OK):
        raise LizardError(f"output directory {out_dir} is not writable")
