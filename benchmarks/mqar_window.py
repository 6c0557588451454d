"""Does the linear memory answer any MQAR query? Accuracy split by whether the window sees the pair.

For the MQAR prompts that ``lizardlm eval --tasks mqar`` scores (the same generator, vocabulary and
seed; ``--pairs`` pairs padded to each length), a query at position ``q`` is *inside* a window of
``w`` tokens when its pair's key, at position ``k`` (the pair is ``key : value``), satisfies
``q - k < w``: the window alone then sees the whole pair. A student that scores only inside the
window gets nothing from its linear memory::

    python benchmarks/mqar_window.py --models smollm2-135m,RUN_DIR --out benchmarks/results   # CPU

writes ``<out>/mqar-window-cpu.json``: ``{"device", "dtype", "share": {"<window>": {"<length>": share of queries
inside}}, "models": {"<name>": {"<length>": {"acc", "inside", "outside", "n_inside", "n_outside"}}},
"settings"}`` (``inside``/``outside``: accuracy of those queries at ``--window``; ``null`` where there
are none). Greedy next-token accuracy at each query, as the eval scores it. About 4 minutes a model
on 2 cores for the default 50 prompts at 128-1024 tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lizardlm.eval.mqar import MQARPrompt, make_prompts, query_hits  # noqa: E402
from lizardlm.loading import load_any  # noqa: E402
from lizardlm.progress import progress  # noqa: E402


def query_distances(prompt: MQARPrompt) -> list[int]:
    """For each query of ``prompt``, how many tokens back its pair's key lies (``q - k``)."""
    first = {}
    for i, token in enumerate(prompt.input_ids):
        first.setdefault(token, i)  # a key's first occurrence is its pair, before the queries
    key_of = {value: key for key, value in prompt.pairs}
    return [q - first[key_of[target]] for q, target in zip(prompt.query_positions, prompt.targets)]


def window_share(prompts: list[MQARPrompt], window: int) -> float:
    """Share of all queries of ``prompts`` whose pair lies inside a window of ``window`` tokens."""
    distances = [d for p in prompts for d in query_distances(p)]
    return sum(d < window for d in distances) / len(distances)


def score_split(model, prompts: list[MQARPrompt], window: int, batch: int = 8) -> dict:
    """Greedy accuracy at the queries of ``prompts`` (equal lengths, scored as the eval scores them),
    overall and inside / outside ``window``."""
    hits = {True: [], False: []}
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        for p, right in zip(chunk, query_hits(model, chunk)):
            for ok, d in zip(right, query_distances(p)):
                hits[d < window].append(ok)
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"acc": mean(hits[True] + hits[False]), "inside": mean(hits[True]), "outside": mean(hits[False]),
            "n_inside": len(hits[True]), "n_outside": len(hits[False])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--models", default="smollm2-135m", help="comma-separated teachers or Lizard run directories")
    p.add_argument("--names", default=None, help="comma-separated names for --models (default: as given)")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--lengths", default="128,256,512,1024")
    p.add_argument("--samples", type=int, default=50, help="prompts a length (the eval's --mqar-samples)")
    p.add_argument("--windows", default="64,128", help="windows whose share of queries is reported")
    p.add_argument("--window", type=int, default=128, help="the models' window, for the inside/outside split")
    p.add_argument("--seed", type=int, default=0, help="the eval's --seed")
    args = p.parse_args(argv)
    models = args.models.split(",")
    names = args.names.split(",") if args.names else models
    if len(names) != len(models):
        p.error("--names needs one name per model")
    lengths = [int(x) for x in args.lengths.split(",")]
    prompts: dict[int, list[MQARPrompt]] = {}
    result: dict = {"device": "cpu", "dtype": "float32", "share": {}, "models": {},
                    "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    for name, spec in zip(names, models):
        model, tokenizer = load_any(spec)
        model.eval()
        if not prompts:  # one set for every model, from the first one's tokenizer
            prompts = {L: make_prompts(tokenizer, args.pairs, args.samples, seq_len=L, seed=args.seed) for L in lengths}
            result["share"] = {w: {str(L): round(window_share(prompts[L], int(w)), 4) for L in lengths}
                               for w in args.windows.split(",")}
        with progress(total=len(lengths), desc=f"mqar {name}", unit="length") as bar:
            result["models"][name] = {}
            for L in lengths:
                result["models"][name][str(L)] = score_split(model, prompts[L], args.window)
                bar.update(1)
        print(name, json.dumps(result["models"][name]), flush=True)
        del model
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mqar-window-cpu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("share", json.dumps(result["share"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
