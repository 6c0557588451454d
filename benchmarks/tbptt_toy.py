"""Can documents longer than a row, read in order with a passed memory, teach retrieval across rows?

The question behind ``device_runs.sh``'s ``mixr2k-long`` (16K passkey documents read in 2K rows with
``--reset-at-documents``), asked of the needle toy on CPU, from scratch, in minutes: the
``lizard+write`` form of ``benchmarks/toy_needle.py`` (2-layer Llama, window 16, write gate; all
parameters trained on the answer's loss), trained on ``--row``-token rows (64: 4x the window) as

* ``rows``: every document is one row: needle and question in the same row, memory starts empty
  (mixr2k's passkey rows);
* ``tbptt-D``: documents of ``D`` tokens read in ``D / row`` rows, in order, each row starting from
  the memory the previous one left (detached) and the first from an empty one; only the last row
  holds the question, so the answer's gradient never reaches the row that wrote the needle (when
  the needle is in an earlier row), only the gates and the reading;
* ``mixed-D``: the two alternating step by step (``mixr2k-long``'s mix of short and long passkeys);
* ``then-D``: ``rows`` for the first half of the steps, ``mixed-D`` for the second (the lookup learned
  on short rows first, as a pretrained teacher's stage 2 learns it on the 2K passkeys early);
* ``full-D``: rows of ``D`` tokens with the whole backward (the reference: what TBPTT approximates
  at ``D / row`` times the activations).

The optimizer steps and answers are the same for every run; ``tbptt-D`` reads ``D / row`` times the
tokens (all but the last row forward only). Evaluated from an empty memory on whole prompts: exact
match at each of ``--lengths`` with the needle uniform over the prompt, and each layer's gate
half-life (``ln(1/2) / mean log-decay``)::

    python benchmarks/tbptt_toy.py --out benchmarks/results     # ~15 min on 2 cores

writes ``<out>/tbptt-toy[-TAG]-cpu.json`` (``{"runs": {name: {"acc": {length: mean accuracy over the seeds},
"seeds": {seed: {"acc", "half_life": [layer], "final_loss", "seconds"}}, "tokens_read"}}, "settings",
"device"}``, after every run; each of ``--seeds`` trains every run from its own initialisation and data; a seed
already in the file is kept, so an interrupted study goes on where it stopped; other settings need
their own ``--tag``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from passing_toy import CONFIG, half_lives
from toy_needle import accuracy, answer_loss, make_model, rows, update

from lizardlm.train.state_passing import StatePassing


def tbptt_loss(model: torch.nn.Module, passing: StatePassing, docs: torch.Tensor, row: int) -> torch.Tensor:
    """The answer's loss on ``docs`` read ``row`` tokens at a time: the first row from an empty memory,
    each later one from the memory the one before left; all but the last row without gradient."""
    loss_fn = answer_loss(model)
    pieces = docs.split(row, dim=1)
    for i, piece in enumerate(pieces):
        passing.allow(torch.full((docs.shape[0],), i > 0))
        passing.start(piece)
        if i + 1 < len(pieces):
            with torch.no_grad():
                model(input_ids=piece, use_cache=False)
        else:
            loss = loss_fn(piece)
        passing.keep()
    return loss


def fit(model: torch.nn.Module, args: argparse.Namespace, kind: str, length: int, seed: int) -> tuple[float, int]:
    """``args.steps`` AdamW steps of run ``kind`` (``rows`` / ``tbptt`` / ``mixed`` / ``then`` / ``full``) with documents
    of ``length`` tokens, data drawn from ``seed``; the last step's loss and the tokens read."""
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed + 1)
    plain = answer_loss(model)
    passing = StatePassing(model, 1.0)
    tokens = 0
    with passing:
        for step in range(1, args.steps + 1):
            long = kind == "tbptt" or (kind == "mixed" and step % 2 == 0) or (
                kind == "then" and step > args.steps // 2 and step % 2 == 0)
            if long:
                docs = rows(args.batch, length, gen)
                loss = tbptt_loss(model, passing, docs, args.row)
            else:
                docs = rows(args.batch, length if kind == "full" else args.row, gen)
                loss = plain(docs)
            tokens += docs.numel()
            update(loss, params, opt)
            if step % args.log_every == 0:
                print(f"  step {step}: loss {loss.item():.3f}", flush=True)
    return loss.item(), tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--runs", default="rows,tbptt-256,mixed-256,full-256,tbptt-1024,mixed-1024",
                   help="rows, tbptt-D, mixed-D, then-D, full-D (comma-separated)")
    p.add_argument("--row", type=int, default=64, help="tokens per training row")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lengths", default="64,256,1024,4096")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--tag", default="", help="write tbptt-toy-TAG-cpu.json (a study of other settings)")
    args = p.parse_args()
    path = args.out / f"tbptt-toy{'-' + args.tag if args.tag else ''}-cpu.json"
    seeds = [int(x) for x in args.seeds.split(",")]
    settings = {"config": CONFIG, "row": args.row, "steps": args.steps, "batch": args.batch, "lr": args.lr,
                "lengths": args.lengths.split(","), "model": "toy_needle.py's 2-layer Llama, window 16"}
    result = json.loads(path.read_text()) if path.exists() else {"runs": {}, "settings": settings, "device": "cpu"}
    if result["settings"] != settings:
        raise SystemExit(f"{path} holds runs of other settings ({result['settings']}): give this study a --tag")
    lengths = [int(x) for x in args.lengths.split(",")]
    for name in args.runs.split(","):
        kind, _, doc = name.partition("-")
        if kind not in ("rows", "tbptt", "mixed", "then", "full") or (kind == "rows") != (not doc):
            raise SystemExit(f"unknown run {name!r}: rows, tbptt-D, mixed-D, then-D or full-D")
        length = int(doc or args.row)
        if length % args.row:
            raise SystemExit(f"run {name!r}: the document length must be a multiple of --row {args.row}")
        record = result["runs"].get(name, {"seeds": {}})
        for seed in (seed for seed in seeds if str(seed) not in record["seeds"]):  # a seed already run is kept
            print(f"{name}, seed {seed}", flush=True)
            started = time.perf_counter()
            model = make_model(CONFIG, seed)
            final, record["tokens_read"] = fit(model, args, kind, length, seed)
            record["seeds"][str(seed)] = {"acc": {str(L): accuracy(model, L) for L in lengths},
                                          "half_life": half_lives(model, args.row), "final_loss": round(final, 4),
                                          "seconds": round(time.perf_counter() - started, 1)}
            print(json.dumps(record["seeds"][str(seed)]), flush=True)
            runs = list(record["seeds"].values())
            record["acc"] = {str(L): sum(r["acc"][str(L)] for r in runs) / len(runs) for L in lengths}
            result["runs"][name] = record
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
