"""Does a passed memory of other needles teach the gates to forget? The needle toy, with state passing.

On the H200, mixr2k's passkey mix trained with every row starting (P = 0.9) from the memory of the
passkey documents before it in its lane retrieved worse past its 2K rows than the same mix without
state passing (``benchmarks/NOTES.md``). The reading: a row whose passed memory holds other documents'
bindings of the same phrases gains nothing from it, so training shortens the gates' memory. This toy
asks it on CPU, from scratch, in minutes: the ``lizard+write`` form of ``benchmarks/toy_needle.py``
(2-layer Llama, window 16, write gate; all parameters trained on the answer's loss), trained on its
256-token needle rows

* ``none``: every row starts from an empty memory (as ``toy_needle.py``);
* ``needles-P``: each row starts, with probability P, from the memory that the previous batch's row
  in its slot left, a row holding another needle behind the same marker (the passkey lanes' case);
* ``filler-P``: the same, but the passed memory is that of a row of filler alone (run without loss
  just before), text that neither helps nor misleads (a memory to bear, with no binding in it).

Evaluated from an empty memory: exact match at 256, 1024 and 4096 tokens (the needle uniform over the
row, as ``toy_needle.py``), and each layer's gate half-life ``ln(1/2) / mean log-decay`` on those rows::

    python benchmarks/passing_toy.py --out benchmarks/results     # ~4 min a run on 2 cores

writes ``<out>/passing-toy-cpu.json`` (``{"runs": {name: {"acc": {length: accuracy}, "half_life":
[layer], "final_loss", "seconds"}}, "settings"}``, after every run).
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from toy_needle import FILLER, accuracy, answer_loss, make_model, rows, update

from lizardlm.eval.diagnostics import decay_stats
from lizardlm.layers import LizardAttention
from lizardlm.train.state_passing import StatePassing

CONFIG = dict(mode="lizard", write_gate="head")


def fit(model: torch.nn.Module, args: argparse.Namespace, passing: str, probability: float) -> float:
    """``args.steps`` AdamW steps on fresh needle rows, with the rows' memories handed on as ``passing``
    says (``none`` / ``needles`` / ``filler``); the last step's loss."""
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed + 1)
    loss_fn = answer_loss(model)
    state = StatePassing(model, probability) if passing != "none" else None
    with state or nullcontext():
        for step in range(1, args.steps + 1):
            ids = rows(args.batch, args.length, gen)
            if passing == "filler":  # the memory handed to these rows is that of filler alone
                with torch.no_grad():
                    state.start(ids)
                    model(input_ids=torch.randint(*FILLER, ids.shape, generator=gen), use_cache=False)
                    state.keep()
            if state is None:
                loss = loss_fn(ids)
            else:
                state.start(ids)
                loss = loss_fn(ids)
                state.keep()
            update(loss, params, opt)
            if step % args.log_every == 0:
                print(f"  step {step}: loss {loss.item():.3f}", flush=True)
    return loss.item()


@torch.no_grad()
def half_lives(model: torch.nn.Module, length: int, n: int = 32) -> list[float | None]:
    """Each Lizard layer's gate half-life in tokens, from its mean log-decay over ``n`` needle rows."""
    layers = [m for m in model.modules() if isinstance(m, LizardAttention)]
    sums = [0.0] * len(layers)
    for i, layer in enumerate(layers):
        def capture(_layer, inputs, i=i):
            sums[i] += float(inputs["g"].float().mean())
        layer.capture = capture
    model.eval()
    try:
        model(input_ids=rows(n, length, torch.Generator().manual_seed(4242)), use_cache=False)
    finally:
        for layer in layers:
            layer.capture = None
    return [decay_stats(s)["half_life"] for s in sums]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--runs", default="none,needles-0.9,filler-0.9", help="none, needles-P, filler-P (comma-separated)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--lengths", default="256,1024,4096")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args()
    path = args.out / "passing-toy-cpu.json"
    result = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    result["settings"] = {"config": CONFIG, "steps": args.steps, "batch": args.batch, "length": args.length,
                          "lr": args.lr, "seed": args.seed, "model": "toy_needle.py's 2-layer Llama, window 16"}
    lengths = [int(x) for x in args.lengths.split(",")]
    for name in args.runs.split(","):
        passing, _, prob = name.partition("-")
        if passing not in ("none", "needles", "filler"):
            raise SystemExit(f"unknown run {name!r}: none, needles-P or filler-P")
        print(name, flush=True)
        started = time.perf_counter()
        model = make_model(CONFIG, args.seed)
        final = fit(model, args, passing, float(prob or 0))
        result["runs"][name] = {"acc": {str(L): accuracy(model, L) for L in lengths},
                                "half_life": half_lives(model, args.length), "final_loss": round(final, 4),
                                "seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps(result["runs"][name]), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
