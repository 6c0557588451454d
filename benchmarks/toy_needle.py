"""Can the layer retrieve beyond its window at all? A needle lookup learned from scratch on CPU.

Every Lizard form is trained, all parameters, from the same random 2-layer Llama (hidden 128, 4
heads, 2 key/value heads) on one synthetic task, beside the softmax model itself (the ceiling):
a row of ``T`` random filler tokens holds a marker ``M`` followed by a value token ``v`` at a
uniform position at least ``GAP`` tokens before the end (so always outside the 16-token window);
the row ends with a query token ``Q``, and the target after ``Q`` is ``v``. Only that token carries
loss. Accuracy is exact match of the greedy prediction after ``Q``, on 128 fresh rows per length,
at the training length and beyond it::

    python benchmarks/toy_needle.py --out benchmarks/results          # ~25 min on 2 cores

writes ``<out>/toy-needle-cpu.json`` (``{"runs": {name: {"config", "curve": [[step, loss, acc@T]],
"acc": {length: accuracy}, "seconds"}}, "settings"}``; written after every run, and a run already
in it is kept) and ``toy-needle-cpu.png``. A converted teacher's failure to retrieve (the passkey
table) is a question of training when this works, and of the layer when it does not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lizardlm  # noqa: E402

VOCAB, MARKER, QUERY = 256, 1, 2
VALUES, FILLER = (4, 68), (68, 256)
GAP = 24
"""The needle sits at least this many tokens before the query: beyond the 16-token window."""
BASE = dict(window_size=16, feature_dim=16, num_meta_tokens=2, chunk_size=32)
RUNS: dict[str, dict | None] = {
    "softmax": None,
    "lizard": dict(mode="lizard"),
    "lizard+write": dict(mode="lizard", write_gate="head"),
    "lizard+read": dict(mode="lizard", read_gate="head"),
    "lizard+write+read": dict(mode="lizard", write_gate="head", read_gate="head"),
    "lolcats": dict(mode="lolcats"),
    "paper": dict(mode="paper"),
}
"""Run name -> LizardConfig fields on top of ``BASE`` (None: the softmax model unconverted)."""


def rows(batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``(batch, length)`` task rows: filler, ``MARKER v`` at a random position, ``QUERY v`` at the end."""
    ids = torch.randint(*FILLER, (batch, length), generator=gen)
    pos = torch.randint(0, length - GAP, (batch,), generator=gen)
    value = torch.randint(*VALUES, (batch,), generator=gen)
    ids[torch.arange(batch), pos] = MARKER
    ids[torch.arange(batch), pos + 1] = value
    ids[:, -2], ids[:, -1] = QUERY, value
    return ids


def make_model(config: dict | None, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16384, attn_implementation="sdpa"))
    if config is not None:
        model = lizardlm.convert(model, lizardlm.LizardConfig(**BASE, **config))
    return model.requires_grad_(True)


@torch.no_grad()
def accuracy(model: torch.nn.Module, length: int, n: int = 128, batch: int = 32) -> float:
    """Exact match of the greedy token after ``QUERY`` on ``n`` fixed rows of ``length`` tokens."""
    model.eval()
    gen, hits = torch.Generator().manual_seed(12345 + length), 0
    for start in range(0, n, batch):
        ids = rows(min(batch, n - start), length, gen)
        hits += int((model(input_ids=ids[:, :-1], use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1)
                     == ids[:, -1]).sum())
    model.train()
    return hits / n


def train(config: dict | None, args: argparse.Namespace) -> dict:
    model = make_model(config, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen, curve, started = torch.Generator().manual_seed(args.seed + 1), [], time.perf_counter()
    for step in range(1, args.steps + 1):
        ids = rows(args.batch, args.length, gen)
        labels = torch.full_like(ids, -100)
        labels[:, -1] = ids[:, -1]
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.steps:
            curve.append([step, round(loss.item(), 4), accuracy(model, args.length, n=64)])
            print(f"  step {step}: loss {loss.item():.3f}, acc@{args.length} {curve[-1][2]:.3f}", flush=True)
    return {"config": config, "curve": curve, "acc": {str(L): accuracy(model, L) for L in args.lengths},
            "seconds": round(time.perf_counter() - started, 1)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, run in result["runs"].items():
        steps, _, acc = zip(*run["curve"])
        left.plot(steps, acc, marker=".", label=name)
    s = result["settings"]
    left.set(title=f"accuracy at the training length ({s['length']} tokens) while training", xlabel="step",
             ylabel="exact match", ylim=(-0.02, 1.02))
    left.axhline(1 / (VALUES[1] - VALUES[0]), color="grey", ls=":", label="chance")
    left.legend(fontsize=7)
    names, lengths = list(result["runs"]), [str(L) for L in s["lengths"]]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        right.bar([j + i * width for j in range(len(lengths))], [result["runs"][name]["acc"][L] for L in lengths],
                  width=width, label=name)
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(lengths))], [f"{L} tokens" for L in lengths])
    right.set(title="after training: needle found beyond the window", ylabel="exact match", ylim=(0, 1.02))
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated names of RUNS")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=256, help="training length")
    p.add_argument("--lengths", default="256,1024,4096", help="evaluation lengths")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.lengths = [int(L) for L in args.lengths.split(",")]
    unknown = [n for n in args.runs.split(",") if n not in RUNS]
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    out = args.out / "toy-needle-cpu.json"
    settings = {k: getattr(args, k) for k in ("steps", "batch", "length", "lengths", "lr", "seed")}
    settings.update(gap=GAP, base=BASE, model="2-layer Llama, hidden 128, 4 heads, 2 kv heads, all parameters trained")
    result = json.loads(out.read_text()) if out.exists() else {}
    if result.get("settings") != settings:
        result = {"settings": settings, "device": "cpu", "runs": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.runs.split(","):
        if name in result["runs"]:
            continue
        print(f"{name}:", flush=True)
        result["runs"][name] = train(RUNS[name], args)
        print(f"  {name}: {result['runs'][name]['acc']} in {result['runs'][name]['seconds']} s", flush=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        plot(result, args.out / "toy-needle-cpu.png")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
