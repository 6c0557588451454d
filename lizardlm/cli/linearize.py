"""``lizardlm linearize``: teacher -> trained Lizard model (stage 1 + stage 2), resumable."""

from __future__ import annotations

import argparse
import json

from lizardlm.cli.common import (
    add_lizard_arguments,
    lizard_overrides,
    non_negative_int,
    positive_float,
    positive_int,
    passing_probabilities,
    seed,
    softmax_select,
)
from lizardlm.errors import LizardError
from lizardlm.train.settings import BASELINES, LOSS_AVERAGES, PRESETS, ROW_ORDERS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "linearize",
        help="linearize a teacher: attention transfer, then LoRA",
        description="Turn a teacher into a trained Lizard model. Progress bars, JSONL metrics, loss-curve PNGs and "
        "a summary land in --out; --resume continues an interrupted run exactly.",
    )
    p.add_argument("--teacher", default=None, help="smollm2-135m (embedded, default), a local HF dir, a .gguf, or a hub id")
    p.add_argument("--data", default=None, help="default | wikitext2-valid | tinyshakespeare | alpaca-cleaned | long-docs | FILE/DIR | hf:NAME | "
                   "teacher-samples | retrieval[:KEY=VALUE]... | mix:SPEC=WEIGHT,...; SPEC@train / SPEC@eval: without / only "
                   "the held-out tenth of its documents (see lizardlm.data)")
    p.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--stage1-tokens", type=non_negative_int, default=None)
    p.add_argument("--stage2-tokens", type=non_negative_int, default=None)
    p.add_argument("--val-tokens", type=positive_int, default=None)
    p.add_argument("--seq-len", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--stage1-lr", type=positive_float, default=None)
    p.add_argument("--stage2-lr", type=positive_float, default=None)
    p.add_argument("--lora-rank", type=positive_int, default=None)
    p.add_argument("--stage2-train-lizard", action="store_true", default=None,
                   help="keep training the stage-1 parameters during stage 2")
    p.add_argument("--loss-average", choices=LOSS_AVERAGES, default=None,
                   help="stage 2's loss over a batch: the mean over its target tokens (tokens, default), or each "
                   "row's mean then the mean over rows (rows: a row of a few answer tokens, as in "
                   "retrieval:...:loss=answers, weighs as much as a row of text, so mixture shares are loss shares)")
    p.add_argument("--answer-rows", default=None, metavar="all|lizard[:TARGET,...]",
                   help="what stage 2's rows with input-only tokens (retrieval:...:loss=answers documents) train: "
                   "all trainable parameters (default); lizard: the Lizard parameters alone, so the LoRA adapter "
                   "learns from the other rows only; lizard:q_proj,k_proj: those and the LoRA of the targets named "
                   "(needs --stage2-train-lizard)")
    p.add_argument("--answer-repeat-weight", type=positive_float, default=None, metavar="W",
                   help="stage 2: an answer target of a retrieval:...:loss=answers row that repeats the target before "
                   "it (a doubled digit's second copy, where a passkey copy slips) counts W times in its row's "
                   "loss (default 1; needs --loss-average rows)")
    p.add_argument("--loss-chunk", type=int, default=None, metavar="N",
                   help="stage 2's LM head and cross-entropy N positions at a time, recomputed in the backward: the "
                   "rows x length x vocabulary logits never exist at once (same loss, less memory; 0: whole rows, default)")
    p.add_argument("--state-passing", type=passing_probabilities, default=None, metavar="P[,P...]",
                   help="stage 2: each row starts, with probability P, from the linear memory the previous batch's "
                   "row in its slot left (a long history behind the rows, for length generalisation; off by default); "
                   "with --row-order contiguous and a mix: data spec, one P per part, in its order (e.g. 0.9,0: books "
                   "that read on from their own memory beside passkey documents that start empty)")
    p.add_argument("--row-order", choices=ROW_ORDERS, default=None,
                   help="stage 2's rows: shuffled (default), or contiguous: each row of a batch continues the text "
                   "its slot read the step before, so that with --state-passing 1 a row starts from the memory of its "
                   "own document (truncated backpropagation through time, for long documents)")
    p.add_argument("--reset-at-documents", action="store_true", default=None,
                   help="with --row-order contiguous: a row that begins a document starts from an empty memory, as "
                   "evaluation does, so a document longer than a row is read with its own memory only (rows after a "
                   "gap in their lane always start empty)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, help="steps between checkpoints")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="stage 2 recomputes each decoder layer's activations in the backward: less memory "
                   "for long sequences, same results (stage 1 keeps one layer's activations at a time anyway); "
                   "the cpu-demo preset turns it on, --no-gradient-checkpointing turns it off")
    p.add_argument("--fsdp", action="store_true", default=None,
                   help="under torchrun, shard the teacher's weights over the processes (FSDP2, one unit per "
                   "decoder layer): for teachers that do not fit one device; same results")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each training step from one CUDA graph: the same steps with far less host work "
                   "(one process on CUDA; not with --fsdp or --gradient-checkpointing); the gpu and paper presets "
                   "turn it on where it can run, --no-cuda-graphs turns it off")
    p.add_argument("--seed", type=seed, default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--init-from", default=None, metavar="RUN_DIR",
                   help="start from a finished run's Lizard parameters and LoRA adapter instead of the converted teacher "
                   "and a fresh adapter, to train it on further data (--stage1-tokens 0: straight to stage 2); the "
                   "teacher, the Lizard flags and the LoRA rank default to that run's, and must match it")
    p.add_argument("--merge", action="store_true", help="also write full merged weights to OUT/merged")
    p.add_argument("--baseline", choices=BASELINES, default=None,
                   help="teacher-lora: no conversion and no stage 1, the same stage-2 LoRA (data, tokens, targets, "
                   "schedule, seed) on the teacher itself: the fair quality ceiling of a linearization")
    add_lizard_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lizardlm.train import linearize
    from lizardlm.train.distributed import is_main, shutdown
    from lizardlm.train.rundir import init_settings
    from lizardlm.train.settings import settings_from_preset

    overrides = {
        name: getattr(args, name)
        for name in ("teacher", "data", "stage1_tokens", "stage2_tokens", "val_tokens", "seq_len", "batch_size",
                     "stage1_lr", "stage2_lr", "lora_rank", "stage2_train_lizard", "checkpoint_every", "seed", "device",
                     "gradient_checkpointing", "fsdp", "cuda_graphs", "loss_average", "answer_rows", "answer_repeat_weight", "loss_chunk", "state_passing", "row_order",
                     "reset_at_documents")
    }
    lizard = lizard_overrides(args)
    if args.init_from is not None:  # that run's teacher, LoRA shape and layers where not given
        inherited = init_settings(args.init_from)
        lizard = {**inherited.pop("lizard"), **lizard}
        overrides.update({k: v for k, v in inherited.items() if overrides.get(k) is None})
        overrides["init_from"] = args.init_from
    try:
        settings = settings_from_preset(args.preset, lizard=lizard, baseline=args.baseline,
                                        softmax_select=softmax_select(args), **overrides)
    except ValueError as err:
        raise LizardError(str(err)) from None
    try:
        summary = linearize(settings, args.out, resume=args.resume, merge=args.merge)
        main = is_main()  # torchrun / accelerate launch: rank 0 alone reports
    finally:
        shutdown()
    if not main:
        return 0
    print(json.dumps({k: v for k, v in summary.items() if not k.endswith("_per_layer")}, indent=2))
    if summary["baseline"] is not None:
        print(f"teacher val ppl {summary['teacher_val_ppl']:.2f} | {summary['baseline']} val ppl "
              f"{summary['student_val_ppl']:.2f}  ->  {args.out}")
        return 0
    before, after = sum(summary["stage1_val_mse_init_per_layer"]), sum(summary["stage1_val_mse_per_layer"])
    print(f"attention-transfer validation MSE (sum over layers): {before:.4g} at conversion -> {after:.4g}")
    print(
        f"teacher val ppl {summary['teacher_val_ppl']:.2f} | after stage 1 {summary['stage1_val_ppl']:.2f} | "
        f"student val ppl {summary['student_val_ppl']:.2f}  ->  {args.out}"
    )
    return 0
