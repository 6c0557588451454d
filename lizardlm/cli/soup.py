"""``lizardlm soup``: average finished runs of one conversion into a new run directory (a "model soup";
between a run and its own continuation, WiSE-FT), e.g. the recall of a run trained with retrieval data
and the zero-shot points of its Alpaca-only continuation:

    lizardlm soup runs/mixr2k-12m runs/mixr2k-12m-tail --weights 0.5,0.5 --out runs/wise50

The Lizard parameters and the LoRA adapter's tensors are averaged with the weights (normalised to sum
to 1; default equal). The result loads, evaluates and generates like any run: ``lizardlm eval --model
runs/wise50``. Its ``run.json`` records the runs and weights (``"soup"``), no training results.
"""

from __future__ import annotations

import argparse
import sys

from lizardlm.cli.common import non_negative_float


def weight_list(text: str) -> list[float]:
    """An argparse type: comma-separated numbers >= 0 (``0.25,0.75``)."""
    return [non_negative_float(x.strip()) for x in text.split(",")]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "soup",
        help="average finished runs of one conversion (Lizard parameters and LoRA adapter) into a new run",
        description="Average the trained weights of runs that share teacher, Lizard form and LoRA shape, e.g. a "
        "run and its continuation (WiSE-FT), into a new run directory that eval and generate read.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished run directories (two or more)")
    p.add_argument("--weights", type=weight_list, default=None, metavar="W,W,...",
                   help="one weight a run, >= 0, normalised to sum to 1 (default: equal)")
    p.add_argument("--out", required=True, help="the new run directory (absent or empty)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lizardlm.errors import LizardError
    from lizardlm.train.soup import soup

    try:
        record = soup(args.runs, args.weights, args.out)
    except ValueError as err:
        raise LizardError(str(err)) from None
    parts = ", ".join(f"{r['path']} x {r['weight']:.4g}" for r in record["runs"])
    print(f"soup of {parts} -> {args.out}", file=sys.stderr)
    return 0
