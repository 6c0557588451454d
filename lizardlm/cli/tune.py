"""``lizardlm tune``: choose a Lizard model's inference knobs (``--decay-scale``, ``--write-contrast``,
``--read-sharpness``) for the prompt lengths it will serve, on passkey prompts that ``lizardlm eval`` does
not score.

    lizardlm tune --model runs/mixr2k --lengths 16384,32768 --device cuda --out runs/mixr2k/tune

Every setting of the grid (``--decay-scales`` x ``--write-contrasts`` x ``--read-sharpnesses``) scores
``--trials`` passkey prompts a length, drawn from ``--seed`` (1; the evaluation draws from 0); the best
mean exact match over the lengths wins (``lizardlm.eval.knobs``), printed with its standard error and the
number of settings within noise of it; ``--refine N`` gives those settings and the choice N more prompts a
length and chooses again. Writes ``knobs.json`` (every setting's accuracy, first digit and
answer NLL per length, the choice) and ``knobs.png`` (the grid as heat maps, a row per read sharpness) into
``--out`` (default ``MODEL/tune``), and prints the flags to pass to ``eval`` and ``generate``. The model it
read is not changed; ``--save DIR`` writes a copy with the chosen knobs set (``save_pretrained`` and the
tokenizer), which ``generate``, ``eval`` and ``from_pretrained`` then run at them with no flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lizardlm.cli.common import (add_device_and_dtype, batch_size, check_paths, float_list, load_model_for_eval,
                                 non_negative_int, positive_int, run_device_and_dtype, seed, sizes)
from lizardlm.errors import CheckpointError, LizardError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tune",
        help="choose a Lizard model's decay scale, write contrast and read sharpness for long prompts, on held-out "
        "passkey prompts",
        description="Score a grid of inference knobs (decay scale x write contrast x read sharpness) on passkey prompts "
        "at the lengths to be served, drawn from a seed of their own, and say which setting to pass to eval and generate.",
    )
    p.add_argument("--model", required=True, help="run dir or saved Lizard model dir")
    p.add_argument("--lengths", type=sizes, required=True, help="comma-separated prompt lengths in tokens (e.g. 16k,32k)")
    p.add_argument("--decay-scales", type=float_list, default=None, metavar="S,S,...",
                   help="decay scales to try (default: 1,0.5,0.25,0.125 with a decay gate, else 1)")
    p.add_argument("--write-contrasts", type=float_list, default=None, metavar="C,C,...",
                   help="write contrasts to try (default: 1,2,3 with a write gate, else 1)")
    p.add_argument("--read-sharpnesses", type=float_list, default=None, metavar="T,T,...",
                   help="read sharpnesses to try (default: 1,2)")
    p.add_argument("--trials", type=positive_int, default=50,
                   help="passkey prompts per length and setting (default 50: 20 could not tell 0.78 from 1.00)")
    p.add_argument("--refine", type=non_negative_int, default=0, metavar="N",
                   help="where settings score within two standard errors of the best, they and the best score N more "
                        "prompts a length (seed --seed + 1), pooled with their first, and the choice is made again "
                        "(default 0: none)")
    p.add_argument("--depths", type=positive_int, default=10, help="needle depths the trials cycle through (0 to 1)")
    p.add_argument("--seed", type=seed, default=1, help="the prompts' seed (default 1: lizardlm eval's passkey uses 0)")
    p.add_argument("--template", default="eval", choices=["eval", "train"],
                   help="eval: the passkey task's prompt (default); train: the retrieval data's, in held-out books")
    p.add_argument("--keys", type=positive_int, default=1, help="numbered passkeys a train-template prompt holds")
    p.add_argument("--data-dir", default=None, help="benchmark data directory, for the train template's held-out books")
    p.add_argument("--batch-size", type=batch_size, default="auto", help="prompts at once: N or auto (16 on CUDA, 4 on CPU)")
    p.add_argument("--chunk", type=positive_int, default=2048, help="prefill chunk: long inputs run through the model's cache")
    add_device_and_dtype(p)
    p.add_argument("--out", default=None, help="output directory (default: MODEL/tune)")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="also save the model with the chosen knobs set into DIR (a new or empty directory), "
                        "ready for generate / eval / from_pretrained without flags")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from lizardlm.eval._utils import resolve_batch_size
    from lizardlm.eval.knobs import tune_knobs
    from lizardlm.eval.report import EvalConfig, held_out_books, knob_heatmap
    from lizardlm.models.modeling import is_lizard_model

    on_gpu, dtype = run_device_and_dtype(args)
    model_path = Path(args.model).expanduser()
    if not model_path.is_dir():
        raise LizardError(f"--model {args.model}: no such directory (a run dir or a saved Lizard model)")
    out_dir = Path(args.out) if args.out else model_path / "tune"
    save_dir = Path(args.save).expanduser() if args.save else None
    if save_dir is not None and save_dir.resolve() == out_dir.resolve():
        raise LizardError(f"--save {args.save}: give the model a directory of its own, not --out's")
    if save_dir is not None and save_dir.exists() and (not save_dir.is_dir() or any(save_dir.iterdir())):
        raise LizardError(f"--save {args.save}: exists and is not an empty directory (nothing is overwritten)")
    check_paths(args, out_dir)
    books = held_out_books(EvalConfig(data_dir=args.data_dir)) if args.template == "train" else None  # before the model loads
    print(f"loading model {args.model} ...", file=sys.stderr)
    model, tokenizer = load_model_for_eval(args.model, device=args.device, dtype=dtype)
    if not is_lizard_model(model):
        raise LizardError(f"--model {args.model} is not a Lizard model: it has no inference knobs")
    if tokenizer is None:
        raise CheckpointError(f"{args.model} has no tokenizer; save one beside the model")
    filler = None
    if books is not None:
        from lizardlm.data.retrieval import FillerPool

        filler = FillerPool(books, tokenizer)
    try:
        search = tune_knobs(model, tokenizer, args.lengths, decay_scales=args.decay_scales, write_contrasts=args.write_contrasts,
                            read_sharpnesses=args.read_sharpnesses, refine=args.refine, trials=args.trials, seed=args.seed,
                            depths=args.depths,
                            template=args.template, filler=filler,
                            keys=args.keys, chunk=args.chunk, batch_size=resolve_batch_size(args.batch_size, model),
                            progress=not args.no_progress)
    except ValueError as err:
        raise LizardError(str(err)) from None
    search.update(model=args.model, device=torch.cuda.get_device_name() if on_gpu else "cpu",
                  dtype=str(dtype).removeprefix("torch."), torch=torch.__version__)
    (out_dir / "knobs.json").write_text(json.dumps(search, indent=2) + "\n")
    written = [str(out_dir / "knobs.json")] + ([] if args.no_plots else [knob_heatmap(search, out_dir / "knobs.png")])
    print(knob_table(search))
    best = search["best"]
    print(f"chosen: --decay-scale {best['decay_scale']:g} --write-contrast {best['write_contrast']:g} "
          f"--read-sharpness {best['read_sharpness']:g} (mean exact match {best['mean_acc']:.2f} "
          f"± {best['mean_acc_se']:.2f} at {','.join(map(str, search['lengths']))} tokens)")
    if refined := search["refined"]:
        print(f"refined: {len(refined['settings'])} settings (the first choice and those within noise of it) scored "
              f"{refined['trials']} more prompts a length (seed {refined['seed']})")
    if best["close"]:
        print(f"{len(best['close'])} of the other {len(search['grid']) - 1} settings score within two standard errors "
              f"of it: more --trials or --refine would tell them apart")
    if save_dir is not None:
        written.append(save_tuned(model, tokenizer, best, save_dir))
    print("wrote " + ", ".join(written), file=sys.stderr)
    return 0


def save_tuned(model, tokenizer, best: dict, save_dir: Path) -> str:
    """Save ``model`` with the chosen knobs set (kept in its config) and its tokenizer into ``save_dir``;
    the model's own knobs stay. Returns the directory."""
    from lizardlm.config import INFERENCE_KNOBS
    from lizardlm.eval.knobs import at_knobs

    with at_knobs(model, **{k: best[k] for k in INFERENCE_KNOBS}):
        model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    return str(save_dir)


def knob_table(search: dict) -> str:
    """The grid as markdown: a row per setting, exact match per length, the mean and its standard error,
    the mean answer NLL."""
    lengths = [str(L) for L in search["lengths"]]
    rows = ["| decay scale | write contrast | read sharpness | " + " | ".join(f"passkey @ {L}" for L in lengths)
            + " | mean ± se | answer NLL |", "|---:|---:|---:|" + "---:|" * (len(lengths) + 2)]
    for r in search["grid"]:
        nll = "–" if r["mean_nll"] is None else f"{r['mean_nll']:.3f}"
        rows.append(f"| {r['decay_scale']:g} | {r['write_contrast']:g} | {r['read_sharpness']:g} | "
                    + " | ".join(f"{r['acc'][L]:.2f}" for L in lengths)
                    + f" | {r['mean_acc']:.2f} ± {r['mean_acc_se']:.2f} | {nll} |")
    return "\n".join(rows)
