"""``lizardlm eval``: evaluate a model (and optionally its teacher, side by side).

    lizardlm eval --model runs/smollm2 --teacher smollm2-135m --tasks wikitext2,piqa,mqar,passkey \\
        --limit 200 --passkey-lengths 1024,2048 --out runs/smollm2/eval

Writes ``eval.json`` (every number, versions, device, limits), ``eval.md`` (the table printed at the
end) and PNG plots (passkey accuracy vs length, MQAR accuracy vs pairs/length, perplexity vs
position) into ``--out`` (default: ``RUN_DIR/eval`` when ``--model`` is a directory, else
``./eval-out``). After every task the results so far go to ``eval.partial.json`` there, so a cut
evaluation keeps what it finished: ``--resume`` runs only the rest, and keeps the tasks of an earlier
evaluation in ``--out`` (cut or finished) that this one does not name; a task's own settings
(``--passkey-trials`` for ``passkey``...) are compared only for the tasks that read them, and a named
task whose own settings changed runs again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lizardlm.cli.common import (add_device_and_dtype, add_inference_knobs, batch_size, check_paths, load_model_for_eval,
                                 positive_int, run_device_and_dtype, set_inference_knobs, sizes)
from lizardlm.errors import CheckpointError, LizardError

# kept in sync with lizardlm.eval.report (not imported here: the CLI parser must load fast)
TASKS_HELP = (
    "wikitext2, wikitext2_valid, tinyshakespeare (perplexity); piqa, arc_easy, arc_challenge, hellaswag, "
    "winogrande (0-shot), mmlu (5-shot) (lm-eval on local files); mqar; passkey; position_ppl (perplexity "
    "vs position); passkey_train (training template, held-out books), ruler, longppl (held-out long-docs books, or --longppl-data, by position), diagnostics (Lizard models: linear-branch share, needle weight, gate decay per layer). Default: wikitext2,piqa,arc_easy,arc_challenge,hellaswag,winogrande,mmlu,mqar,passkey,"
    "position_ppl"
)
LM_BACKENDS = ("fast", "hflm")  # lizardlm.eval.harness.LM_BACKENDS (not imported: the parser must load fast)
CPU_PASSKEY_LENGTHS = "1024,2048"
GPU_PASSKEY_LENGTHS = "1024,2048,4096,8192,16384,32768"


def _task_data(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected TASK=PATH, got {text!r}")
    return name.strip(), path.strip()


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model (perplexity, benchmarks, MQAR, passkey) against its teacher",
        description="Evaluate a Lizard run/model or a teacher; with --teacher, both side by side with recovery %. "
        "Benchmark files are read from the data directory (--data-dir, $LIZARDLM_DATA_DIR, ../shared/data or "
        "./shared/data; layout in lizardlm.eval.data); wikitext2_valid and tinyshakespeare fall back to the samples "
        "shipped with lizardlm; mqar and passkey need no files; other missing sets are reported as absent, and the "
        "command fails when no task ran.",
    )
    p.add_argument("--model", required=True, help="run dir, saved Lizard model dir, or teacher name/path (e.g. smollm2-135m)")
    p.add_argument("--teacher", default=None, help="teacher name/path to evaluate alongside (column 'teacher')")
    p.add_argument("--tasks", default=None, help="comma-separated tasks: " + TASKS_HELP)
    p.add_argument("--limit", type=positive_int, default=None,
                   help="at most N examples per task (perplexity windows, lm-eval docs per task/MMLU subject, "
                   "MQAR prompts per setting, passkey trials per length)")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/eval or ./eval-out)")
    p.add_argument("--data-dir", default=None, help="benchmark data directory (default: $LIZARDLM_DATA_DIR, ../shared/data, ./shared/data)")
    p.add_argument("--task-data", type=_task_data, action="append", default=[], metavar="TASK=PATH",
                   help="a task's own directory or file, overriding <data-dir>/<task>/ (repeatable)")
    p.add_argument("--batch-size", type=batch_size, default="auto",
                   help="N or auto (default): multiple-choice batches fill a token and memory budget (--lm hflm: "
                   "lm-eval finds the largest batch that fits on CUDA, 16 on CPU); perplexity, MQAR, passkey and "
                   "RULER start at 16 on CUDA (4 on CPU) and split a batch that runs out of memory")
    p.add_argument("--lm", dest="lm_backend", default="fast", choices=LM_BACKENDS,
                   help="multiple-choice scorer: fast (default; lizardlm's, one forward per shared context, LM head "
                   "at the answer positions only) or hflm (lm-eval's HFLM wrapper); the same scores")
    add_device_and_dtype(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=positive_int, default=1024, help="perplexity window (tokens, non-overlapping)")
    p.add_argument("--passkey-lengths", type=sizes, default=None,
                   help=f"comma-separated prompt lengths in tokens (default: {CPU_PASSKEY_LENGTHS} on cpu, {GPU_PASSKEY_LENGTHS} on cuda)")
    p.add_argument("--passkey-trials", type=positive_int, default=50, help="prompts per length (seeded keys)")
    p.add_argument("--passkey-depths", type=positive_int, default=10, help="needle depths the trials cycle through (0 to 1)")
    p.add_argument("--passkey-keys", type=positive_int, default=5,
                   help="numbered passkeys in each passkey_train prompt (the retrieval data's keys=; one is asked for)")
    p.add_argument("--chunk", type=positive_int, default=2048, help="prefill chunk: long inputs run through the model's cache")
    p.add_argument("--ruler-lengths", type=sizes, default=(1024, 2048), help="RULER prompt lengths (e.g. 4k,8k,16k,32k)")
    p.add_argument("--ruler-trials", type=positive_int, default=20, help="prompts per RULER task and length")
    p.add_argument("--longppl-len", type=positive_int, default=32768, help="window of the long-document perplexity")
    p.add_argument("--longppl-windows", type=positive_int, default=4,
                   help="windows averaged (one a held-out book; see --longppl-data)")
    p.add_argument("--longppl-context", type=positive_int, default=None,
                   help="predict each position from at most this many tokens (sliding windows): a fixed-context "
                        "reference, e.g. the teacher within its training length, for how hard each stretch of the books is")
    p.add_argument("--longppl-data", default=None, metavar="SPEC",
                   help="the text of longppl (default: the held-out tenth of the long-docs books): a perplexity corpus "
                        "by name (tinyshakespeare, wikitext2, wikitext2_valid: its whole file as one text, in consecutive "
                        "windows), or a --data spec (a file, hf:...); out-of-domain long text for a student trained on books")
    p.add_argument("--diagnostics-lengths", type=sizes, default=(1024,), help="passkey prompt lengths of the diagnostics")
    p.add_argument("--diagnostics-trials", type=positive_int, default=8, help="passkey prompts per diagnostics length")
    p.add_argument("--passkey-time-budget", type=float, default=None,
                   help="seconds per passkey length; longer lengths estimated to exceed it are skipped (default: 900 on cpu)")
    p.add_argument("--mqar-pairs", type=sizes, default=(2, 4, 8, 16, 32), help="numbers of key-value pairs")
    p.add_argument("--mqar-lengths", type=sizes, default=(128, 256, 512, 1024), help="sequence lengths (8 pairs + filler)")
    p.add_argument("--mqar-samples", type=positive_int, default=20, help="prompts per MQAR setting")
    p.add_argument("--mqar-format", default="lines", choices=["lines", "zoology"])
    p.add_argument("--position-len", type=positive_int, default=4096, help="window length for perplexity vs position")
    p.add_argument("--position-bucket", type=positive_int, default=256, help="bucket size for perplexity vs position")
    p.add_argument("--position-windows", type=positive_int, default=4, help="windows averaged for perplexity vs position")
    add_inference_knobs(p)
    p.add_argument("--resume", action="store_true",
                   help="keep the tasks an earlier evaluation in OUT finished (a cut one's eval.partial.json, written "
                   "after every task, else eval.json; the same weights and shared settings), run the rest, and keep "
                   "its tasks that --tasks does not name: evaluations of one run in several calls add up; a named task "
                   "whose own settings changed (e.g. --passkey-trials) runs again, and a task's own settings matter "
                   "to the tasks that read them only")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def default_out_dir(model_spec: str) -> Path:
    p = Path(model_spec).expanduser()
    return p / "eval" if p.is_dir() else Path("eval-out")


def run(args: argparse.Namespace) -> int:
    from lizardlm.eval.report import (ALL_TASKS, DEFAULT_TASKS, PARTIAL, EvalConfig, evaluate, markdown_table,
                                      write_outputs)

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else list(DEFAULT_TASKS)
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise LizardError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(ALL_TASKS)}")
    if not tasks:
        raise LizardError("--tasks is empty")
    on_gpu, dtype = run_device_and_dtype(args)
    passkey_lengths = args.passkey_lengths or sizes(GPU_PASSKEY_LENGTHS if on_gpu else CPU_PASSKEY_LENGTHS)
    budget = args.passkey_time_budget if args.passkey_time_budget is not None else (None if on_gpu else 900.0)
    out_dir = Path(args.out) if args.out else default_out_dir(args.model)
    check_paths(args, out_dir)

    models = {}
    sources = {}
    if args.teacher:
        print(f"loading teacher {args.teacher} ...", file=sys.stderr)
        models["teacher"] = load_model_for_eval(args.teacher, device=args.device, dtype=dtype)
        sources["teacher"] = args.teacher
    name = "student" if args.teacher else "model"
    print(f"loading {name} {args.model} ...", file=sys.stderr)
    model, tokenizer = load_model_for_eval(args.model, device=args.device, dtype=dtype)
    set_inference_knobs(model, args, args.model)
    if tokenizer is None:
        if "teacher" not in models:
            raise CheckpointError(f"{args.model} has no tokenizer; give --teacher to use the teacher's")
        tokenizer = models["teacher"][1]
    models[name] = (model, tokenizer)
    sources[name] = args.model

    cfg = EvalConfig(
        data_dir=args.data_dir,
        data_paths=dict(args.task_data),
        limit=args.limit,
        batch_size=args.batch_size,
        seed=args.seed,
        ppl_window=args.window,
        position_seq_len=args.position_len,
        position_bucket=args.position_bucket,
        position_windows=args.position_windows,
        mqar_pairs=args.mqar_pairs,
        mqar_lengths=args.mqar_lengths,
        mqar_n=args.mqar_samples,
        mqar_format=args.mqar_format,
        passkey_lengths=passkey_lengths,
        passkey_trials=args.passkey_trials,
        passkey_time_budget_s=budget,
        passkey_depths=args.passkey_depths,
        passkey_keys=args.passkey_keys,
        chunk=args.chunk,
        ruler_lengths=args.ruler_lengths,
        ruler_trials=args.ruler_trials,
        longppl_len=args.longppl_len,
        longppl_windows=args.longppl_windows,
        longppl_context=args.longppl_context,
        longppl_data=args.longppl_data,
        diagnostics_lengths=args.diagnostics_lengths,
        diagnostics_trials=args.diagnostics_trials,
        progress=not args.no_progress,
        lm_backend=args.lm_backend,
    )
    partial = out_dir / PARTIAL
    if partial.exists() and not args.resume:
        print(f"lizardlm eval: {partial} (a cut evaluation) is replaced; --resume keeps its finished tasks",
              file=sys.stderr)
    results = evaluate(models, tasks, config=cfg, sources=sources, reference="teacher" if args.teacher else None,
                       partial=partial, resume=args.resume)
    paths = write_outputs(results, out_dir, plots=not args.no_plots)
    partial.unlink(missing_ok=True)
    print(markdown_table(results))
    print("wrote " + ", ".join(paths.values()), file=sys.stderr)
    failed = [t for t, per in results["tasks"].items() if any(e.get("status") == "error" for e in per.values())]
    if not any(e.get("status") == "ok" for per in results["tasks"].values() for e in per.values()):
        print("lizardlm eval: no task ran (see the notes above): give --data-dir or --task-data, "
              "or choose tasks that need no files (mqar, passkey, wikitext2_valid)", file=sys.stderr)
        return 1
    if failed:
        print(f"lizardlm eval: task(s) failed: {', '.join(failed)} (see eval.json)", file=sys.stderr)
        return 1
    return 0
