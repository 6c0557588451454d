"""Where two models' zero-shot differences lie by prompt length: is a student's loss inside its window?

Reads two ``eval.json`` files that hold per-question scores (``items``, recorded by ``lizardlm eval``
since 2026-12-07), tokenizes each benchmark's prompts with the teacher's tokenizer (the context plus the
longest choice, as scored) and splits the questions into length buckets: per bucket, both accuracies,
B - A, and the questions right only in A / only in B. A Lizard model with window w reads a prompt
shorter than w through softmax attention alone (its linear memory starts past the window), so a loss
below w is the adapter's, not the memory's.

    python benchmarks/zs_by_length.py A/eval.json B/eval.json [--tasks arc_easy,piqa] [--out results/zs-by-length-cpu.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lizardlm.eval.data import resolve_data_dir
from lizardlm.eval.paired import paired_difference
from lizardlm.eval.tasks import REPORTED_METRIC, find_task_files, read_split, task_configs
from lizardlm.teachers import load_teacher

BUCKETS = ((0, 32), (32, 64), (64, 128), (128, None))


def prompt_lengths(task: str, tok, data_dir: Path) -> list[int]:
    """Tokens of each question's context plus its longest choice, in the evaluation's document order."""
    files = find_task_files(task, data_dir, None)
    split = next(iter(files))
    cfg = task_configs(task, {split: read_split(task, files[split])})[0]
    if not callable(cfg.get("doc_to_text")):
        raise SystemExit(f"{task}: its prompt is a template, not a function; not supported here")
    docs = cfg["custom_dataset"]()[split]
    out = []
    for d in docs:
        ctx, choices = cfg["doc_to_text"](d), cfg["doc_to_choice"](d)
        if isinstance(ctx, int):  # WinoGrande: the choices are contexts, the continuation is shared
            out.append(max(len(tok(c)["input_ids"]) for c in choices) + len(tok(" " + cfg["doc_to_target"](d))["input_ids"]))
        else:
            out.append(len(tok(ctx)["input_ids"]) + max(len(tok(" " + str(c))["input_ids"]) for c in choices))
    return out


def by_length(a: str, b: str, lengths: list[int]) -> list[dict]:
    rows = []
    for lo, hi in BUCKETS:
        idx = [i for i, n in enumerate(lengths) if n >= lo and (hi is None or n < hi)]
        if not idx:
            continue
        sa, sb = ("".join(x[i] for i in idx) for x in (a, b))
        rows.append({"tokens": [lo, hi], **paired_difference(sa, sb)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--tasks", default="arc_easy,arc_challenge,piqa,winogrande")
    ap.add_argument("--model", default="model", help="the model of both results (default: model)")
    ap.add_argument("--teacher", default="smollm2-135m", help="whose tokenizer counts the tokens")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    ea, eb = (json.loads(p.read_text())["tasks"] for p in (args.a, args.b))
    _, tok = load_teacher(args.teacher)
    root = resolve_data_dir(args.data_dir)
    result = {"a": str(args.a), "b": str(args.b), "tokenizer": args.teacher, "tasks": {}}
    for task in args.tasks.split(","):
        metric = REPORTED_METRIC[task]
        ia, ib = (e[task][args.model] for e in (ea, eb))
        if ia.get("items_digest") != ib.get("items_digest") or "items" not in ia:
            raise SystemExit(f"{task}: both results need per-question scores of the same questions")
        lengths = prompt_lengths(task, tok, root)
        rows = by_length(ia["items"][metric], ib["items"][metric], lengths)
        result["tasks"][task] = {"metric": metric, "buckets": rows}
        print(task, metric)
        for r in rows:
            hi = r["tokens"][1] or "inf"
            print(f"  {r['tokens'][0]}-{hi} tokens: n {r['n']}, A {r['a']:.3f}, B {r['b']:.3f}, B - A {r['b'] - r['a']:+.3f}, "
                  f"right only in A / B {r['a_only']} / {r['b_only']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
