"""``lizardlm compare``: two models' benchmark scores, question by question.

    lizardlm compare runs/student/eval                      # its student against its teacher
    lizardlm compare runs/baseline/eval runs/student/eval   # two runs' evaluations (B against A)

Each argument is an ``eval.json`` or a directory holding one (a run directory: its ``eval/``). Where
both results hold per-question scores of the same questions (``lizardlm eval`` records them), the
difference's standard error is the paired one (see :mod:`lizardlm.eval.paired`), often several times
smaller than the two scores' own; older results fall back to the unpaired one and say so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lizardlm.errors import LizardError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="two models' benchmark scores, with the paired standard error of each difference",
        description="B - A on each benchmark both evaluations scored (PIQA acc, ARC-e acc, ARC-c acc_norm, "
        "HellaSwag acc_norm, WinoGrande acc, MMLU acc) and on the zero-shot five's mean, with the standard error "
        "of each difference: paired (question by question) where both results hold per-question scores; and the "
        "passkey's exact match at each length both scored on the same prompts, trial by trial, with McNemar's "
        "exact test. With one result: its reference model (the teacher) as A against its other model as B.",
    )
    p.add_argument("a", metavar="A", help="eval.json, or a directory holding one (a run directory: its eval/)")
    p.add_argument("b", metavar="B", nargs="?", default=None, help="the second result (default: A's other model)")
    p.add_argument("--model-a", default=None, help="the model of A to compare (default: see the description)")
    p.add_argument("--model-b", default=None, help="the model of B to compare")
    p.add_argument("--tasks", type=lambda s: [t.strip() for t in s.split(",") if t.strip()], default=None,
                   help="comma-separated benchmarks (and passkey) to compare (default: all both scored)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the comparison as JSON")
    p.set_defaults(func=run)


def _load(arg: str) -> tuple[dict, Path]:
    path = Path(arg)
    for candidate in (path, path / "eval.json", path / "eval" / "eval.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text(encoding="utf-8")), candidate
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise LizardError(f"{candidate} is not a readable eval.json: {err}") from None
    raise LizardError(f"no eval.json at {path} (nor {path / 'eval.json'} or {path / 'eval' / 'eval.json'})")


def _model(results: dict, path: Path, given: str | None, other_than: str | None = None) -> str:
    """``given``, else the one model of ``results`` that is not its reference (with one result, not
    ``other_than``), else its only model."""
    names = list(results.get("models", {}))
    if given is not None:
        if given not in names:
            raise LizardError(f"{path} has no model {given!r}; it has {', '.join(names) or 'none'}")
        return given
    if len(names) == 1:
        return names[0]
    skip = other_than or results.get("reference")
    rest = [n for n in names if n != skip]
    if len(rest) == 1:
        return rest[0]
    raise LizardError(f"{path} holds models {', '.join(names)}: say which with --model-a / --model-b")


def table(cmp: dict, label_a: str, label_b: str) -> str:
    """The benchmarks' comparison as markdown, in percentage points."""
    lines = [f"| benchmark | metric | A: {label_a} | B: {label_b} | B - A | se | right only in A / B |",
             "|---|---|---:|---:|---:|---:|---:|"]

    def pts(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}"

    for task, r in cmp["tasks"].items():
        se = pts(r["se"]) + ("" if r["paired"] else " (unpaired)")
        only = f"{r['a_only']} / {r['b_only']}" if r["paired"] else "-"
        lines.append(f"| {task} | {r['metric']} | {pts(r['a'])} | {pts(r['b'])} | {100 * r['diff']:+.2f} | {se} | {only} |")
    m = cmp["mean"]
    if m:
        se = pts(m["se"]) + _pairing(m)
        lines.append(f"| zero-shot mean | | {pts(m['a'])} | {pts(m['b'])} | {100 * m['diff']:+.2f} | {se} | |")
    return "\n".join(lines)


def passkey_table(cmp: dict, label_a: str, label_b: str) -> str:
    """The passkey's comparison by length as markdown: exact match, trial by trial."""
    lines = [f"| passkey length | A: {label_a} | B: {label_b} | B - A | trials | right only in A / B | McNemar p |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for length, r in cmp["passkey"].items():
        lines.append(f"| {length} | {r['a']:.2f} | {r['b']:.2f} | {r['diff']:+.2f} | {r['n']} | "
                     f"{r['a_only']} / {r['b_only']} | {r['p']:.3g} |")
    return "\n".join(lines)


def _pairing(mean: dict) -> str:
    return "" if mean["paired"] == mean["tasks"] else " (unpaired)" if not mean["paired"] else " (partly unpaired)"


def summary(cmp: dict) -> str | None:
    """One sentence on the zero-shot mean's difference and its 95% interval (normal approximation)."""
    m = cmp["mean"]
    if not m or m["se"] is None:
        return None
    lo, hi = (100 * (m["diff"] + s * 1.96 * m["se"]) for s in (-1, 1))
    kind = _pairing(m).strip(" ()") or "paired"
    return (f"B - A on the zero-shot mean: {100 * m['diff']:+.2f} ± {100 * m['se']:.2f} points ({kind} se; "
            f"95% interval {lo:+.2f} to {hi:+.2f})")


def run(args: argparse.Namespace) -> int:
    from lizardlm.eval.paired import compare

    ra, pa = _load(args.a)
    if args.b is None:
        ref = args.model_a or ra.get("reference")
        ma = _model(ra, pa, ref)
        rb, pb, mb = ra, pa, _model(ra, pa, args.model_b, other_than=ma)
        if mb == ma:
            raise LizardError(f"{pa} holds one model ({ma}): give a second result B to compare it with")
    else:
        rb, pb = _load(args.b)
        ma, mb = _model(ra, pa, args.model_a), _model(rb, pb, args.model_b)
    cmp = compare(ra, ma, rb, mb, args.tasks)
    print(f"A: {ma} of {pa}\nB: {mb} of {pb}\n")
    if cmp["tasks"]:
        print(table(cmp, ma, mb))
        line = summary(cmp)
        if line:
            print("\n" + line)
    if cmp["passkey"]:
        print(("\n" if cmp["tasks"] else "") + passkey_table(cmp, ma, mb))
    if cmp["passkey_note"]:
        print(f"passkey not compared: {cmp['passkey_note']}", file=sys.stderr)
    unpaired = {t: r["why"] for t, r in cmp["tasks"].items() if not r["paired"]}
    for why in dict.fromkeys(unpaired.values()):
        tasks = ", ".join(t for t, w in unpaired.items() if w == why)
        print(f"unpaired ({tasks}): {why}; an evaluation by this lizardlm records them", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"a": {"path": str(pa), "model": ma}, "b": {"path": str(pb), "model": mb},
                                               **cmp}, indent=1) + "\n", encoding="utf-8")
    return 0
