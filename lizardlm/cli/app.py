"""The ``lizardlm`` command line's parser and entry point: one module per subcommand, each exposing ``add_parser``."""

from __future__ import annotations

import argparse
import importlib
import sys

from lizardlm.errors import LizardError, TrainingStopped

SUBCOMMANDS = ("generate", "linearize", "eval", "tune", "soup", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lizardlm",
        description="Linearize a pretrained Llama-family LLM into a Lizard model, evaluate it, generate with it.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"lizardlm.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrainingStopped as err:
        print("lizardlm: " + " ".join(str(err).split()), file=sys.stderr)
        return 128 + err.signum  # the shell's code for death by that signal, as a scheduler expects
    except LizardError as err:
        print("lizardlm: error: " + " ".join(str(err).split()), file=sys.stderr)  # one line, always
        return 2
    except KeyboardInterrupt:
        hint = (" (run the same command with --resume to continue from the last checkpoint)" if args.command == "linearize"
                else " (run the same command again to go on from OUT.partial)"
                if args.command == "generate" and getattr(args, "out", None) is not None else "")
        print(f"lizardlm: interrupted{hint}", file=sys.stderr)
        return 130
