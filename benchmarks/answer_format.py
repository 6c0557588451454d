"""Passkey misses in words or in numbers, and of what kind: every committed passkey evaluation re-scored
from its trials.

A passkey answer that holds no number ("the pass key.") lost the answer's format; a wrong number lost the
lookup or the copy. Exact match alone cannot tell the two apart, and on the issue-19 runs it matters: a
run whose exact match falls after an Alpaca tail may still give the right key whenever it gives a number.
This reads the trials every ``eval.json`` under ``benchmarks/results/`` keeps and scores them with
:func:`lizardlm.eval.passkey.number_answers` (the evaluation's own ``number_rate`` / ``number_acc``, which
evaluations since 2026-12-06 also record themselves) and counts the wrong answers by kind with
:func:`lizardlm.eval.passkey.miss_kinds` (a digit of a doubled pair left out, one replaced by its
neighbour...: where a lookup that finds each digit from the one before it slips)::

    python benchmarks/answer_format.py [--out benchmarks/results/answer-format-cpu.json] [FILES...]

Writes ``{"evaluations": {"<folder>/<file>": {"<model>": {"<length>": {"acc", "number_rate", "number_acc",
"misses", "n"}}}}}``; the folder names the device the evaluation ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lizardlm.eval.passkey import miss_kinds, number_answers

RESULTS = Path(__file__).resolve().parent / "results"


def rescore(eval_json: dict) -> dict[str, dict[str, dict]]:
    """``{model: {length: {"acc", "number_rate", "number_acc", "misses", "n"}}}`` of an ``eval.json``'s passkey trials
    (lengths without trials left out)."""
    out: dict[str, dict[str, dict]] = {}
    for model, entry in eval_json.get("tasks", {}).get("passkey", {}).items():
        for rec in entry.get("details", {}).get("lengths", []):
            if rec.get("trials"):
                out.setdefault(model, {})[str(rec["length"])] = {
                    "acc": rec["acc"], **number_answers(rec["trials"]), "misses": miss_kinds(rec["trials"]),
                    "n": len(rec["trials"])}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="eval.json files (default: every *eval.json under results/)")
    parser.add_argument("--out", type=Path, default=RESULTS / "answer-format-cpu.json")
    args = parser.parse_args(argv)
    files = args.files or sorted(RESULTS.glob("*/*eval.json"))
    evaluations = {}
    for path in files:
        try:
            scored = rescore(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            raise SystemExit(f"answer_format: cannot read {path}: {err}") from None
        if scored:
            evaluations[f"{path.parent.name}/{path.name}"] = scored
    args.out.write_text(json.dumps({"evaluations": evaluations}, indent=1) + "\n")
    print(f"{len(evaluations)} passkey evaluations re-scored -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
