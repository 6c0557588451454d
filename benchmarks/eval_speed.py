"""Time the six multiple-choice tasks with the fast scorer (and lm-eval's HFLM), check the scores agree.

    python benchmarks/eval_speed.py --slow --slow-limit 50                 # GPU: full sets fast, 50 docs slow
    python benchmarks/eval_speed.py --student runs/lizard --slow           # a trained student, both full
    python benchmarks/eval_speed.py --limit 20,mmlu=2 --slow               # CPU: per-task limits

Models: the embedded teacher (``--teacher``, default ``smollm2-135m``) and a student: ``--student``
(a lizardlm run directory or saved Lizard model), else ``lizardlm.convert`` of the teacher with the
default ``LizardConfig`` (untrained: a stand-in with the student's shapes and kernels). Each task
runs alone through ``run_harness`` (full sets unless ``--limit``), fast backend first; with
``--slow`` the HFLM backend (today's path) runs too, at ``--slow-limit`` when given, and the fast
backend again at that limit so that each slow run has a fast twin to compare. Writes
``<out>/eval-speed-<device>.json``::

    {"device", "config", "runs": [{"model", "backend", "task", "limit", "seconds", "cpu_seconds", "metrics", "n"}],
     "comparisons": [{"model", "task", "limit", "max_abs_diff"}], "agree", "seconds": {...}}

``agree``: every metric of every fast/slow pair within ``--tolerance`` (default 0 in float32; in
bfloat16 HFLM rounds its log-softmax and the sums to bfloat16 while the fast path sums float32
log-probs, so near ties may break differently: default 0.01). Data: ``--data-dir``, else
``$LIZARDLM_DATA_DIR``, else ``./shared/data`` / ``../shared/data`` (``lizardlm.eval.data``). Offline:
hub and datasets calls fail fast; the teacher comes from lizardlm's cache (``$LIZARDLM_CACHE``) or a
local path given as ``--teacher``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lizardlm

import torch  # noqa: E402

import lizardlm  # noqa: E402
from lizardlm.eval import run_harness  # noqa: E402
from lizardlm.eval.tasks import MC_TASKS  # noqa: E402
from result_names import device_slug  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_limits(text: str | None) -> dict[str, int | None]:
    """``"20,mmlu=2"`` -> ``{"piqa": 20, ..., "mmlu": 2}``; ``None`` -> no limits."""
    limits: dict[str, int | None] = dict.fromkeys(MC_TASKS)
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        task, _, n = part.rpartition("=")
        if task and task not in MC_TASKS:
            raise SystemExit(f"--limit: unknown task {task!r}; known: {', '.join(MC_TASKS)}")
        for t in [task] if task else MC_TASKS:
            limits[t] = int(n)
    return limits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="smollm2-135m", help="teacher name or local path")
    p.add_argument("--student", default=None, help="run dir or saved Lizard model (default: convert the teacher)")
    p.add_argument("--no-student", action="store_true", help="the teacher only")
    p.add_argument("--tasks", default=",".join(MC_TASKS))
    p.add_argument("--limit", default=None, help="docs per task (MMLU: per subject): N, or N,task=M,...")
    p.add_argument("--slow", action="store_true", help="run lm-eval's HFLM too and compare")
    p.add_argument("--slow-limit", default=None, help="limits of the HFLM runs (same form as --limit)")
    p.add_argument("--batch-size", default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--tolerance", type=float, default=None, help="largest metric difference that still agrees")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return p.parse_args(argv)


def load_models(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, tuple[Any, Any]]:
    t0 = time.perf_counter()
    teacher, tok = lizardlm.load_teacher(args.teacher, dtype=dtype, device=args.device)
    models = {"teacher": (teacher, tok)}
    if args.student:
        from lizardlm.loading import load_any

        student, stok = load_any(args.student, device=args.device, dtype=dtype)
        models["student"] = (student.eval(), stok or tok)
    elif not args.no_student:
        torch.manual_seed(0)
        models["student"] = (lizardlm.convert(copy.deepcopy(teacher), lizardlm.LizardConfig()).eval(), tok)
    print(f"loaded {', '.join(models)} in {time.perf_counter() - t0:.1f} s", flush=True)
    return models


def run_one(model: Any, tok: Any, task: str, backend: str, limit: int | None, args: argparse.Namespace) -> dict:
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    t0, c0 = time.perf_counter(), time.process_time()
    entry = run_harness(model, tok, [task], data_dir=args.data_dir, limit=limit, batch_size=batch, lm_backend=backend)[task]
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if entry["status"] != "ok":
        raise SystemExit(f"{task}: {entry['status']}: {entry.get('reason')}")
    return {"backend": backend, "task": task, "limit": limit, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2), "metrics": entry["metrics"], "n": entry["n"]}


def max_abs_diff(a: dict[str, float], b: dict[str, float]) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max(abs(a[k] - b[k]) for k in a)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA device is available")
    dtype_name = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    tolerance = args.tolerance if args.tolerance is not None else (0.0 if dtype_name == "float32" else 0.01)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in MC_TASKS]
    if unknown:
        raise SystemExit(f"--tasks: unknown {', '.join(unknown)}; known: {', '.join(MC_TASKS)}")
    limits = parse_limits(args.limit)
    slow_limits = parse_limits(args.slow_limit) if args.slow_limit else limits
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"lizardlm {lizardlm.__file__}; device {device}, {dtype_name}", flush=True)

    models = load_models(args, DTYPES[dtype_name])
    # every model's full fast runs first, then the slow comparisons: a run cut short keeps the timings
    plan = [(name, "fast", t, limits[t]) for name in models for t in tasks]
    if args.slow:
        for name in models:
            plan += [(name, "fast", t, slow_limits[t]) for t in tasks if slow_limits[t] != limits[t]]
            plan += [(name, "hflm", t, slow_limits[t]) for t in tasks]
    config = {"teacher": args.teacher, "student": args.student or ("none" if args.no_student else "convert(teacher)"),
              "dtype": dtype_name, "batch_size": args.batch_size, "tasks": tasks, "limits": limits,
              "slow": args.slow, "slow_limits": slow_limits, "tolerance": tolerance,
              "torch": torch.__version__, "lm_eval": _version("lm_eval"), "transformers": _version("transformers")}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"eval-speed-{device_slug(device)}.json"
    runs: list[dict] = []
    result = summarize(runs, limits, tolerance, device, config, complete=not plan)
    for name, backend, task, limit in plan:
        model, tok = models[name]
        run = {"model": name, **run_one(model, tok, task, backend, limit, args)}
        runs.append(run)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in run["metrics"].items() if not k.endswith("_stderr"))
        print(f"[{name}/{backend}] {task} (limit {limit}): {run['seconds']:.1f} s ({run['cpu_seconds']:.1f} s CPU), "
              f"n={run['n']}, {shown}", flush=True)
        result = summarize(runs, limits, tolerance, device, config, complete=len(runs) == len(plan))
        path.write_text(json.dumps(result, indent=2) + "\n")  # after every run
    print(f"seconds per model/backend: {result['seconds']}", flush=True)
    if result["comparisons"]:
        worst = max(result["comparisons"], key=lambda c: c["max_abs_diff"])
        print(f"agree: {result['agree']} (largest metric difference {worst['max_abs_diff']:.4g}: {worst['model']} "
              f"{worst['task']}; tolerance {tolerance})", flush=True)
    print(f"wrote {path}", flush=True)
    return 0 if result["agree"] else 1


def summarize(runs: list[dict], limits: dict, tolerance: float, device: str, config: dict, complete: bool) -> dict:
    """The result file: runs, fast/slow comparisons at equal limits, ``agree``, wall seconds per
    model/backend (the fast twins of slow runs left out); ``complete`` False while runs remain."""
    fast = {(r["model"], r["task"], r["limit"]): r for r in runs if r["backend"] == "fast"}
    comparisons = [{"model": r["model"], "task": r["task"], "limit": r["limit"],
                    "max_abs_diff": max_abs_diff(r["metrics"], fast[r["model"], r["task"], r["limit"]]["metrics"])}
                   for r in runs if r["backend"] == "hflm"]
    seconds: dict[str, float] = {}
    for r in runs:
        if r["limit"] == limits[r["task"]] or r["backend"] == "hflm":
            key = f"{r['model']}/{r['backend']}"
            seconds[key] = round(seconds.get(key, 0.0) + r["seconds"], 2)
    return {"device": device, "config": config, "runs": runs, "comparisons": comparisons,
            "agree": all(c["max_abs_diff"] <= tolerance for c in comparisons), "seconds": seconds, "complete": complete}


def _version(module: str) -> str:
    from importlib.metadata import version

    return version(module)


if __name__ == "__main__":
    sys.exit(main())
