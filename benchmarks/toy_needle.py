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
"acc": {length: accuracy}, "ceiling", "seconds"}}, "settings"}``; ``ceiling`` is the accuracy with the
needle inside the window, see ``INSIDE``; written after every run, and a run already
in it is kept) and ``toy-needle-cpu.png``. A converted teacher's failure to retrieve (the passkey
table) is a question of training when this works, and of the layer when it does not.

``--grid`` asks where long prompts fail: each run trained as above is evaluated with its needle placed
after ``pre`` filler tokens and ``dist`` tokens before the query, for every pair of ``--grid-pre`` and
``--grid-dist`` (prompts up to 32x the training length), at every ``--decay-scales`` S for gated forms
(``model.set_decay_scale``: every half-life times 1/S). It writes ``toy-needle-grid-cpu.json`` (each
run's ``"grid": {S: {pre: {dist: accuracy}}}``) and ``toy-needle-grid-cpu.png``.

The ``converted:`` runs ask the pipeline's question at this scale: the trained softmax model is the
teacher, converted to a form, then stage 1 (attention transfer: the summed per-layer MSE to the
teacher's attention outputs, only the Lizard parameters train, ``--stage1-steps``, LR 1e-2) and
stage 2 (LoRA rank 8 on q/k/v/o, next-token loss on the answer, ``--stage2-steps``, LR 1e-3),
as ``lizardlm linearize`` does with a pretrained teacher.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lizardlm  # noqa: E402
from lizardlm.layers import LizardAttention, attention_transfer  # noqa: E402

VOCAB, MARKER, QUERY = 256, 1, 2
VALUES, FILLER = (4, 68), (68, 256)
GAP = 24
"""The needle sits at least this many tokens before the query: beyond the 16-token window."""
INSIDE = 6
"""The in-window probe's needle: this many tokens before the query, inside the window (a distance
training never uses). For the softmax model, which matches content at any distance, its accuracy
is the share of values it learned to emit at all."""
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
CONVERTED = ("lizard", "lizard+write+read", "lolcats", "paper")
"""Forms also run as ``converted:<form>``: the trained softmax model linearized by stage 1 + stage 2."""
ALL_RUNS = (*RUNS, *(f"converted:{form}" for form in CONVERTED))


def rows(batch: int, length: int, gen: torch.Generator, inside: bool = False, k: int = 1) -> torch.Tensor:
    """``(batch, length)`` task rows: filler, ``MARKER v_1..v_k`` at a random position at least ``GAP``
    tokens before the answer (``inside``: ending ``INSIDE - 1`` tokens before ``QUERY``, within the
    window), ``QUERY v_1..v_k`` at the end."""
    ids = torch.randint(*FILLER, (batch, length), generator=gen)
    pos = (torch.full((batch,), length - INSIDE - 2 * (k - 1)) if inside
           else torch.randint(0, length - GAP - 2 * (k - 1), (batch,), generator=gen))
    value = torch.randint(*VALUES, (batch, k), generator=gen)
    at = pos[:, None] + torch.arange(1, k + 1)
    ids[torch.arange(batch), pos] = MARKER
    ids.scatter_(1, at, value)
    ids[:, -k - 1] = QUERY
    ids[:, -k:] = value
    return ids


def placed_rows(n: int, pre: int, dist: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` rows of ``pre`` filler tokens, ``MARKER v``, ``dist`` filler tokens, then ``QUERY v``."""
    ids = torch.randint(*FILLER, (n, pre + dist + 4), generator=gen)
    value = torch.randint(*VALUES, (n,), generator=gen)
    ids[:, pre], ids[:, pre + 1] = MARKER, value
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
def exact_match(model: torch.nn.Module, make_rows, n: int, batch: int = 32, k: int = 1) -> float:
    """Share of ``n`` rows (``make_rows(size)`` draws ``size`` of them) whose ``k`` answer tokens the greedy
    model gets all right, each given the ones before it."""
    model.eval()
    hits = 0
    for start in range(0, n, batch):
        ids = make_rows(min(batch, n - start))
        guess = model(input_ids=ids[:, :-1], use_cache=False, logits_to_keep=k).logits.argmax(-1)
        hits += int((guess == ids[:, -k:]).all(-1).sum())
    model.train()
    return hits / n


def accuracy(model: torch.nn.Module, length: int, n: int = 128, batch: int = 32, inside: bool = False,
             k: int = 1) -> float:
    """Exact match of the greedy answer after ``QUERY`` on ``n`` fixed rows of ``length`` tokens."""
    gen = torch.Generator().manual_seed(12345 + length)
    return exact_match(model, lambda size: rows(size, length, gen, inside, k), n, batch, k)


def grid_accuracy(model: torch.nn.Module, pres: list[int], dists: list[int], n: int = 128, batch: int = 32
                  ) -> dict[str, dict[str, float]]:
    """Exact match of the one-token value by the filler before the needle and its distance to the query:
    ``{pre: {dist: accuracy}}``, on ``n`` fixed rows per cell."""
    grid: dict[str, dict[str, float]] = {}
    for pre in pres:
        for dist in dists:
            gen = torch.Generator().manual_seed(777 + pre + 7919 * dist)
            grid.setdefault(str(pre), {})[str(dist)] = exact_match(
                model, lambda size: placed_rows(size, pre, dist, gen), n, batch)
    return grid


def is_gated(model: torch.nn.Module) -> bool:
    return any(getattr(m, "gate", None) is not None for m in model.modules() if isinstance(m, LizardAttention))


def answer_loss(model: torch.nn.Module):
    """Next-token loss on the answer tokens (those after ``QUERY``) only."""

    def loss_fn(ids: torch.Tensor) -> torch.Tensor:
        answer = ((ids == QUERY).cumsum(-1) > 0) & (ids != QUERY)
        return model(input_ids=ids, labels=torch.where(answer, ids, -100), use_cache=False).loss

    return loss_fn


def transfer_loss(model: torch.nn.Module):
    """Stage 1's loss, as in ``lizardlm linearize``: the summed per-layer MSE to the teacher's attention
    outputs, each layer's term backpropagated as it arises (returned detached)."""

    def loss_fn(ids: torch.Tensor) -> torch.Tensor:
        with attention_transfer(model, backward=True) as layers:
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            return torch.stack([layer.transfer_loss for layer in layers]).sum()

    return loss_fn


def update(loss: torch.Tensor, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
           backward: bool = True) -> None:
    """One optimizer step on ``loss``: its backward (unless the loss function ran it), gradients clipped
    to norm 1, the step, gradients cleared."""
    if backward:
        loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def fit(model: torch.nn.Module, params: list[torch.nn.Parameter], loss_fn, steps: int, lr: float,
        args: argparse.Namespace, curve: list, backward: bool = True, curriculum: int = 0) -> None:
    """``steps`` AdamW steps on fresh task rows, appending ``[step, loss, acc@T]`` to ``curve`` (steps
    counted on from its last entry); the first ``curriculum`` steps on one-token values."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    first = curve[-1][0] if curve else 0
    gen = torch.Generator().manual_seed(args.seed + 1 + first)
    for step in range(1, steps + 1):
        k = 1 if first + step <= curriculum else args.value_tokens
        loss = loss_fn(rows(args.batch, args.length, gen, k=k))
        update(loss, params, opt, backward)
        if step % args.eval_every == 0 or step == steps:
            curve.append([first + step, round(loss.item(), 4), accuracy(model, args.length, n=64, k=args.value_tokens)])
            print(f"  step {first + step}: loss {loss.item():.3f}, acc@{args.length} {curve[-1][2]:.3f}", flush=True)


def train(config: dict | None, args: argparse.Namespace) -> tuple[dict, torch.nn.Module]:
    """A model of ``config`` (None: softmax) trained from scratch; its record and the model."""
    started, curve = time.perf_counter(), []
    model = make_model(config, args.seed)
    k = args.value_tokens
    fit(model, list(model.parameters()), answer_loss(model), args.steps, args.lr, args, curve,
        curriculum=args.curriculum)
    record = {"config": config, "curve": curve, "acc": {str(L): accuracy(model, L, k=k) for L in args.lengths},
              "ceiling": accuracy(model, args.length, inside=True, k=k),
              "seconds": round(time.perf_counter() - started, 1)}
    return record, model


def linearize(teacher: torch.nn.Module, config: dict, args: argparse.Namespace) -> dict:
    """``teacher`` converted to ``config``, then stage 1 and stage 2 (module docstring)."""
    from peft import LoraConfig, get_peft_model

    started, curve = time.perf_counter(), []
    model = lizardlm.convert(copy.deepcopy(teacher), lizardlm.LizardConfig(**BASE, **config)).requires_grad_(False)
    lizard = list(model.lizard_parameters())
    for p in lizard:
        p.requires_grad_(True)
    fit(model, lizard, transfer_loss(model), args.stage1_steps, 1e-2, args, curve, backward=False)
    k = args.value_tokens
    after_stage1 = {str(L): accuracy(model, L, k=k) for L in args.lengths}
    for p in lizard:
        p.requires_grad_(False)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    lora = [p for p in peft.parameters() if p.requires_grad]
    fit(peft, lora, answer_loss(peft), args.stage2_steps, 1e-3, args, curve)
    return {"config": config, "teacher": "softmax", "stage1_steps": args.stage1_steps,
            "stage2_steps": args.stage2_steps, "curve": curve, "acc_after_stage1": after_stage1,
            "acc": {str(L): accuracy(peft, L, k=k) for L in args.lengths},
            "ceiling": accuracy(peft, args.length, inside=True, k=k), "seconds": round(time.perf_counter() - started, 1)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, run in result["runs"].items():
        steps, _, acc = zip(*run["curve"])
        left.plot(steps, acc, marker=".", label=name, ls="--" if name.startswith("converted:") else "-")
    s = result["settings"]
    left.set(title=f"accuracy at {s['length']} tokens while training (dashed: stage 1 then 2)", xlabel="step",
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


def scaled_grids(model: torch.nn.Module, settings: dict) -> dict[str, dict]:
    """``{S: grid_accuracy}`` at every decay scale S (only S = 1 for a model without gates)."""
    grids, gated = {}, is_gated(model)
    for scale in settings["decay_scales"] if gated else [1.0]:
        if gated:
            model.set_decay_scale(scale)
        grids[f"{scale:g}"] = grid_accuracy(model, settings["grid_pre"], settings["grid_dist"])
        print(f"  decay scale {scale:g}: {grids[f'{scale:g}']}", flush=True)
    if gated:
        model.set_decay_scale(1.0)
    return grids


def plot_grid(result: dict, path: Path) -> None:
    """One heat map per run and decay scale: accuracy by the filler before the needle (rows) and the
    needle's distance to the query (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, scale, grid) for name, run in result["runs"].items() for scale, grid in run.get("grid", {}).items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), squeeze=False)
    s = result["settings"]
    for ax, (name, scale, grid) in zip(axes[0], panels):
        values = [[grid[str(pre)][str(dist)] for dist in s["grid_dist"]] for pre in s["grid_pre"]]
        ax.imshow(values, vmin=0, vmax=1, cmap="RdYlGn")
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(s["grid_dist"])), s["grid_dist"])
        ax.set_yticks(range(len(s["grid_pre"])), s["grid_pre"])
        ax.set(title=f"{name}, decay scale {scale}", xlabel="needle -> query (tokens)", ylabel="filler before the needle")
    fig.suptitle(f"trained at {s['length']} tokens: where the needle is lost", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--runs", default=",".join(ALL_RUNS), help="comma-separated run names (default: all)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=256, help="training length")
    p.add_argument("--lengths", default="256,1024,4096", help="evaluation lengths")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--stage1-steps", type=int, default=300, help="converted runs: attention-transfer steps")
    p.add_argument("--stage2-steps", type=int, default=300, help="converted runs: LoRA steps")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--value-tokens", type=int, default=1,
                   help="tokens per value (a passkey's digits); other than 1: writes toy-needle-v<K>-cpu.json/.png")
    p.add_argument("--curriculum", type=int, default=0,
                   help="train the first N steps of a run from scratch on one-token values (of --steps)")
    p.add_argument("--grid", action="store_true", help="evaluate each run by the filler before the needle and its "
                   "distance to the query (module docstring); writes toy-needle-grid-cpu.json/.png")
    p.add_argument("--grid-pre", default="0,256,1024,4096", help="with --grid: filler tokens before the needle")
    p.add_argument("--grid-dist", default="32,256,1024,4096", help="with --grid: tokens from the needle to the query")
    p.add_argument("--decay-scales", default="1,0.25", help="with --grid: decay scales for gated forms")
    args = p.parse_args(argv)
    if args.grid and (args.value_tokens != 1 or any(n.startswith("converted:") for n in args.runs.split(","))):
        p.error("--grid evaluates one-token values of runs trained from scratch (no --value-tokens, no converted: runs)")
    if args.value_tokens < 1 or args.curriculum < 0:
        p.error(f"--value-tokens must be >= 1 and --curriculum >= 0, got {args.value_tokens} and {args.curriculum}")
    args.lengths = [int(L) for L in args.lengths.split(",")]
    unknown = [n for n in args.runs.split(",") if n not in ALL_RUNS]
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {', '.join(ALL_RUNS)}")
    stem = ("toy-needle-grid-cpu" if args.grid else "toy-needle-cpu" if args.value_tokens == 1
            else f"toy-needle-v{args.value_tokens}-cpu")
    out = args.out / f"{stem}.json"
    settings = {k: getattr(args, k) for k in ("steps", "batch", "length", "lengths", "lr", "seed", "stage1_steps",
                                              "stage2_steps")}
    settings.update(gap=GAP, inside=INSIDE, base=BASE,
                    model="2-layer Llama, hidden 128, 4 heads, 2 kv heads, all parameters trained")
    if args.value_tokens != 1:
        settings.update(value_tokens=args.value_tokens, curriculum=args.curriculum)
    if args.grid:
        settings.update(grid_pre=[int(x) for x in args.grid_pre.split(",")],
                        grid_dist=[int(x) for x in args.grid_dist.split(",")],
                        decay_scales=[float(x) for x in args.decay_scales.split(",")])
    result = json.loads(out.read_text()) if out.exists() else {}
    if result.get("settings") != settings:
        result = {"settings": settings, "device": "cpu", "runs": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = None
    for name in args.runs.split(","):
        if name in result["runs"]:
            continue
        print(f"{name}:", flush=True)
        form = name.removeprefix("converted:")
        if form != name:
            if teacher is None:  # the softmax run is deterministic: trained again when resumed
                print("  (the teacher: softmax)", flush=True)
                teacher = train(None, args)[1]
            result["runs"][name] = linearize(teacher, RUNS[form], args)
        else:
            result["runs"][name], model = train(RUNS[name], args)
            teacher = model if name == "softmax" else teacher
            if args.grid:
                result["runs"][name]["grid"] = scaled_grids(model, settings)
        print(f"  {name}: {result['runs'][name]['acc']} in {result['runs'][name]['seconds']} s", flush=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        (plot_grid if args.grid else plot)(result, args.out / f"{stem}.png")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
