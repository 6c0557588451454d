"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from lizardlm.config import MODES, LizardConfig


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def add_lizard_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of :class:`~lizardlm.config.LizardConfig` (unset ones keep the config defaults)."""
    g = p.add_argument_group("Lizard attention")
    g.add_argument("--mode", choices=MODES, default=None, help="lizard (default), or an ablation preset")
    g.add_argument("--window-size", type=positive_int, default=None)
    g.add_argument("--num-meta-tokens", type=non_negative_int, default=None)
    g.add_argument("--feature-dim", type=positive_int, default=None)
    g.add_argument("--softmax-layers", type=int_list, default=None, help="layers that keep softmax attention, e.g. 0,15")
    g.add_argument("--linear-rope", action="store_true", default=None, help="apply RoPE before the feature map")


def lizard_overrides(args: argparse.Namespace) -> dict:
    names = ("mode", "window_size", "num_meta_tokens", "feature_dim", "softmax_layers", "linear_rope")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def lizard_config_from_args(args: argparse.Namespace) -> LizardConfig:
    try:
        return LizardConfig(**lizard_overrides(args))
    except ValueError as err:
        from lizardlm.errors import LizardError

        raise LizardError(str(err)) from None
