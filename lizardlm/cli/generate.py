"""``lizardlm generate``: stream text from a Lizard model (or a teacher, optionally converted)."""

from __future__ import annotations

import argparse
import sys
import time

from lizardlm.cli.common import (
    add_decay_scale_argument,
    add_lizard_arguments,
    lizard_config_from_args,
    non_negative_float,
    positive_int,
    probability,
    seed,
    set_decay_scale,
)
from lizardlm.errors import CheckpointError, LizardError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text, streaming tokens",
        description="Generate text from a run directory, a saved Lizard model, or a teacher (--convert turns it "
        "into an untrained Lizard model first).",
    )
    p.add_argument("--model", default="smollm2-135m", help="run dir, saved Lizard model dir, or teacher name/path")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=probability, default=0.95, help="nucleus sampling, in (0, 1]")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--raw", action="store_true", help="do not wrap the prompt in the tokenizer's chat template")
    p.add_argument("--convert", action="store_true", help="convert a teacher to Lizard (untrained) before generating")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay each decoding step as one CUDA graph (Lizard models without softmax layers, --device cuda)")
    add_lizard_arguments(p)
    add_decay_scale_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import TextStreamer

    import lizardlm
    from lizardlm.cache import CACHE_KWARG, LizardCache
    from lizardlm.models import is_lizard_model

    if args.cuda_graph and args.device != "cuda":
        raise LizardError("--cuda-graph needs --device cuda (CUDA graphs record GPU kernels)")
    from lizardlm.devices import pick_device

    torch.manual_seed(args.seed)
    model, tokenizer = lizardlm.load_any(args.model, device=pick_device(args.device))
    if args.convert and not is_lizard_model(model):
        model = lizardlm.convert(model, lizard_config_from_args(args))
    set_decay_scale(model, args.decay_scale, args.model)
    if tokenizer is None:
        raise CheckpointError(f"{args.model} has no tokenizer to encode the prompt with: save one next to the model (tokenizer.save_pretrained)")
    if not args.raw and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": args.prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = args.prompt
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=args.raw).input_ids.to(args.device)
    if ids.shape[1] == 0:
        raise LizardError("the prompt is empty (no tokens to start from): give a --prompt with text")
    sample = args.temperature > 0
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    if args.cuda_graph:
        return _generate_graphed(model, ids, args, streamer, tokenizer.eos_token_id)
    cache = LizardCache.for_model(model) if is_lizard_model(model) else None
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            ids,
            **{CACHE_KWARG: cache},
            max_new_tokens=args.max_new_tokens,
            do_sample=sample,
            temperature=args.temperature if sample else None,
            top_p=args.top_p if sample else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            streamer=streamer,
        )
    seconds = time.perf_counter() - started
    memory = f", cache {cache.nbytes() / 2**20:.2f} MiB (constant in context length)" if cache is not None else ""
    print(f"[{type(model).__name__}: {_counts(ids.shape[1], out.shape[1], seconds)}{memory}]", file=sys.stderr)
    return 0


def _counts(prompt: int, total: int, seconds: float) -> str:
    """``"12 prompt + 64 new tokens, 9.1 new tokens/s"`` (the rate includes the prefill)."""
    new = total - prompt
    return f"{prompt} prompt + {new} new tokens in {seconds:.1f} s ({new / max(seconds, 1e-9):.1f} new tokens/s)"


def _generate_graphed(model, ids, args: argparse.Namespace, streamer, eos: int | None) -> int:
    """Prefill, then decoding steps replayed as a CUDA graph (:mod:`lizardlm.graph_decode`)."""
    import torch
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    from lizardlm import graph_decode

    graph_decode.check_model(model)
    sample = graph_decode.greedy
    if args.temperature > 0:
        warp = LogitsProcessorList([TemperatureLogitsWarper(args.temperature), TopPLogitsWarper(args.top_p)])

        def sample(logits: torch.Tensor) -> torch.Tensor:
            return torch.multinomial(warp(None, logits.float()).softmax(-1), 1)

    started = time.perf_counter()
    streamer.put(ids.cpu())
    out = graph_decode.generate(model, ids, args.max_new_tokens, sample, on_token=lambda t: streamer.put(t.cpu()),
                                eos_token_id=eos)
    streamer.end()
    counts = _counts(ids.shape[1], out.shape[1], time.perf_counter() - started)
    print(f"[{type(model).__name__}: {counts}, decoding steps replayed as one CUDA graph]", file=sys.stderr)
    return 0
