"""Linearize the embedded teacher with one mode and data spec, then measure long-context memory.

One run per call, through the real CLI (``lizardlm linearize``, then ``lizardlm eval --tasks
passkey,ruler,longppl,diagnostics``), on one GPU::

    python benchmarks/passkey_gpu.py --out benchmarks/results --name lizard-mix --mode lizard \\
        --data mix:alpaca-cleaned=0.8,retrieval=0.2 --stage1-tokens 2097152 --stage2-tokens 2097152 \\
        --seq-len 2048 --with-teacher

writes ``<out>/passkey-<device>.json``::

    {"passkey": {run: {length: accuracy}}, "ruler": {run: {length: mean score}},
     "longppl": {run: {"bucket_start", "bucket_end", "ppl"}}, "diagnostics": {run: per-layer details},
     "runs": {run: {mode, data, budgets, commands, wall seconds, status, summary}}, "device", "versions"}

plus ``"benchmarks": {run: {task: metric}}`` when ``--tasks`` names zero-shot benchmarks (``piqa``...:
the issue's condition that retrieval data costs the zero-shot tasks at most a point).

(``"teacher"`` is a run when ``--with-teacher``; a length that did not run holds its status string),
beside ``passkey-<device>-<run>-heatmap.png`` (depth x length) and ``-diagnostics.png``. ``--merge
FILE`` keeps an earlier call's runs, so runs spread over several 10-minute device calls;
A run directory already under ``--runs`` (a call cut by its deadline) is continued with
``linearize --resume`` (``--fresh`` starts it again); an evaluation cut by the deadline keeps the
tasks it finished (``lizardlm eval`` saves after each), and ``--eval-only`` evaluates a run already under
``--runs`` again, going on from such a cut (``eval --resume``). ``--variant 'NAME|MODE|FLAGS[|DATA]'`` (repeated; DATA replaces ``--data``, e.g.
to compare data options on one budget) trains and evaluates several runs at once, one process each sharing the GPU (a 135M model's steps are launch-bound), with every other
option in common (``--with-teacher`` evaluates the teacher beside the first), and writes their
merged result; ``--combine A.json B.json ...`` only
merges result files of runs made at once in separate processes (each with its own ``--out``) into
``<out>/passkey-<device>.json``, and ``--add-eval RUN=EVAL_JSON`` joins a later ``lizardlm eval`` of a
run (e.g. at 32K, in another call) to its numbers, and ``--add-tune RUN=KNOBS_JSON`` records the knobs
``lizardlm tune`` chose for RUN on prompts of its own (``tuned``: the choice, its grid and its prompts);
``--heatmap RUN=A.json,B.json`` draws that run's heat maps over both files' lengths. ``--eval-only --decay-scale S`` evaluates a trained run with every
log-decay times S as run ``NAME@decayS`` (``--write-contrast C``: ``NAME@writeC``, the write gate's logits
times C; ``--read-sharpness T``: ``NAME@readT``, the query feature map's logits times T; several:
``NAME@decayS@writeC@readT``) (an ``--eval-only`` record takes the run's training settings
from ``passkey_gpu-training.json`` in its run directory, and ``--combine`` from run ``NAME``),
and a combined result holding such runs gets ``passkey-<device>-knobs.png`` (accuracy by length
per setting, beside the run as trained). ``--quick`` is a CPU smoke run on tiny
budgets (any ``--teacher``, e.g. a small local model).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lizardlm
from linearize_gpu import run, share_cpus  # noqa: E402
from lizardlm.eval.report import TASK_SETTINGS  # noqa: E402
from readme_table import KNOBS, LONG_TASKS  # noqa: E402
from result_names import device_slug  # noqa: E402
from study_rows import MC_TASKS  # noqa: E402

EVAL_TASKS = ",".join(LONG_TASKS)
FULL = dict(stage1_tokens=2_097_152, stage2_tokens=2_097_152, seq_len=2048, batch_size=8, val_tokens=131_072,
            passkey_lengths="1024,2048,4096,8192,16384,32768", passkey_trials=50, passkey_depths=10, passkey_keys=5,
            ruler_lengths="1024,4096,16384", ruler_trials=20, longppl_len=32768, longppl_windows=4,
            diagnostics_lengths="1024,4096,16384", diagnostics_trials=8, mqar_pairs="8", mqar_lengths="128,256,512,1024",
            mqar_samples=50, batch=8)
TRAINING_KEYS = ("mode", "data", "flags", "gradient_checkpointing", "stage1_tokens", "stage2_tokens", "seq_len",
                 "batch_size", "val_tokens", "train_shares", "linearize_command", "linearize_rc", "linearize_seconds")
"""What an evaluation's record (``--eval-only``, ``NAME@decayS``) takes from the record of the run as trained."""
TRAINING_RECORD = "passkey_gpu-training.json"
"""Those keys as the run was trained, kept in its run directory for a later ``--eval-only`` call."""
QUICK = dict(stage1_tokens=1024, stage2_tokens=1024, seq_len=128, batch_size=2, val_tokens=256,
             passkey_lengths="256", passkey_trials=2, passkey_depths=2, passkey_keys=5, ruler_lengths="256", ruler_trials=1,
             longppl_len=512, longppl_windows=1, diagnostics_lengths="256", diagnostics_trials=2, mqar_pairs="2",
             mqar_lengths="128", mqar_samples=2, batch=2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--runs", default=Path("/tmp/lizard-passkey-runs"), type=Path)
    p.add_argument("--name", default=None, help="run name (default: the mode)")
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--mode", default="lizard")
    p.add_argument("--data", default="mix:alpaca-cleaned=0.8,retrieval=0.2")
    p.add_argument("--flags", default="", help="more `lizardlm linearize` flags, e.g. '--window-size 128'")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--with-teacher", action="store_true", help="evaluate the teacher too (run 'teacher')")
    p.add_argument("--data-dir", default=None, help="eval data directory (held-out long-docs books)")
    p.add_argument("--deadline", type=float, default=560.0, help="seconds for everything")
    p.add_argument("--merge", type=Path, help="earlier result JSON whose other runs are kept")
    p.add_argument("--combine", type=Path, nargs="+", help="only merge these result JSONs (later runs win) into --out")
    p.add_argument("--add-eval", action="append", default=[], metavar="RUN=EVAL_JSON",
                   help="with --combine: a later `lizardlm eval` of RUN (e.g. at more lengths) whose numbers join RUN's")
    p.add_argument("--add-tune", action="append", default=[], metavar="RUN=KNOBS_JSON",
                   help="with --combine: the knobs.json of `lizardlm tune --model RUN`, recorded as RUN's chosen knobs")
    p.add_argument("--heatmap", action="append", default=[], metavar="RUN=EVAL_JSON[,EVAL_JSON...]",
                   help="only draw RUN's depth x length heat maps into --out from these eval.json files, their lengths joined")
    p.add_argument("--eval-only", action="store_true", help="evaluate the run already under --runs again")
    p.add_argument("--decay-scale", type=float, default=None, metavar="S",
                   help="evaluate with every log-decay times S (`lizardlm eval --decay-scale`): the result is run "
                        "NAME@decayS, evaluated into <run>/eval-decayS (with --eval-only: the trained run's weights)")
    p.add_argument("--write-contrast", type=float, default=None, metavar="C",
                   help="evaluate with the write gate's logits times C (`lizardlm eval --write-contrast`): run NAME@writeC, "
                        "into <run>/eval-writeC")
    p.add_argument("--read-sharpness", type=float, default=None, metavar="T",
                   help="evaluate with the query feature map's logits times T (`lizardlm eval --read-sharpness`): run "
                        "NAME@readT, into <run>/eval-readT")
    p.add_argument("--fresh", action="store_true", help="train a run under --runs again from the start instead of resuming it")
    p.add_argument("--variant", action="append", default=[], metavar="NAME|MODE|FLAGS[|DATA]",
                   help="a run of its own (repeat: all at once, one process each); FLAGS as in --flags")
    p.add_argument("--tasks", default=EVAL_TASKS, help=f"the `lizardlm eval` tasks (default {EVAL_TASKS})")
    p.add_argument("--quick", action="store_true", help="CPU smoke run on tiny budgets")
    for key, value in FULL.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None,
                       help=f"default {value} ({QUICK[key]} with --quick)")
    args = p.parse_args(argv)
    if (args.add_eval or args.add_tune) and not args.combine:
        p.error("--add-eval and --add-tune join runs merged by --combine; give --combine too")
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.name = args.name or args.mode
    for key, *_ in KNOBS:  # a knob at 1 is the model as trained: not passed, recorded or named
        if getattr(args, key) == 1:
            setattr(args, key, None)
    args.label = run_label(args.name, knobs(vars(args)))
    args.device = "cpu" if args.quick else "cuda"
    return args


def linearize_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "lizardlm", "linearize", "--teacher", args.teacher, "--data", args.data,
           "--mode", args.mode, "--out", str(run_dir), "--device", args.device]
    cmd += ["--preset", "gpu"] if not args.quick else []
    for key in ("stage1_tokens", "stage2_tokens", "seq_len", "batch_size", "val_tokens"):
        cmd += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    cmd += ["--resume"] if (run_dir / "run.json").exists() and not args.fresh else []
    return cmd + args.flags.split()


def eval_dir(args: argparse.Namespace, run_dir: Path) -> Path:
    """Where the run's evaluation goes: ``eval``, or ``eval-decayS`` / ``eval-writeC`` / ``eval-decayS-writeC-readT``
    for an evaluation at inference knobs (those not at 1)."""
    return run_dir / "-".join(["eval", *(f"{tag}{value:g}" for tag, value in knobs(vars(args)))])


def knobs(values: dict[str, Any]) -> list[tuple[str, float]]:
    """The inference knobs ``values`` set (:data:`readme_table.KNOBS`, whose tables read the labels made of them):
    ``[("decay", S), ("write", C)]`` in this order; a knob absent, None or at 1 (the model as trained) is left out."""
    return [(tag, values[key]) for key, _, tag, _ in KNOBS if values.get(key) not in (None, 1)]


def run_label(name: str, knob_values: list[tuple[str, float]]) -> str:
    """The name of run ``name`` evaluated at knobs ``[(tag, value), ...]``: ``r@decay0.25@write2`` (read back by
    :func:`knob_value`)."""
    return name + "".join(f"@{tag}{value:g}" for tag, value in knob_values)


def eval_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    # the zero-shot tasks fill their batches to a token budget ("auto"): at 8 rows a batch their 60,566
    # requests ran at ~100 a second on an H100 (2026-12-05), a tenth of the auto rate
    batch = "auto" if any(t in MC_TASKS for t in args.tasks.split(",")) else str(args.batch)
    cmd = [sys.executable, "-m", "lizardlm", "eval", "--model", str(run_dir), "--tasks", args.tasks,
           "--device", args.device, "--out", str(eval_dir(args, run_dir)), "--no-progress", "--batch-size", batch]
    for key, flag, *_ in KNOBS:
        cmd += [flag, f"{getattr(args, key):g}"] if getattr(args, key) is not None else []
    cmd += ["--teacher", args.teacher] if args.with_teacher else []
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--resume"] if args.eval_only else []  # an earlier call's evaluation, cut by its deadline, goes on
    for key in ("passkey_lengths", "passkey_trials", "passkey_depths", "passkey_keys", "ruler_lengths", "ruler_trials",
                "longppl_len", "longppl_windows", "diagnostics_lengths", "diagnostics_trials", "mqar_pairs", "mqar_lengths",
                "mqar_samples"):
        cmd += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    return cmd


def _by_length(entry: dict, key: str) -> dict[str, Any]:
    """``{length: value}`` of a passkey entry's records (the status where a length did not run)."""
    return {str(r["length"]): r.get(key, r["status"]) for r in entry["details"]["lengths"]}


PASSKEY_SETTINGS = tuple(k for k in TASK_SETTINGS["passkey_train"] if k in FULL)
"""The passkey settings `lizardlm eval` records that this script passes (the evaluation's own list)."""


def passkey_settings(eval_json: dict) -> dict:
    """The settings an ``eval.json``'s passkey numbers were measured with, as this script's arguments hold them
    (lengths as "a,b"); {} where it has no passkey task. Its meta keeps those of a task kept from an earlier
    call (``eval --resume``), so a call that only adds other tasks does not relabel the passkey's trials."""
    if not {"passkey", "passkey_train"} & set(eval_json.get("tasks", {})):
        return {}
    settings = eval_json.get("meta", {}).get("settings", {})
    out = {k: settings[k] for k in PASSKEY_SETTINGS if k in settings}
    if isinstance(out.get("passkey_lengths"), (list, tuple)):
        out["passkey_lengths"] = ",".join(str(n) for n in out["passkey_lengths"])
    return out


def assemble(result: dict, run_name: str, eval_json: dict) -> None:
    """Put one ``eval.json``'s numbers into ``result``: the student's under ``run_name``, a teacher's
    under ``"teacher"``; a task that did not run holds its status. Benchmarks (``piqa``...) go to one
    section, ``"benchmarks": {run: {task: the study's metric}}`` (the issue's zero-shot condition)."""
    for model, per_task in _by_model(eval_json).items():
        name = "teacher" if model == "teacher" else run_name
        for task, entry in per_task.items():
            if task in MC_TASKS:
                value = entry["metrics"][MC_TASKS[task]] if entry.get("status") == "ok" else entry.get("status")
                result.setdefault("benchmarks", {}).setdefault(name, {})[task] = value
                continue
            section = result.setdefault(task, {})
            if entry.get("status") != "ok":
                section[name] = entry.get("status")
            elif task in ("passkey", "passkey_train"):
                section[name] = _by_length(entry, "acc")
                result.setdefault(f"{task}_first_digit", {})[name] = _by_length(entry, "first_digit_acc")
                result.setdefault(f"{task}_answer_nll", {})[name] = _by_length(entry, "answer_nll")
                for key, suffix in (("repeated_digit_acc", "repeated_digit"), ("number_rate", "number_rate")):
                    if any(key in r for r in entry["details"]["lengths"]):  # evaluations since 2026-12-06
                        result.setdefault(f"{task}_{suffix}", {})[name] = _by_length(entry, key)
                if task == "passkey_train":
                    result.setdefault("passkey_train_another_key", {})[name] = _by_length(entry, "other_key_rate")
            elif task == "ruler":
                section[name] = entry["details"]["mean"]
            elif task == "mqar":  # accuracy by length at the fixed pair count (issue 19: 8 pairs at 512 and 1024)
                section[name] = {str(r["seq_len"]): r["acc"] if r.get("acc") is not None else r["status"]
                                 for r in entry["details"]["by_length"]}
            elif task == "longppl":
                section[name] = {k: entry["curve"][k] for k in ("bucket_start", "bucket_end", "ppl")}
            else:
                section[name] = entry["details"]


def _by_model(eval_json: dict) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for task, per_model in eval_json["tasks"].items():
        for model, entry in per_model.items():
            out.setdefault(model, {})[task] = entry
    return out


def merge(result: dict[str, Any], other: dict[str, Any]) -> None:
    """Add ``other``'s runs to ``result`` section by section (``other`` wins for a run in both)."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict) and key != "versions":
            result[key].update(value)
        else:
            result[key] = value


def _read_json(path: str, option: str) -> dict:
    """A JSON file named on the command line (an ``eval.json``, a ``knobs.json``), or a one-line exit saying
    why it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"{option}: cannot read {path}: {err}") from None


def _run_and_file(result: dict[str, Any], item: str, option: str, what: str) -> tuple[str, str]:
    """``RUN=FILE`` of ``option`` split, RUN one of ``result``'s runs, or a one-line exit saying what was expected."""
    run_name, sep, path = item.partition("=")
    if not sep or run_name not in result.get("runs", {}):
        raise SystemExit(f"{option} {item!r}: expected RUN={what} with RUN one of {sorted(result.get('runs', {}))}")
    return run_name, path


def add_eval(result: dict[str, Any], run_name: str, eval_json: dict, source: str) -> None:
    """Join a later ``eval.json`` of ``run_name`` to its numbers: lengths it measured are added to (or
    replace) the run's, and the eval's date and source are recorded under the run."""
    extra: dict[str, Any] = {}
    assemble(extra, run_name, eval_json)
    for section, per_run in extra.items():
        for name, value in per_run.items():
            held = result.setdefault(section, {}).get(name)
            if isinstance(held, dict) and isinstance(value, dict):
                held.update(value)
            else:
                result[section][name] = value
    if run_name in result.get("runs", {}):
        result["runs"][run_name].setdefault("added_evals", []).append(
            {"source": source, "date": eval_json["meta"]["date"], "tasks": eval_json["meta"]["tasks"],
             "settings": {k: v for k, v in eval_json["meta"]["settings"].items() if k.startswith("passkey")}})


def add_tune(result: dict[str, Any], run_name: str, knobs_json: dict, source: str) -> str:
    """Record under ``result["tuned"][run_name]`` the knobs ``lizardlm tune`` chose for it (``knobs.json``):
    the label of the evaluation at them (``NAME@decayS@writeC``, a knob left at 1 unnamed), the grid's scores
    and the prompts they were chosen on, so that a table can tell a choice made on other prompts from the
    best of evaluations; from a tune that has them (2026-12-07 on), the standard errors, ``close``, the
    number of settings within noise of the choice, and what ``--refine`` added. Returns the label."""
    best = knobs_json["best"]
    label = run_label(run_name, knobs(best))
    prompts = knobs_json["passkey"]
    noise = ({"mean_acc_se": best["mean_acc_se"], "close": len(best["close"])} if "close" in best else {})
    if refined := knobs_json.get("refined"):
        noise["refined"] = {"trials": refined["trials"], "seed": refined["seed"], "settings": len(refined["settings"])}
    result.setdefault("tuned", {})[run_name] = {
        "chosen": label, **{key: best.get(key, 1.0) for key, *_ in KNOBS}, **noise, "lengths": knobs_json["lengths"],
        "trials": prompts["trials"], "seed": prompts["seed"], "device": knobs_json["device"], "source": source,
        "grid": [{key: g.get(key, 1.0) for key, *_ in KNOBS} | {k: g[k] for k in ("mean_acc", "mean_nll", "mean_acc_se") if k in g}
                 for g in knobs_json["grid"]]}
    return label


def train_shares(run_json: dict[str, Any]) -> dict[str, float] | None:
    """A mixture run's share of the trained rows by part (``run.json``'s ``data.parts``): a part that ran
    short leaves its weight to the others; None for a single data spec."""
    parts = (run_json.get("data") or {}).get("parts")
    return {p["spec"]: round(p["train_share"], 4) for p in parts} if parts else None


def with_training(entry: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's record over the trained run's, whose training settings win (an ``--eval-only``
    call without ``--merge`` records this script's defaults for them)."""
    return {**trained, **entry, **{k: trained[k] for k in TRAINING_KEYS if k in trained}}


def combine(out_dir: Path, files: list[Path], added: list[str] = (), tuned: list[str] = ()) -> Path:
    """Merge result JSONs (later runs win; a ``NAME@decayS`` / ``NAME@writeC`` evaluation takes the training record of run
    ``NAME`` where one is merged), then join each ``RUN=EVAL_JSON`` of ``added`` and record each ``RUN=KNOBS_JSON``
    of ``tuned``."""
    result: dict[str, Any] = {}
    for f in files:
        merge(result, json.loads(f.read_text()))
    runs = result.get("runs", {})
    for label, entry in runs.items():
        base = label.partition("@")[0]
        if base != label and base in runs:
            runs[label] = with_training(entry, runs[base])
    for item in added:
        run_name, path = _run_and_file(result, item, "--add-eval", "EVAL_JSON")
        add_eval(result, run_name, _read_json(path, "--add-eval"), path)
    for item in tuned:
        run_name, path = _run_and_file(result, item, "--add-tune", "KNOBS_JSON")
        knobs_json = _read_json(path, "--add-tune")
        if not {"best", "passkey", "lengths", "grid"} <= set(knobs_json):
            raise SystemExit(f"--add-tune: {path} is not the knobs.json of `lizardlm tune`")
        add_tune(result, run_name, knobs_json, path)
    out = out_dir / f"passkey-{device_slug(result['device'])}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    knob_plot(result, out.with_name(f"{out.stem}-knobs.png"))
    return out


def knob_plot(result: dict[str, Any], path: Path) -> str | None:
    """Passkey accuracy (solid) and the first digit's (dashed) by length: one panel per trained run ``NAME``
    with evaluations at inference knobs (``NAME@decayS``, ``NAME@writeC``, ``NAME@readT``, several), holding those
    and the run as trained (black) where the result has it; the setting ``lizardlm tune`` chose
    (``result["tuned"]``) drawn thick. What stretching the half-lives, sharpening the write gate and the read
    do to each run's retrieval."""
    passkey = {n: v for n, v in result.get("passkey", {}).items() if isinstance(v, dict)}
    bases = sorted({n.partition("@")[0] for n in passkey if "@" in n})
    if not bases:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cols = min(len(bases), 3)
    rows = -(-len(bases) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), sharey=True, squeeze=False)
    ticks = sorted({int(L) for n in passkey for L in passkey[n]})
    for ax, base in zip(axes.flat, bases):
        chosen = result.get("tuned", {}).get(base, {}).get("chosen")
        labels = sorted((n for n in passkey if n.partition("@")[0] == base),
                        key=lambda n: ("@" in n, -knob_value(n, "decay"), knob_value(n, "write"), knob_value(n, "read")))
        for i, n in enumerate(labels):
            color = "black" if n == base else f"C{i}"
            width = 3.0 if n == chosen else 1.4
            name = "as trained" if n == base else n.partition("@")[2].replace("@", ", ")
            for section, style in (("passkey", "-o"), ("passkey_first_digit", "--")):
                by_len = {int(L): v for L, v in result.get(section, {}).get(n, {}).items() if isinstance(v, (int, float))}
                if by_len:
                    xs = sorted(by_len)
                    ax.plot(xs, [by_len[x] for x in xs], style, color=color, lw=width, ms=4,
                            label=(name + (" (tune's choice)" if n == chosen else "")) if section == "passkey" else None)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{L // 1024}K" if L >= 1024 else str(L) for L in ticks])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(base, fontsize=10)
        ax.set_xlabel("prompt length (tokens)")
        ax.legend(fontsize=7, loc="lower left")
    for ax in axes.flat[len(bases):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("passkey accuracy (dashed: first digit)")
    fig.suptitle(f"passkey by inference knobs: decay scale, write contrast, read sharpness ({result.get('device', '')})",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the suptitle above the first row
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def knob_value(label: str, tag: str) -> float:
    """The value a run label gives knob ``tag``: ``knob_value("r@decay0.5@write2", "write") == 2.0``; 1 (the
    trained model) where the label does not set it."""
    found = re.search(rf"@{tag}([0-9.]+)", label)
    return float(found.group(1)) if found else 1.0


def heatmaps(out_dir: Path, item: str) -> list[str]:
    """``RUN=A.json,B.json``: RUN's passkey heat maps (eval and training template) over the lengths of
    every file, e.g. a run's evaluation and a later one at 32K; written as ``<out>/RUN-<task>_heatmap.png``."""
    from lizardlm.eval.report import passkey_heatmap

    run_name, sep, paths = item.partition("=")
    if not sep or not paths:
        raise SystemExit(f"--heatmap {item!r}: expected RUN=EVAL_JSON[,EVAL_JSON...]")
    evals = [_read_json(f, "--heatmap") for f in paths.split(",")]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in ("passkey", "passkey_train"):
        entries = [e for ev in evals for e in ev["tasks"].get(task, {}).values() if e.get("status") == "ok"]
        if entries:
            details = {**entries[0]["details"], "lengths": [r for e in entries for r in e["details"]["lengths"]]}
            n = details.get("keys", 5)
            keys = "" if task == "passkey" else f", {n} key{'s' * (n != 1)}"
            written.append(passkey_heatmap(details, out_dir / f"{run_name}-{task}_heatmap.png", f"{task}{keys} ({run_name})"))
    return written


PER_VARIANT = ("--variant", "--out", "--merge", "--name", "--mode", "--flags", "--data")
"""Options each variant's process gets its own value of (the rest of the command line is shared)."""


def variant_command(args: argparse.Namespace, argv: list[str], variant: str, first: bool) -> list[str]:
    """This script's command for one ``NAME|MODE|FLAGS[|DATA]`` variant: ``argv`` without the variants,
    the teacher's evaluation and the output, then the variant's name, mode, flags, data (its own, else
    ``--data``) and its own ``--out``."""
    name, mode, flags, data = (variant.split("|", 3) + ["", "", ""])[:4]
    if not name or not mode:
        raise SystemExit(f"--variant expects NAME|MODE|FLAGS[|DATA], got {variant!r}")
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in PER_VARIANT:  # its value follows
            skip = True
        elif a.split("=", 1)[0] not in PER_VARIANT and a != "--with-teacher":
            rest.append(a)
    cmd = [sys.executable, __file__, *rest, "--out", str(args.out / "parts" / name), "--name", name, "--mode", mode,
           "--flags", flags, "--data", data or args.data]
    return cmd + (["--with-teacher"] if first and args.with_teacher else [])


def run_variants(args: argparse.Namespace, argv: list[str]) -> int:
    """Every ``--variant`` at once, each as its own process of this script; then their result files
    (and ``--merge``'s) merged into ``<out>/passkey-<device>.json``."""
    share_cpus(len(args.variant))
    procs = [subprocess.Popen(variant_command(args, argv, v, i == 0)) for i, v in enumerate(args.variant)]
    codes = [p.wait() for p in procs]
    parts = sorted((args.out / "parts").glob("*/passkey-*.json"))
    if parts:
        print(combine(args.out, ([args.merge] if args.merge and args.merge.exists() else []) + parts))
    return 0 if parts and not any(codes) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.combine:
        print(combine(args.out, args.combine, args.add_eval, args.add_tune))
    for item in args.heatmap:
        print("\n".join(heatmaps(args.out, item)))
    if args.combine or args.heatmap:
        return 0
    if args.variant:
        return run_variants(args, argv)
    start = time.perf_counter()
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    slug = device_slug(device)
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    log = args.out / f"passkey-{slug}.log"
    out = args.out / f"passkey-{slug}.json"
    result: dict[str, Any] = {"passkey": {}, "ruler": {}, "longppl": {}, "diagnostics": {}, "runs": {}}
    if args.merge is not None and args.merge.exists():
        merge(result, json.loads(args.merge.read_text()))
    result.update(device=device, teacher=args.teacher, eval_tasks=args.tasks,
                  versions={"torch": torch.__version__, "transformers": transformers.__version__})
    run_dir = args.runs / args.name
    entry: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mode": args.mode, "data": args.data,
                             "flags": args.flags, "gradient_checkpointing": args.gradient_checkpointing,
                             **{k: getattr(args, k) for k in FULL}}
    entry.update({key: getattr(args, key) for key, *_ in KNOBS if getattr(args, key) is not None})
    record = run_dir / TRAINING_RECORD
    if args.eval_only:  # this evaluation's settings over the run's record as trained (its own file, --merge)
        trained = json.loads(record.read_text()) if record.exists() else {}
        entry = with_training(entry, {**trained, **result["runs"].get(args.name, {}), **result["runs"].get(args.label, {})})
    result["runs"][args.label] = entry
    if not args.eval_only:
        cmd = linearize_command(args, run_dir)
        if "--resume" not in cmd and run_dir.exists():
            shutil.rmtree(run_dir)
        entry["linearize_command"] = " ".join(["python", *cmd[1:]])
        entry["linearize_rc"], entry["linearize_seconds"] = run(cmd, log, timeout=args.deadline - 60)
        if (run_dir / "run.json").exists():
            entry["train_shares"] = train_shares(json.loads((run_dir / "run.json").read_text()))
        if run_dir.exists():
            record.write_text(json.dumps({k: entry[k] for k in TRAINING_KEYS if k in entry}, indent=2) + "\n")
    if (run_dir / "summary.json").exists():
        entry["summary"] = json.loads((run_dir / "summary.json").read_text())
        cmd = eval_command(args, run_dir)
        entry["eval_command"] = " ".join(["python", *cmd[1:]])
        left = args.deadline - (time.perf_counter() - start)
        entry["eval_rc"], entry["eval_seconds"] = run(cmd, log, timeout=max(left - 10, 30))
        evaluated = eval_dir(args, run_dir)
        eval_json, partial = evaluated / "eval.json", evaluated / "eval.partial.json"
        if entry["eval_rc"] == 0 and eval_json.exists():
            evaluation = json.loads(eval_json.read_text())
            assemble(result, args.label, evaluation)
            entry.update(passkey_settings(evaluation))
            for png in evaluated.glob("*.png"):
                shutil.copy(png, args.out / f"passkey-{slug}-{args.label}-{png.stem}.png")
            entry["status"] = "done"
        elif partial.exists():  # cut (the deadline): keep the tasks it finished; --eval-only runs the rest
            cut = json.loads(partial.read_text())
            assemble(result, args.label, cut)
            entry.update(passkey_settings(cut))
            finished = [t for t, per in cut["tasks"].items() if per]
            entry["status"] = (f"eval cut (exit {entry['eval_rc']}) after {', '.join(finished) or 'no task'}; "
                               "--eval-only goes on")
        else:
            entry["status"] = f"eval failed (exit {entry['eval_rc']}); see the log"
    else:
        entry["status"] = f"linearize failed (exit {entry.get('linearize_rc')}); see the log"
    entry["wall_seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"status": entry["status"], "passkey": result["passkey"].get(args.label)}))
    return 0 if entry["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
