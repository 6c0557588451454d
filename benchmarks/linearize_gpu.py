"""Linearize the embedded teacher on one GPU for several modes, evaluate each, write one JSON.

Runs the real CLI (``lizardlm linearize`` then ``lizardlm eval``) per mode, the teacher evaluated
alongside the first mode, and collects every number into ``<out>/linearize-<device>.json``::

    python benchmarks/linearize_gpu.py --out results/ --modes lizard,lolcats \
        --stage1-tokens 2097152 --stage2-tokens 2097152 --runs /tmp/runs

``--variant 'NAME:FLAGS'`` adds a run named NAME with extra ``lizardlm linearize`` flags, e.g.
``--variant 'lizard-w128:--mode lizard --window-size 128'``.

``--merge FILE`` starts from an earlier call's JSON (same budgets) and replaces only the modes run
now, so the modes can be spread over several 10-minute device calls; ``--eval-only`` re-evaluates
runs already under ``--runs`` (how ``no_meta`` was finished after its eval hit a call's deadline).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

from result_names import device_slug

EVAL_TASKS = "wikitext2,mqar,passkey"


def run(cmd: list[str], log: Path, timeout: float) -> tuple[int, float]:
    started = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--runs", default=Path("/tmp/lizard-runs"), type=Path)
    p.add_argument("--modes", default="lizard,lolcats")
    p.add_argument("--stage1-tokens", type=int, default=2_097_152)
    p.add_argument("--stage2-tokens", type=int, default=2_097_152)
    p.add_argument("--passkey-lengths", default="1024,2048,4096,8192,16384")
    p.add_argument("--deadline", type=float, default=560.0, help="seconds for everything")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:FLAGS",
                   help="an extra run: NAME, then the linearize flags it adds (repeatable)")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the runs already under --runs again (e.g. after an eval hit the deadline)")
    p.add_argument("--merge", type=Path, help="earlier result JSON whose other modes are kept")
    p.add_argument("--with-teacher", action="store_true", help="evaluate the teacher alongside the first mode")
    args = p.parse_args()

    start = time.perf_counter()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    log = args.out / f"linearize-{device_slug(device)}.log"
    result = {
        "device": device,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "teacher": "smollm2-135m (SmolLM2-135M-Instruct, GGUF Q4_1 dequantized to float32)",
        "data": "default (WikiText-2 valid + TinyShakespeare)",
        "preset": "gpu",
        "stage1_tokens": args.stage1_tokens,
        "stage2_tokens": args.stage2_tokens,
        "eval_tasks": EVAL_TASKS,
        "modes": {},
        "calls": [],
    }
    if args.merge is not None and args.merge.exists():
        earlier = json.loads(args.merge.read_text())
        for key in ("stage1_tokens", "stage2_tokens", "eval_tasks"):
            if earlier[key] != result[key]:
                p.error(f"--merge {args.merge}: {key} is {earlier[key]} there, {result[key]} now")
        calls = earlier.get("calls") or [{"modes": list(earlier["modes"]), "wall_seconds": earlier.get("wall_seconds")}]
        result["modes"], result["calls"] = earlier["modes"], calls
    lizardlm = [sys.executable, "-m", "lizardlm"]
    runs = {m: ["--mode", m] for m in args.modes.split(",") if m}
    for spec in args.variant:
        name, _, flags = spec.partition(":")
        runs[name] = flags.split()
    for i, (mode, flags) in enumerate(runs.items()):
        left = args.deadline - (time.perf_counter() - start)
        entry: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "flags": " ".join(flags)}
        if args.eval_only:  # keep the training record, redo the evaluation
            entry = {**result["modes"].get(mode, {}), **entry}
        result["modes"][mode] = entry
        if left < 60:
            entry["status"] = f"skipped: {left:.0f} s left of the deadline"
            continue
        run_dir = args.runs / mode
        if not args.eval_only:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            rc, secs = run(
                lizardlm + ["linearize", "--preset", "gpu", *flags, "--out", str(run_dir), "--device", "cuda",
                            "--stage1-tokens", str(args.stage1_tokens), "--stage2-tokens", str(args.stage2_tokens)],
                log, timeout=left - 30,
            )
            entry["linearize_rc"], entry["linearize_seconds"] = rc, secs
            if rc != 0:
                entry["status"] = f"linearize failed (exit {rc}); see the log"
                continue
        elif not (run_dir / "summary.json").exists():
            entry["status"] = f"--eval-only: no finished run in {run_dir}"
            continue
        entry["summary"] = json.loads((run_dir / "summary.json").read_text())
        left = args.deadline - (time.perf_counter() - start)
        teacher = ["--teacher", "smollm2-135m"] if (i == 0 and args.with_teacher) else []
        rc, secs = run(
            lizardlm + ["eval", "--model", str(run_dir), *teacher, "--tasks", EVAL_TASKS, "--device", "cuda",
                        "--passkey-lengths", args.passkey_lengths, "--out", str(run_dir / "eval"), "--no-progress"],
            log, timeout=max(left - 10, 30),
        )
        entry["eval_rc"], entry["eval_seconds"] = rc, secs
        if rc == 0:
            entry["eval"] = json.loads((run_dir / "eval" / "eval.json").read_text())
            for png in (run_dir / "eval").glob("*.png"):
                shutil.copy(png, args.out / f"{mode}-{png.name}")
        entry["status"] = "done" if rc == 0 else f"eval failed (exit {rc}); see the log"
        for png in run_dir.glob("stage*_loss.png"):
            shutil.copy(png, args.out / f"{mode}-{png.name}")
    result["calls"].append({"modes": list(runs), "wall_seconds": time.perf_counter() - start})
    out = args.out / f"linearize-{device_slug(device)}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({m: e.get("status") for m, e in result["modes"].items()}))
    for m in runs:
        e = result["modes"][m]
        if "summary" in e:
            s = e["summary"]
            print(f"{m}: teacher val ppl {s['teacher_val_ppl']:.2f}, student {s['student_val_ppl']:.2f}, "
                  f"stage1 {s['stage1_seconds']:.0f}s stage2 {s['stage2_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
