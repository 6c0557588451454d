"""Does state passing keep a student's perplexity flat past its training length? A small CPU pilot.

The same short-row recipe on the embedded teacher without and with stage 2's ``--state-passing P``
(one run per P and data spec; every other setting and the seed equal), then perplexity by position
on held-out long-docs books to ``--eval-len`` tokens (16x the training rows by default), teacher
beside them::

    python benchmarks/state_passing_pilot.py --out benchmarks/results   # ~35 min a run on 2 cores
    python benchmarks/state_passing_pilot.py --data alpaca-cleaned,long-docs@train --state-passing 0.9,0.5

writes ``<out>/state-passing-pilot-cpu.json`` (``{"device", "settings", "runs": {"<data>/<name>": {"data",
"linearize", "summary"}}, "longppl": {"<name>": {"bucket_start", "bucket_end", "ppl"}}}``) and a plot
beside it. ``long-docs@train`` is the books the evaluation does not read: long coherent documents,
against Alpaca-cleaned's short examples packed into rows.
Rows are short (256 tokens, window 32, gate 0.999: half-life ~700 tokens) so that 16x the
training length fits a CPU; the H200 runs use 2K rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = ["--teacher", "smollm2-135m", "--preset", "cpu-demo", "--seq-len", "256",
          "--batch-size", "8", "--val-tokens", "8192", "--window-size", "32", "--feature-dim", "64",
          "--gate-init", "0.999", "--write-gate", "head", "--stage2-train-lizard", "--device", "cpu"]


def train(out: Path, name: str, data: str, stage1: int, stage2: int, extra: list[str]) -> dict:
    """``lizardlm linearize`` on ``data`` into ``out/name`` (resumed if cut, kept if finished); its
    command, seconds and validation results."""
    cmd = [sys.executable, "-m", "lizardlm", "linearize", *RECIPE, "--data", data, "--stage1-tokens", str(stage1),
           "--stage2-tokens", str(stage2), "--out", str(out / name), *extra]
    if not (out / name / "summary.json").exists():
        done = subprocess.run(cmd + (["--resume"] if (out / name / "run.json").exists() else []),
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name}: lizardlm linearize failed:\n{done.stderr[-2000:]}")
    summary = json.loads((out / name / "summary.json").read_text())
    return {"data": data, "linearize": " ".join(cmd[2:]), "train_seconds": round(summary["stage1_seconds"] + summary["stage2_seconds"], 1),
            "summary": {k: v for k, v in summary.items() if k.endswith(("val_loss", "val_ppl"))}}


def longppl(model, tokenizer, length: int, windows: int, first: int) -> dict:
    from lizardlm.eval.longppl import longppl_eval
    from lizardlm.eval.report import EvalConfig, _held_out_books

    books = [doc.text for doc in _held_out_books(EvalConfig())]
    r = longppl_eval(model, tokenizer, books, seq_len=length, first_bucket=first, max_windows=windows)
    return {k: r[k] for k in ("bucket_start", "bucket_end", "ppl", "windows")}


def plot(curves: dict, train_len: int, path: Path) -> None:
    """Each student's perplexity over the teacher's, by position (the books' own difficulty cancels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = curves["teacher"]
    students = [name for name in curves if name != "teacher"]
    datas = list(dict.fromkeys(name.rpartition("/")[0] for name in students))
    passings = list(dict.fromkeys(name.rpartition("/")[2] for name in students))
    fig, ax = plt.subplots(figsize=(10, 4))
    for name in students:
        c, (data, _, passing) = curves[name], name.rpartition("/")
        mids = [(s + e) / 2 for s, e in zip(c["bucket_start"], c["bucket_end"])]
        ax.plot(mids, [p / t for p, t in zip(c["ppl"], teacher["ppl"])], marker="o", label=name,
                color=f"C{passings.index(passing)}", ls=["-", "--", ":", "-."][datas.index(data) % 4])
    ax.axvline(train_len, color="grey", ls=":", label=f"training rows ({train_len})")
    ax.set(xscale="log", xlabel="position (tokens)", ylabel="perplexity / teacher's",
           title="Held-out books by position: state passing and contiguous rows (CPU pilot)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--work", default="/tmp/state-passing-pilot", help="run directories (resumed if present)")
    p.add_argument("--data", default="alpaca-cleaned", help="comma-separated data specs, each trained without and with state passing")
    p.add_argument("--state-passing", default="0.9", help="comma-separated probabilities, one run each")
    p.add_argument("--stage1-tokens", type=int, default=65_536)
    p.add_argument("--stage2-tokens", type=int, default=196_608)
    p.add_argument("--eval-len", type=int, default=4096)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--contiguous", default="", help="comma-separated data specs (of --data) also trained with contiguous "
                   "rows (--row-order contiguous), once for each P of --contiguous-passing")
    p.add_argument("--contiguous-passing", default="1", help="comma-separated probabilities of the contiguous runs")
    p.add_argument("--trained-only", action="store_true",
                   help="train nothing: evaluate and record the runs whose training has finished")
    p.add_argument("--plot-only", action="store_true", help="redraw the plot from <out>'s JSON")
    args = p.parse_args()
    out = Path(args.out)
    if args.plot_only:
        result = json.loads((out / "state-passing-pilot-cpu.json").read_text())
        plot(result["longppl"], 256, out / "state-passing-pilot-cpu.png")
        return

    import torch

    from lizardlm.loading import load_any

    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    contiguous = [data for data in args.contiguous.split(",") if data]
    if set(contiguous) - set(args.data.split(",")):
        sys.exit(f"--contiguous {args.contiguous}: each must be one of --data {args.data}")
    runs = {}
    for data in args.data.split(","):
        runs[f"{data}/no-passing"] = (data, [])
        if data in contiguous:
            runs.update({f"{data}/contiguous-{float(p):g}": (data, ["--state-passing", p, "--row-order", "contiguous"])
                         for p in args.contiguous_passing.split(",")})
        runs.update({f"{data}/passing-{float(p):g}": (data, ["--state-passing", p]) for p in args.state_passing.split(",")})
    if args.trained_only:
        runs = {name: run for name, run in runs.items() if (work / name / "summary.json").exists()}
    settings = {k: v for k, v in vars(args).items() if k not in ("plot_only", "trained_only")}
    result = {"device": "cpu", "settings": {**settings, "recipe": " ".join(RECIPE)}, "runs": {}, "longppl": {}}
    for name, (data, extra) in runs.items():
        result["runs"][name] = train(work, name, data, args.stage1_tokens, args.stage2_tokens, extra)
        print(name, result["runs"][name], file=sys.stderr, flush=True)
    for name, ref in {"teacher": "smollm2-135m", **{n: str(work / n) for n in runs}}.items():
        model, tokenizer = load_any(ref)
        result["longppl"][name] = longppl(model, tokenizer, args.eval_len, args.windows, first=128)
        print(name, [round(x, 2) for x in result["longppl"][name]["ppl"]], file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "state-passing-pilot-cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result["longppl"], 256, out / "state-passing-pilot-cpu.png")


if __name__ == "__main__":
    main()
