"""Training throughput at scale: the teacher's own LoRA step beside the two linearization stages.

Random-weight models of real teacher shapes (configs below, no download), bf16 weights on CUDA
(float32 on CPU). Per shape, sequence length and Lizard mode it times, with the library's own
loss functions and optimizer (:func:`lizardlm.train.step.adamw`: fused on CUDA), one optimizer step
(forward, backward, gradient clipping, AdamW) of

* ``teacher_lora``: peft LoRA rank 8 on q/k/v/o of the teacher, next-token loss;
* ``stage1``: attention transfer (only the Lizard parameters train);
* ``stage2``: LoRA rank 8 on q/k/v/o of the Lizard model, next-token loss;

and the peak memory of each, then projects the paper's recipe (20M stage-1 + 20M stage-2 tokens).
With ``--cuda-graphs`` each step is timed again replayed from a CUDA graph (``*_graph_*`` keys), from
the same starting weights, with the largest relative difference of the two runs' losses, and the
recipe is projected at the graphed rates too (``recipe_graph_minutes``).
An out-of-memory error (or any other failure) is recorded in its row and the run goes on::

    python benchmarks/scale.py --out benchmarks/results                      # all shapes, 2K and 8K
    python benchmarks/scale.py --shapes llama-3-8b --seqs 8192 --lizard-mode paper
    python benchmarks/scale.py --quick                                       # tiny, CPU-friendly
    python benchmarks/scale.py --shapes smollm2-135m --seqs 2048 --cuda-graphs \
        --variant 'f256:window_size=128,feature_dim=256,write_gate=head,stage2_train_lizard=1,loss_average=rows'

A ``--variant NAME:KEY=VALUE,...`` is a row of its own: ``LizardConfig`` fields (``mode``, ``feature_dim``,
``window_size``, ``write_gate``...) and the stage-2 settings that change a step's work,
``stage2_train_lizard`` (0/1: the Lizard parameters train beside LoRA, ``--stage2-train-lizard``),
``loss_average`` (``tokens``/``rows``, ``--loss-average``) and ``loss_chunk`` (N positions of the LM head at a
time, ``--loss-chunk``); each ``--lizard-mode`` is the variant of that mode.

Writes ``<out>/<name>-<device>.json`` (``--name``, default ``scale``; rewritten after every row): ``{"runs": [...], "device": .., "versions": ..}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

import lizardlm
from lizardlm.train.linearize import _lm_loss_fn, _transfer_loss_fn
from lizardlm.train.settings import LOSS_AVERAGES
from lizardlm.train.step import EagerStep, GraphedStep, adamw
from result_names import device_slug

RECIPE_TOKENS = 20_000_000  # per stage (the paper's 20M + 20M)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
STAGE2_KEYS = ("stage2_train_lizard", "loss_average", "loss_chunk")
"""Variant keys that are stage-2 settings, not :class:`lizardlm.LizardConfig` fields."""

_LLAMA3 = dict(vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192, bos_token_id=128000)
SHAPES: dict[str, tuple[type, type, dict[str, Any]]] = {
    "smollm2-135m": (LlamaConfig, LlamaForCausalLM, dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True)),
    "llama-3.2-1b": (LlamaConfig, LlamaForCausalLM, dict(
        _LLAMA3, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, tie_word_embeddings=True)),
    "llama-3-8b": (LlamaConfig, LlamaForCausalLM, dict(
        _LLAMA3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, tie_word_embeddings=False)),
    "mistral-7b": (MistralConfig, MistralForCausalLM, dict(  # v0.3: no sliding window
        vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, rope_theta=1000000.0, max_position_embeddings=32768, sliding_window=None,
        tie_word_embeddings=False)),
    "qwen2-7b": (Qwen2Config, Qwen2ForCausalLM, dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, rope_theta=1000000.0, max_position_embeddings=32768, use_sliding_window=False,
        tie_word_embeddings=False)),
    "tiny": (LlamaConfig, LlamaForCausalLM, dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024)),
}
# Rows per step at 2K tokens (the table); longer sequences keep the tokens per step.
BATCH_AT_2K = {"smollm2-135m": 8, "llama-3.2-1b": 4, "llama-3-8b": 1, "mistral-7b": 1, "qwen2-7b": 1, "tiny": 2}


def build_teacher(shape: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A random-weight teacher of ``shape`` made directly on ``device`` in ``dtype``."""
    config_cls, model_cls, kw = SHAPES[shape]
    config = config_cls(**kw, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = model_cls._from_config(config, dtype=dtype)
    return model.eval()


def default_batch(shape: str, seq: int) -> int:
    return max(1, BATCH_AT_2K[shape] * 2048 // seq)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(loss_fn: Callable, params: list[torch.nn.Parameter], ids: torch.Tensor, *, backward: bool, warmup: int,
              steps: int, device: str, graph: bool = False) -> dict[str, Any]:
    """Seconds per optimizer step of ``loss_fn(ids)`` (after ``warmup`` steps), peak GiB and the loss of
    every step, taken as the trainer takes it (:mod:`lizardlm.train.step`: eager, or replayed from a
    CUDA graph when ``graph``; the loss read back every step)."""
    optimizer = adamw(params, lr=1e-5, graphed=graph)
    autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda",  # noqa: E731
                                      cache_enabled=not graph)
    runner = (GraphedStep if graph else EagerStep)(loss_fn, params, optimizer, backward=backward, autocast=autocast)
    losses: list[float] = []

    def step() -> None:
        losses.append(runner.forward_backward(ids)[0])
        runner.update()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        for _ in range(warmup):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        seconds = (time.perf_counter() - start) / steps
    finally:
        runner.close()
        optimizer.zero_grad(set_to_none=True)
        del optimizer, runner
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"s_per_step": seconds, "peak_gib": peak, "losses": losses}


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def measure(name: str, row: dict[str, Any], fn: Callable[[], dict[str, Any]], tokens: int, device: str) -> None:
    """Run ``fn`` into ``row[name + ...]``; an OOM or other failure is recorded instead of raised."""
    try:
        result = fn()
    except torch.OutOfMemoryError:
        row[f"{name}_error"] = "out of memory"
        row[f"{name}_tok_per_s"] = None
    except Exception as err:  # noqa: BLE001: a failed row must not stop the others
        row[f"{name}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        row[f"{name}_tok_per_s"] = None
    else:
        row[f"{name}_tok_per_s"] = tokens / result["s_per_step"]
        row[f"{name}_s_per_step"] = result["s_per_step"]
        row[f"{name}_peak_gib"] = result["peak_gib"]
        row[f"{name}_losses"] = result.get("losses")
    free(device)


def measure_modes(name: str, row: dict[str, Any], loss_fn: Callable, params: list[torch.nn.Parameter],
                  ids: torch.Tensor, *, backward: bool, graph: bool, **kw: Any) -> None:
    """``name`` eager and, when ``graph``, ``name_graph`` from the same starting weights, with the
    largest relative difference of their per-step losses (``name_graph_loss_max_rel_diff``)."""
    start = [p.detach().clone() for p in params]
    tokens = ids.numel()
    measure(name, row, lambda: time_step(loss_fn, params, ids, backward=backward, **kw), tokens, kw["device"])
    if not graph:
        return
    with torch.no_grad():
        for p, p0 in zip(params, start):
            p.copy_(p0)
    measure(f"{name}_graph", row, lambda: time_step(loss_fn, params, ids, backward=backward, graph=True, **kw), tokens,
            kw["device"])
    eager, graphed = row.get(f"{name}_losses"), row.get(f"{name}_graph_losses")
    if eager and graphed:
        row[f"{name}_graph_loss_max_rel_diff"] = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(eager, graphed))


def lora(model: torch.nn.Module) -> peft.PeftModel:
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS))


def lora_steps(name: str, row: dict[str, Any], model: torch.nn.Module, ids: torch.Tensor, *,
               train_lizard: bool = False, loss_average: str = "tokens", loss_chunk: int = 0, **kw: Any) -> None:
    """Time LoRA steps on ``model`` into ``row`` (with ``train_lizard`` the Lizard parameters train
    too, as ``--stage2-train-lizard``), then take the adapters off again (``model`` unchanged)."""
    model.requires_grad_(False)
    peft_model = lora(model)
    try:
        if train_lizard:
            for p in model.lizard_parameters():
                p.requires_grad_(True)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        measure_modes(name, row, _lm_loss_fn(peft_model, loss_average, chunk=loss_chunk), params, ids, backward=True, **kw)
    finally:
        model.requires_grad_(False)
        peft_model.unload()


def stage1_steps(row: dict[str, Any], model: torch.nn.Module, ids: torch.Tensor, **kw: Any) -> None:
    model.requires_grad_(False)
    params = list(model.lizard_parameters())
    for p in params:
        p.requires_grad_(True)
    model.train()
    try:
        measure_modes("stage1", row, _transfer_loss_fn(model), params, ids, backward=False, **kw)
    finally:
        model.eval().requires_grad_(False)


def finish_row(row: dict[str, Any]) -> None:
    """Overall peak, ratios to the teacher's LoRA step, projected minutes of the paper recipe."""
    peaks = [row[k] for k in ("teacher_lora_peak_gib", "stage1_peak_gib", "stage2_peak_gib") if row.get(k) is not None]
    row["peak_gib"] = max(peaks) if peaks else None
    teacher, s1, s2 = row.get("teacher_lora_tok_per_s"), row.get("stage1_tok_per_s"), row.get("stage2_tok_per_s")
    row["stage1_vs_teacher"] = s1 / teacher if s1 and teacher else None
    row["stage2_vs_teacher"] = s2 / teacher if s2 and teacher else None
    for stage in ("stage1", "stage2"):  # graphed steps against the teacher's eager LoRA step (what users run)
        graphed = row.get(f"{stage}_graph_tok_per_s")
        if graphed and teacher:
            row[f"{stage}_graph_vs_teacher"] = graphed / teacher
    row["recipe_tokens"] = [RECIPE_TOKENS, RECIPE_TOKENS]
    row["recipe_minutes"] = (RECIPE_TOKENS / s1 + RECIPE_TOKENS / s2) / 60 if s1 and s2 else None
    g1, g2 = row.get("stage1_graph_tok_per_s"), row.get("stage2_graph_tok_per_s")
    row["recipe_graph_minutes"] = (RECIPE_TOKENS / g1 + RECIPE_TOKENS / g2) / 60 if g1 and g2 else None


def run_shape(shape: str, args: argparse.Namespace, device: str, dtype: torch.dtype, rows: list[dict[str, Any]],
              save: Callable[[], None] = lambda: None) -> None:
    """Append the rows of one shape (``save()`` after each): per sequence length the teacher's LoRA
    step once, then each variant."""
    teacher = build_teacher(shape, device, dtype)
    kw = dict(warmup=args.warmup, steps=args.steps, device=device, graph=args.cuda_graphs)
    teacher_rows: dict[int, dict[str, Any]] = {}
    for seq in args.seqs:
        batch = args.batch or default_batch(shape, seq)
        ids = torch.randint(0, teacher.config.vocab_size, (batch, seq), device=device)
        teacher_rows[seq] = {"batch": batch}
        lora_steps("teacher_lora", teacher_rows[seq], teacher, ids, **kw)
    for i, (name, settings) in enumerate(args.variants):
        model = teacher if i == 0 else build_teacher(shape, device, dtype)  # convert works in place
        teacher = None
        free(device)
        stage2 = {k: settings[k] for k in STAGE2_KEYS if k in settings}
        lizard_kw = {k: v for k, v in settings.items() if k not in STAGE2_KEYS}
        if args.window_size and "window_size" not in lizard_kw:
            lizard_kw["window_size"] = args.window_size
        mode = lizard_kw.get("mode", "lizard")
        try:
            config = lizardlm.LizardConfig(**lizard_kw)
            lizardlm.convert(model, config)
        except Exception as err:  # noqa: BLE001: e.g. a mode this checkout does not know
            rows += [{"shape": shape, "batch": teacher_rows[seq]["batch"], "seq": seq, "variant": name, "mode": mode,
                      "error": f"{type(err).__name__}: {str(err)[:300]}"} for seq in args.seqs]
            continue
        for seq in args.seqs:
            base = teacher_rows[seq]
            batch = base["batch"]
            row = {"shape": shape, "batch": batch, "seq": seq, "variant": name, "mode": mode, "tokens_per_step": batch * seq,
                   "adamw": "fused" if device == "cuda" else "foreach",  # what lizardlm.train.step.adamw picks
                   "lizard": config.to_dict(), "stage2_train_lizard": bool(stage2.get("stage2_train_lizard")),
                   "loss_average": stage2.get("loss_average", "tokens"), "loss_chunk": stage2.get("loss_chunk", 0),
                   **{k: v for k, v in base.items() if k != "batch"}}
            ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
            stage1_steps(row, model, ids, **kw)
            lora_steps("stage2", row, model, ids, train_lizard=row["stage2_train_lizard"],
                       loss_average=row["loss_average"], loss_chunk=row["loss_chunk"], **kw)
            finish_row(row)
            rows.append(row)
            save()
            print(json.dumps({k: row.get(k) for k in ("shape", "seq", "batch", "variant", "teacher_lora_tok_per_s",
                                                      "stage1_tok_per_s", "stage2_tok_per_s", "teacher_lora_graph_tok_per_s",
                                                      "stage1_graph_tok_per_s", "stage2_graph_tok_per_s",
                                                      "stage1_graph_loss_max_rel_diff", "stage1_graph_error",
                                                      "stage2_graph_error", "peak_gib", "recipe_minutes",
                                                      "recipe_graph_minutes")}), flush=True)
        del model
        free(device)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="scale", help="the result file is <out>/<name>-<device>.json")
    p.add_argument("--shapes", default="smollm2-135m,llama-3.2-1b,llama-3-8b,mistral-7b,qwen2-7b",
                   help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--seqs", default="2048,8192", help="comma-separated sequence lengths")
    p.add_argument("--batch", type=int, default=None,
                   help="rows per step for every shape (default: the issue's batch at 2K, same tokens at other lengths)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (Triton compilation, allocator)")
    p.add_argument("--lizard-mode", default=None,
                   help="comma-separated LizardConfig modes, e.g. lizard,paper (default: lizard, unless --variant)")
    p.add_argument("--window-size", type=int, default=None, help="LizardConfig.window_size (default: its default)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="a row of its own (repeat): LizardConfig fields and stage2_train_lizard=0|1, "
                   "loss_average=tokens|rows (module docstring)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time every step replayed from a CUDA graph (lizardlm linearize --cuda-graphs), from "
                   "the same starting weights, and compare the losses")
    p.add_argument("--quick", action="store_true", help="tiny shape, short sequences, one step: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.seqs, args.steps, args.warmup = "tiny", "32,64", 1, 1
        args.batch = args.batch or 1
        args.window_size = args.window_size or 16
    args.shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {unknown}; choose from {', '.join(SHAPES)}")
    args.seqs = [int(s) for s in args.seqs.split(",") if s]
    if args.lizard_mode is None:  # --variant alone: only the variants; neither: the default mode
        args.lizard_mode = "" if args.variant else "lizard"
    modes = [m for m in args.lizard_mode.split(",") if m]
    try:
        args.variants = [(m, {"mode": m}) for m in modes] + [parse_variant(v) for v in args.variant]
    except ValueError as err:
        p.error(str(err))
    return args


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:KEY=VALUE,...`` -> ``(NAME, settings)``, each value typed as its LizardConfig field is
    annotated (``int | None``: int; literals: the text); ``stage2_train_lizard`` 0 or 1."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"--variant {text!r}: expected NAME:KEY=VALUE,...")
    hints = typing.get_type_hints(lizardlm.LizardConfig)
    settings: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep or (key not in hints and key not in STAGE2_KEYS):
            raise ValueError(f"--variant {name}: expected KEY=VALUE with KEY a LizardConfig field or one of "
                             f"{', '.join(STAGE2_KEYS)}, got {part!r}")
        if key == "stage2_train_lizard":
            if value not in ("0", "1"):
                raise ValueError(f"--variant {name}: stage2_train_lizard must be 0 or 1, got {value!r}")
            settings[key] = value == "1"
        elif key == "loss_average":
            if value not in LOSS_AVERAGES:
                raise ValueError(f"--variant {name}: loss_average must be one of {', '.join(LOSS_AVERAGES)}, got {value!r}")
            settings[key] = value
        elif key == "loss_chunk":
            if not value.isdigit():
                raise ValueError(f"--variant {name}: loss_chunk must be a whole number >= 0, got {value!r}")
            settings[key] = int(value)
        else:
            kind = next((t for t in (hints[key], *typing.get_args(hints[key])) if t in (int, float)), str)
            try:
                settings[key] = kind(value)
            except ValueError:
                raise ValueError(f"--variant {name}: {key} must be a {kind.__name__}, got {value!r}") from None
    return name, settings


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}-{device_slug(name)}.json"
    runs: list[dict[str, Any]] = []

    def save() -> None:  # after every row, so a run cut by a time limit keeps the rows it finished
        path.write_text(json.dumps({
            "runs": runs,
            "device": name,
            "versions": {"lizardlm": lizardlm.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__},
            "dtype": str(dtype).removeprefix("torch."),
            "lora": {"rank": 8, "alpha": 16, "targets": LORA_TARGETS},
            "steps": args.steps, "warmup": args.warmup, "cuda_graphs": args.cuda_graphs,
            "wall_seconds": time.perf_counter() - started,
        }, indent=2))

    for shape in args.shapes:
        try:
            run_shape(shape, args, device, dtype, runs, save)
        except Exception as err:  # noqa: BLE001: e.g. the weights alone do not fit
            runs.append({"shape": shape, "error": f"{type(err).__name__}: {str(err)[:300]}"})
            free(device)
        save()
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
