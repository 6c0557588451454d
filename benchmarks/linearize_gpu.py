"""Linearize the embedded teacher on one GPU for several modes, evaluate each, write one JSON.

Runs the real CLI (``lizardlm linearize`` then ``lizardlm eval``) per run and collects every
number into ``<out>/<name>-<device>.json``::

    python benchmarks/linearize_gpu.py --out results/ --modes lizard,lolcats \
        --stage1-tokens 2097152 --stage2-tokens 2097152 --runs /tmp/runs

``--variant 'NAME:FLAGS'`` adds a run named NAME with extra ``lizardlm linearize`` flags, e.g.
``--variant 'lizard-w128:--mode lizard --window-size 128'``. ``--preset`` and ``--data`` apply to
every run (the paper's recipe: ``--preset paper``, its data by default).

``--eval-tasks`` takes groups of tasks separated by ``;``: each group is one ``lizardlm eval``
process, and with ``--jobs N`` up to N processes (trainings and evaluations) share the GPU at once:
a 135M model's step is bound by the host and kernel launches, so concurrent processes fill the
device. ``--with-teacher`` evaluates the teacher as its own run, ``teacher``.

``--merge FILE`` starts from an earlier call's JSON (same budgets) and replaces only the runs made
now, so runs can be spread over several 10-minute device calls; ``--eval-only`` re-evaluates runs
already under ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import transformers

from result_names import device_slug

EVAL_TASKS = "wikitext2,mqar,passkey"
TEACHER = "smollm2-135m"
_LOG_LOCK = threading.Lock()
GRACE_S = 20.0
"""Seconds a process past its timeout gets between SIGTERM and SIGKILL."""


def share_cpus(jobs: int) -> None:
    """Give each of ``jobs`` concurrent child processes its share of the host's cores (environment
    variables they inherit; ones already set win). Unshared, every process's tokenizer (Rayon) and
    torch pools take all cores: four linearize processes on a 16-core H200 host took 300 s each to
    build data that one builds in 15 s."""
    if jobs > 1:
        share = str(max(1, (os.cpu_count() or 1) // jobs))
        for var, value in (("TOKENIZERS_PARALLELISM", "false"), ("RAYON_NUM_THREADS", share), ("OMP_NUM_THREADS", share)):
            os.environ.setdefault(var, value)


def run(cmd: list[str], log: Path, timeout: float, grace: float = GRACE_S) -> tuple[int, float]:
    """Run ``cmd`` with its output kept in memory, appended to ``log`` whole when it ends (concurrent
    runs' lines stay apart). Past ``timeout`` it gets SIGTERM, on which ``lizardlm linearize`` saves the
    step it reached (nothing to redo on resume), and SIGKILL ``grace`` seconds later; exit 124 then."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        text, rc = proc.communicate(timeout=max(timeout, 1))[0], proc.returncode
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            text = proc.communicate(timeout=grace)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            text = proc.communicate()[0]
        rc, text = 124, (text or "") + "\n[timed out]"
    secs = time.perf_counter() - started
    with _LOG_LOCK, open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n[exit {rc} after {secs:.0f} s]\n{text[-20000:]}\n")
    return rc, secs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--name", default="linearize", help="result file stem: <out>/<name>-<device>.json")
    p.add_argument("--runs", default=Path("/tmp/lizard-runs"), type=Path)
    p.add_argument("--modes", default="lizard,lolcats")
    p.add_argument("--preset", default="gpu")
    p.add_argument("--data", default=None, help="data spec for every run (default: the preset's)")
    p.add_argument("--stage1-tokens", type=int, default=2_097_152)
    p.add_argument("--stage2-tokens", type=int, default=2_097_152)
    p.add_argument("--eval-tasks", default=EVAL_TASKS, help="task groups separated by ';', one eval process each")
    p.add_argument("--eval-flags", default="", help="extra `lizardlm eval` flags for every evaluation")
    p.add_argument("--passkey-lengths", default="1024,2048,4096,8192,16384")
    p.add_argument("--jobs", type=int, default=1, help="trainings, and evaluations, sharing the GPU at once")
    p.add_argument("--device", default="cuda", help="cpu runs the same steps (to try the script on a tiny budget)")
    p.add_argument("--deadline", type=float, default=560.0, help="seconds for everything")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:FLAGS",
                   help="an extra run: NAME, then the linearize flags it adds (repeatable)")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the runs already under --runs again (e.g. after an eval hit the deadline)")
    p.add_argument("--merge", type=Path, help="earlier result JSON whose other runs are kept")
    p.add_argument("--with-teacher", action="store_true", help="evaluate the teacher as a run of its own")
    args = p.parse_args()
    share_cpus(args.jobs)

    start = time.perf_counter()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    log = args.out / f"{args.name}-{device_slug(device)}.log"
    groups = [g.strip(",") for g in args.eval_tasks.split(";") if g.strip(",")]
    result = {
        "device": device,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "teacher": "smollm2-135m (SmolLM2-135M-Instruct, GGUF Q4_1 dequantized to float32)",
        "data": args.data or f"the {args.preset} preset's",
        "preset": args.preset,
        "stage1_tokens": args.stage1_tokens,
        "stage2_tokens": args.stage2_tokens,
        "eval_tasks": args.eval_tasks,
        "eval_flags": args.eval_flags,
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
    data_flags = ["--data", args.data] if args.data else []

    def left() -> float:
        return args.deadline - (time.perf_counter() - start)

    def evaluate(name: str, model: str, out: Path, entry: dict, pool: ThreadPoolExecutor) -> None:
        """One eval process per task group, concurrently; every group's numbers under entry["eval"]."""
        def one(i: int, tasks: str) -> tuple[int, str, int, float]:
            cmd = lizardlm + ["eval", "--model", model, "--tasks", tasks, "--device", args.device, "--passkey-lengths",
                              args.passkey_lengths, "--out", str(out / f"group{i}"), "--no-progress",
                              *args.eval_flags.split()]
            rc, secs = run(cmd, log, timeout=left() - 10)
            return i, tasks, rc, secs
        entry["eval"], entry["eval_groups"] = {}, []
        for i, tasks, rc, secs in pool.map(lambda a: one(*a), list(enumerate(groups))):
            entry["eval_groups"].append({"tasks": tasks, "rc": rc, "seconds": secs})
            got = out / f"group{i}" / "eval.json"
            if rc == 0 and got.exists():
                entry["eval"].setdefault("groups", []).append(json.loads(got.read_text()))
                for png in (out / f"group{i}").glob("*.png"):
                    shutil.copy(png, args.out / f"{args.name}-{name}-{png.name}")
        failed = [g["tasks"] for g in entry["eval_groups"] if g["rc"] != 0]
        entry["status"] = "done" if not failed else f"eval failed for {failed}; see the log"

    def one_run(name: str, flags: list[str], pool: ThreadPoolExecutor) -> None:
        entry: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "flags": " ".join(flags)}
        if args.eval_only:  # keep the training record, redo the evaluation
            entry = {**result["modes"].get(name, {}), **entry}
        result["modes"][name] = entry
        if left() < 60:
            entry["status"] = f"skipped: {left():.0f} s left of the deadline"
            return
        run_dir = args.runs / name
        if not args.eval_only:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            rc, secs = run(
                lizardlm + ["linearize", "--preset", args.preset, *data_flags, *flags, "--out", str(run_dir),
                            "--device", args.device, "--stage1-tokens", str(args.stage1_tokens),
                            "--stage2-tokens", str(args.stage2_tokens)],
                log, timeout=left() - 30,
            )
            entry["linearize_rc"], entry["linearize_seconds"] = rc, secs
            if rc != 0:
                entry["status"] = f"linearize failed (exit {rc}); see the log"
                return
        elif not (run_dir / "summary.json").exists():
            entry["status"] = f"--eval-only: no finished run in {run_dir}"
            return
        entry["summary"] = json.loads((run_dir / "summary.json").read_text())
        for png in run_dir.glob("stage*_loss.png"):
            shutil.copy(png, args.out / f"{args.name}-{name}-{png.name}")
        evaluate(name, str(run_dir), run_dir / "eval", entry, pool)

    # trainings and evaluations draw on two pools of --jobs processes each (a run's thread waits on
    # its eval groups, so one shared pool could fill with waiting runs)
    with ThreadPoolExecutor(max_workers=args.jobs) as evals, ThreadPoolExecutor(max_workers=args.jobs) as trains:
        jobs = [trains.submit(one_run, n, f, evals) for n, f in runs.items()]
        if args.with_teacher:
            teacher: dict = {"flags": "", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            result["modes"]["teacher"] = teacher
            jobs.append(trains.submit(evaluate, "teacher", TEACHER, args.runs / "teacher-eval", teacher, evals))
        for j in jobs:
            j.result()
    result["calls"].append({"modes": list(runs) + (["teacher"] if args.with_teacher else []),
                            "wall_seconds": time.perf_counter() - start})
    out = args.out / f"{args.name}-{device_slug(device)}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({m: e.get("status") for m, e in result["modes"].items()}))
    for m, e in result["modes"].items():
        if "summary" in e:
            s = e["summary"]
            print(f"{m}: teacher val ppl {s['teacher_val_ppl']:.2f}, student {s['student_val_ppl']:.2f}, "
                  f"stage1 {s['stage1_seconds']:.0f}s stage2 {s['stage2_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
