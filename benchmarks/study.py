"""The benchmark study (issue 17) on one GPU: every row of ``study_rows.py`` trained with one budget
and seed, evaluated alike, into ``<out>/study-<device>.json``::

    python benchmarks/study.py --out benchmarks/results --runs /tmp/study-runs --jobs 6 --train-jobs 3 \\
        --stage1-tokens 1048576 --stage2-tokens 1048576 --grid-stage1-tokens 262144 --grid-stage2-tokens 262144 \\
        --limit 500 --mmlu-limit 20

Each row is ``lizardlm linearize --preset paper --seed S --stage1-tokens N1 --stage2-tokens N2`` plus
its flags (the grid rows at the ``--grid-*`` budget), then ``lizardlm eval`` of PIQA, ARC-e, ARC-c,
HellaSwag, WinoGrande, MMLU 5-shot, passkey, MQAR and long-document perplexity, as three concurrent
processes (``EVAL_GROUPS``); the rows of ``--full-sets`` (default: every row at the main budget) also
score the five zero-shot tasks on their whole evaluation sets (``FULL_GROUP``, no ``--limit``), which
the README table reports for them. At most ``--jobs`` processes (trainings and evaluations, of which at
most ``--train-jobs`` trainings) share the GPU at once: a 135M model's steps are bound by kernel
launches, so concurrent processes fill the device.
A free slot goes to an evaluation before a training, and to rows in table order, so that a call cut
by its deadline leaves finished rows rather than many trained, unevaluated ones.

Resumable: a row whose record exists (``<runs>/<row>/study-row.json``, or ``done`` in the output
JSON at the same budget) is kept; a training cut by ``--deadline`` continues with
``linearize --resume`` and finished eval groups are reused, on the next call. ``--rows`` picks rows
or groups (``reference,forms,ablations,gates,grid,hybrids``). ``discriminative`` lists the tasks on
which the teacher is above chance by more than 3 stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lizardlm, here and (PYTHONPATH) in every linearize/eval process
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from linearize_gpu import run as run_logged, share_cpus  # noqa: E402
from result_names import device_slug  # noqa: E402
from study_rows import (CHANCE, EVAL_GROUPS, FULL_GROUP, MC_TASKS, Row, discriminative, full_scores,  # noqa: E402
                        row_scores, select_rows, study_rows)  # noqa: E402

KV_CONTEXT = 32768


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--runs", type=Path, default=Path("/tmp/study-runs"))
    p.add_argument("--rows", default=None, help="comma-separated rows and/or groups (default: all)")
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--preset", default="paper")
    p.add_argument("--data", default=None, help="data spec of every run (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage1-tokens", type=int, default=1_048_576)
    p.add_argument("--stage2-tokens", type=int, default=1_048_576)
    p.add_argument("--grid-stage1-tokens", type=int, default=262_144)
    p.add_argument("--grid-stage2-tokens", type=int, default=262_144)
    p.add_argument("--linearize-flags", default="", help="extra `lizardlm linearize` flags for every row "
                   "(a CPU smoke run: --seq-len 256 --batch-size 2 --val-tokens 1024)")
    p.add_argument("--limit", type=int, default=None, help="lizardlm eval --limit of the 0-shot and long-context groups "
                   "(documents per task, passkey trials, MQAR prompts)")
    p.add_argument("--mmlu-limit", type=int, default=None, help="lizardlm eval --limit of MMLU (questions per subject: "
                   "20 = 1,140 questions)")
    p.add_argument("--full-sets", default="reference,forms,ours,ablations,gates,hybrids",
                   help="rows and/or groups that also score the zero-shot tasks on the whole sets ('' for none)")
    p.add_argument("--passkey-lengths", default="1024,2048,4096,8192")
    p.add_argument("--passkey-trials", type=int, default=20)
    p.add_argument("--longppl-len", type=int, default=8192, help="long-document window (the teacher's context: 8K)")
    p.add_argument("--longppl-windows", type=int, default=4)
    p.add_argument("--eval-flags", default="", help="extra `lizardlm eval` flags for every evaluation")
    p.add_argument("--jobs", type=int, default=6, help="GPU processes (trainings and evaluations) at once")
    p.add_argument("--train-jobs", type=int, default=3, help="of which trainings (each ~30 GiB at 8 x 2048 tokens)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--deadline", type=float, default=570.0, help="seconds for this call; unfinished rows resume next call")
    return p.parse_args(argv)


def budget(args: argparse.Namespace) -> dict:
    """What every row shares; a study JSON at another budget is not resumed."""
    keys = ("teacher", "preset", "data", "seed", "stage1_tokens", "stage2_tokens", "grid_stage1_tokens",
            "grid_stage2_tokens", "linearize_flags", "limit", "mmlu_limit", "passkey_lengths", "passkey_trials",
            "longppl_len", "longppl_windows", "eval_flags")
    return {k: getattr(args, k) for k in keys}


def linearize_command(args: argparse.Namespace, row: Row, run_dir: Path) -> list[str]:
    s1, s2 = (args.grid_stage1_tokens, args.grid_stage2_tokens) if row.budget == "grid" else (
        args.stage1_tokens, args.stage2_tokens)
    cmd = [sys.executable, "-m", "lizardlm", "linearize", "--preset", args.preset, "--teacher", args.teacher,
           "--seed", str(args.seed), "--stage1-tokens", str(s1 if row.stage1 else 0), "--stage2-tokens", str(s2),
           "--device", args.device, "--out", str(run_dir), *args.linearize_flags.split()]
    if args.data is not None:
        cmd += ["--data", args.data]
    if (run_dir / "run.json").exists():
        cmd.append("--resume")
    return cmd + list(row.flags)


def eval_command(args: argparse.Namespace, model: str, tasks: str, out: Path, limit: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "lizardlm", "eval", "--model", model, "--tasks", tasks, "--device", args.device,
           "--passkey-lengths", args.passkey_lengths, "--passkey-trials", str(args.passkey_trials),
           "--longppl-len", str(args.longppl_len), "--longppl-windows", str(args.longppl_windows),
           "--out", str(out), "--no-progress", "--no-plots", *args.eval_flags.split()]
    return cmd + (["--limit", str(limit)] if limit else [])


def row_evals(args: argparse.Namespace, full: bool) -> list[tuple[str, str, int | None]]:
    """``(folder, tasks, limit)`` of each evaluation process of a row: the ``EVAL_GROUPS`` at ``--limit``
    (MMLU at ``--mmlu-limit``), then, when ``full``, the zero-shot tasks on the whole sets."""
    evals = [(f"group{i}", tasks, args.mmlu_limit if tasks == "mmlu" else args.limit)
             for i, tasks in enumerate(EVAL_GROUPS)]
    return evals + [("full", FULL_GROUP, None)] if full else evals


def kv_bytes(teacher_config, run_dir: Path | None, summary: dict | None) -> int:
    """Generation cache of one sequence at 32K tokens, bf16 (softmax layers grow, Lizard layers do not)."""
    from lizardlm.train.hybrid import kv_cache_bytes
    from lizardlm.train.settings import TrainSettings

    if summary is None or summary.get("baseline"):
        return kv_cache_bytes(teacher_config, None, KV_CONTEXT)
    lizard = TrainSettings.from_dict(json.loads((run_dir / "run.json").read_text())["settings"]).lizard_config()
    lizard.softmax_layers = summary["softmax_layers"]
    return kv_cache_bytes(teacher_config, lizard, KV_CONTEXT)


def train_record(run_dir: Path, summary: dict) -> dict:
    """Tokens actually trained, seconds, validation perplexities and softmax layers of one run."""
    from lizardlm.train.settings import TrainSettings

    s = TrainSettings.from_dict(json.loads((run_dir / "run.json").read_text())["settings"])
    per_step = s.batch_size * s.seq_len
    stage1 = 0 if summary.get("baseline") else s.steps(1) * per_step
    return {"stage1_tokens": stage1, "stage2_tokens": s.steps(2) * per_step, "tokens": stage1 + s.steps(2) * per_step,
            "train_seconds": summary["stage1_seconds"] + summary["stage2_seconds"],
            "val_ppl": summary["student_val_ppl"], "teacher_val_ppl": summary["teacher_val_ppl"],
            "softmax_layers": summary["softmax_layers"]}


class Slots:
    """At most ``n`` holders at once; waiters are served by lowest ``priority``, then arrival."""

    def __init__(self, n: int) -> None:
        self.free, self.waiting = n, []
        self.cond = threading.Condition()
        self.arrival = itertools.count()

    @contextlib.contextmanager
    def hold(self, priority: tuple) -> Iterator[None]:
        with self.cond:
            ticket = (priority, next(self.arrival))
            heapq.heappush(self.waiting, ticket)
            self.cond.wait_for(lambda: self.free > 0 and self.waiting[0] == ticket)
            heapq.heappop(self.waiting)
            self.free -= 1
        try:
            yield
        finally:
            with self.cond:
                self.free += 1
                self.cond.notify_all()


class Study:
    """Runs rows against one deadline, at most ``jobs`` GPU processes at a time."""

    def __init__(self, args: argparse.Namespace, teacher_config, log: Path, order: list[str],
                 full_sets: set[str]) -> None:
        self.args, self.teacher_config, self.log, self.order = args, teacher_config, log, order
        self.full_sets = full_sets
        self.slots, self.train_slots = Slots(args.jobs), threading.Semaphore(args.train_jobs)
        self.started = time.perf_counter()

    def left(self) -> float:
        return self.args.deadline - (time.perf_counter() - self.started)

    def gpu(self, cmd: list[str], row: Row) -> tuple[int, float]:
        """Run ``cmd`` in a free slot (evaluations first, then by row); exit 124 when the deadline leaves
        no time for it."""
        training = cmd[3] != "eval"
        with self.train_slots if training else contextlib.nullcontext(), \
                self.slots.hold((training, self.order.index(row.name))):
            if self.left() < 60:
                return 124, 0.0
            return run_logged(cmd, self.log, timeout=self.left() - 10)

    def row(self, row: Row) -> dict:
        """Train (unless done), evaluate (groups not done yet) and score one row; its record."""
        try:
            return self._row(row)
        except Exception as err:  # one broken row must not cost the others their results
            return {"group": row.group, "flags": " ".join(row.flags), "status": f"error: {type(err).__name__}: {err}"}

    def _row(self, row: Row) -> dict:
        run_dir = self.args.runs / row.name
        saved = run_dir / "study-row.json"
        if saved.exists():
            return json.loads(saved.read_text())
        record: dict = {"group": row.group, "flags": " ".join(row.flags), "status": "running"}
        summary = None
        if row.budget != "none":
            if not (run_dir / "summary.json").exists():
                rc, secs = self.gpu(linearize_command(self.args, row, run_dir), row)
                record["linearize_seconds"] = secs
                if rc != 0:
                    return {**record, "status": f"linearize exit {rc} (124: deadline); see the log"}
            summary = json.loads((run_dir / "summary.json").read_text())
            record.update(train_record(run_dir, summary))
        run_dir.mkdir(parents=True, exist_ok=True)
        model = str(run_dir) if summary is not None else self.args.teacher
        t0 = time.perf_counter()

        evals = row_evals(self.args, row.name in self.full_sets)

        def one(folder: str, tasks: str, limit: int | None) -> dict | None:
            got = run_dir / "eval" / folder / "eval.json"
            if not got.exists():
                self.gpu(eval_command(self.args, model, tasks, got.parent, limit), row)
            return json.loads(got.read_text()) if got.exists() else None

        with ThreadPoolExecutor(len(evals)) as pool:
            groups = list(pool.map(lambda a: one(*a), evals))
        record["eval_seconds"] = time.perf_counter() - t0
        failed = [tasks for (_, tasks, _), g in zip(evals, groups) if g is None]
        record.update(row_scores([g for (folder, _, _), g in zip(evals, groups) if g is not None and folder != "full"]))
        if row.name in self.full_sets and groups[-1] is not None:
            record["full"] = full_scores(groups[-1])
        record["kv_cache_bytes_32k"] = kv_bytes(self.teacher_config, run_dir, summary)
        if failed:
            return {**record, "status": f"eval failed for {failed}; see the log"}
        record["status"] = "done"
        saved.write_text(json.dumps(record, indent=2))
        return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    share_cpus(args.jobs)
    from lizardlm.teachers import load_teacher

    teacher_config = load_teacher(args.teacher)[0].config
    rows = study_rows(teacher_config.num_hidden_layers)
    try:
        chosen = select_rows(rows, args.rows)
        full_sets = {r.name for r in select_rows(rows, args.full_sets)} if args.full_sets else set()
    except ValueError as err:
        print(f"study.py: error: {err}", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    out = args.out / f"study-{device_slug(device)}.json"
    result = {"device": device, "budget": budget(args), "rows": {}, "calls": []}
    if out.exists():
        earlier = json.loads(out.read_text())
        if earlier["budget"] != result["budget"]:
            print(f"study.py: error: {out} holds a study at another budget ({earlier['budget']}); "
                  "choose another --out or move it away", file=sys.stderr)
            return 2
        result["rows"], result["calls"] = earlier["rows"], earlier["calls"]
    study = Study(args, teacher_config, args.out / f"study-{device_slug(device)}.log", list(rows), full_sets)
    todo = [r for r in chosen if result["rows"].get(r.name, {}).get("status") != "done"]
    with ThreadPoolExecutor(max(1, len(todo))) as pool:
        for row, record in zip(todo, pool.map(study.row, todo)):
            result["rows"][row.name] = record
    result["rows"] = {name: result["rows"][name] for name in rows if name in result["rows"]}  # table order
    teacher = result["rows"].get("teacher", {})
    result.update({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "metrics": MC_TASKS, "chance": CHANCE, "kv_context": KV_CONTEXT,
        "full_sets": sorted(name for name, r in result["rows"].items() if "full" in r),  # rows with whole-set scores
        "discriminative": discriminative(teacher.get("full", teacher)) if teacher.get("status") == "done" else [],
    })
    result["calls"].append({"rows": [r.name for r in todo], "wall_seconds": time.perf_counter() - study.started})
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({name: r["status"] for name, r in result["rows"].items()}, indent=1))
    return 0 if all(result["rows"].get(r.name, {}).get("status") == "done" for r in chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
