"""``lizardlm generate``: stream text from a Lizard model (or a teacher, optionally converted)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lizardlm.cli.common import (
    add_inference_knobs,
    add_lizard_arguments,
    lizard_config_from_args,
    non_negative_float,
    positive_int,
    probability,
    seed,
    set_inference_knobs,
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
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompt", help="the prompt text (streamed to stdout)")
    which.add_argument("--prompts", type=Path, help="a file of prompts, one a line (or a .jsonl file of {\"prompt\": ...} "
                       "lines), generated in left-padded batches; blank lines are skipped")
    p.add_argument("--out", type=Path, default=None,
                   help="with --prompts: a JSONL file of {index, prompt, completion, prompt_tokens, new_tokens}, in the "
                   "prompts' order (stdout without it); a cut run goes on from OUT.partial when run again")
    p.add_argument("--batch-size", type=positive_int, default=8, help="with --prompts: prompts a batch")
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
    add_inference_knobs(p, window=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import TextStreamer

    import lizardlm
    from lizardlm.cache import CACHE_KWARG, LizardCache
    from lizardlm.models import is_lizard_model

    if args.cuda_graph and args.device != "cuda":
        raise LizardError("--cuda-graph needs --device cuda (CUDA graphs record GPU kernels)")
    if args.prompts is None and args.out is not None:
        raise LizardError("--out goes with --prompts (a single --prompt streams to stdout)")
    if args.prompts is not None:
        prompts = read_prompts(args.prompts)
    from lizardlm.devices import pick_device

    torch.manual_seed(args.seed)
    model, tokenizer = lizardlm.load_any(args.model, device=pick_device(args.device))
    if args.convert and not is_lizard_model(model):
        model = lizardlm.convert(model, lizard_config_from_args(args))
    set_inference_knobs(model, args, args.model)
    if tokenizer is None:
        raise CheckpointError(f"{args.model} has no tokenizer to encode the prompt with: save one next to the model (tokenizer.save_pretrained)")
    if args.prompts is not None:
        return _generate_batches(model, tokenizer, prompts, args)
    ids = tokenizer(_text(tokenizer, args.prompt, args.raw), return_tensors="pt",
                    add_special_tokens=args.raw).input_ids.to(args.device)
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


def _text(tokenizer, prompt: str, raw: bool) -> str:
    """The prompt as the model reads it: in the tokenizer's chat template unless ``raw``."""
    if raw or not getattr(tokenizer, "chat_template", None):
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def read_prompts(path: Path) -> list[str]:
    """The prompts of a text file (one a line) or a ``.jsonl`` file (``{"prompt": ...}`` a line), split on
    ``\n`` only (a prompt may hold other line breaks); blank lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except OSError as e:
        raise LizardError(f"cannot read --prompts {path}: {e.strerror or e}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                line = json.loads(line)["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError):
                line = None
            if not isinstance(line, str):
                raise LizardError(f"{path} line {number}: not a JSON object with a \"prompt\" string")
        prompts.append(line)
    if not prompts:
        raise LizardError(f"{path} holds no prompt")
    return prompts


def _generate_batches(model, tokenizer, prompts: list[str], args: argparse.Namespace) -> int:
    """Every prompt's completion, in left-padded batches of prompts of similar length (longest first),
    written in the prompts' order; each finished batch is appended to ``OUT.partial`` first, so a cut
    run goes on where it stopped."""
    import torch

    from lizardlm import graph_decode
    from lizardlm.cache import CACHE_KWARG, LizardCache
    from lizardlm.models import is_lizard_model
    from lizardlm.progress import progress

    if tokenizer.pad_token is None:  # padding needs a token; its value never matters (masked)
        tokenizer.pad_token = tokenizer.eos_token
    if args.cuda_graph:
        graph_decode.check_model(model)
    texts = [_text(tokenizer, p, args.raw) for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=args.raw).input_ids]
    if min(lengths) == 0:
        raise LizardError(f"prompt {lengths.index(0)} of {args.prompts} has no tokens")
    done = _resumed(args.out, prompts)
    order = [i for i in sorted(range(len(prompts)), key=lambda i: -lengths[i]) if i not in done]
    sample = args.temperature > 0
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = None if args.out is None else _partial_path(args.out).open("a", encoding="utf-8")
    started = time.perf_counter()
    try:
        bar = progress(total=len(prompts), initial=len(done), desc="generating", unit="prompt")
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, padding_side="left",
                            add_special_tokens=args.raw).to(args.device)
            with torch.no_grad():
                if args.cuda_graph:  # eager steps until the padding has left every window, then replays
                    out = graph_decode.generate(model, enc.input_ids, args.max_new_tokens, _sampler(args),
                                                eos_token_id=tokenizer.eos_token_id, attention_mask=enc.attention_mask)
                else:
                    cache = LizardCache.for_model(model) if is_lizard_model(model) else None
                    out = model.generate(**enc, **{CACHE_KWARG: cache}, max_new_tokens=args.max_new_tokens,
                                         do_sample=sample, temperature=args.temperature if sample else None,
                                         top_p=args.top_p if sample else None, top_k=None,
                                         pad_token_id=tokenizer.pad_token_id)
            for i, new in zip(batch, out[:, enc.input_ids.shape[1]:].tolist()):
                new = new[: next((n for n, t in enumerate(new) if t == tokenizer.eos_token_id), len(new) - 1) + 1]
                done[i] = {"index": i, "prompt": prompts[i], "completion": tokenizer.decode(new, skip_special_tokens=True),
                           "prompt_tokens": lengths[i], "new_tokens": len(new)}
                if partial is not None:
                    partial.write(json.dumps(done[i], ensure_ascii=False) + "\n")
            if partial is not None:
                partial.flush()
            bar.update(len(batch))
        bar.close()
    finally:
        if partial is not None:
            partial.close()
    rows = "".join(json.dumps(done[i], ensure_ascii=False) + "\n" for i in range(len(prompts)))
    if args.out is None:
        sys.stdout.write(rows)
    else:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(rows, encoding="utf-8")
        tmp.replace(args.out)
        _partial_path(args.out).unlink()
    seconds = time.perf_counter() - started
    new = sum(done[i]["new_tokens"] for i in order)
    print(f"[{type(model).__name__}: {len(order)} prompts in batches of {args.batch_size}, {new} new tokens in "
          f"{seconds:.1f} s ({new / max(seconds, 1e-9):.1f} new tokens/s)"
          + (", decoding steps replayed as one CUDA graph" if args.cuda_graph else "")
          + (f"; {len(prompts) - len(order)} were done before" if len(order) < len(prompts) else "")
          + (f" -> {args.out}" if args.out is not None else "") + "]", file=sys.stderr)
    return 0


def _resumed(out: Path | None, prompts: list[str]) -> dict[int, dict]:
    """The completions a cut run left in ``OUT.partial`` (a torn last line is dropped); refused where
    they belong to other prompts."""
    path = None if out is None else _partial_path(out)
    if path is None or not path.exists():
        return {}
    done = {}
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the torn line of a cut write
        index = row.get("index") if isinstance(row, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(prompts) or prompts[index] != row.get("prompt"):
            raise LizardError(f"{path} holds completions of other prompts: delete it, or give the prompts it was made from")
        done[index] = row
    return done


def _partial_path(out: Path) -> Path:
    """``OUT.partial``: the completions of finished batches, kept until ``OUT`` is written."""
    return out.with_name(out.name + ".partial")


def _counts(prompt: int, total: int, seconds: float) -> str:
    """``"12 prompt + 64 new tokens, 9.1 new tokens/s"`` (the rate includes the prefill)."""
    new = total - prompt
    return f"{prompt} prompt + {new} new tokens in {seconds:.1f} s ({new / max(seconds, 1e-9):.1f} new tokens/s)"


def _sampler(args: argparse.Namespace):
    """:mod:`lizardlm.graph_decode`'s sampler for ``--temperature`` and ``--top-p`` (greedy at 0)."""
    import torch
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    from lizardlm import graph_decode

    if args.temperature <= 0:
        return graph_decode.greedy
    warp = LogitsProcessorList([TemperatureLogitsWarper(args.temperature), TopPLogitsWarper(args.top_p)])

    def sample(logits: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(warp(None, logits.float()).softmax(-1), 1)

    return sample


def _generate_graphed(model, ids, args: argparse.Namespace, streamer, eos: int | None) -> int:
    """Prefill, then decoding steps replayed as a CUDA graph (:mod:`lizardlm.graph_decode`)."""
    from lizardlm import graph_decode

    graph_decode.check_model(model)
    started = time.perf_counter()
    streamer.put(ids.cpu())
    out = graph_decode.generate(model, ids, args.max_new_tokens, _sampler(args), on_token=lambda t: streamer.put(t.cpu()),
                                eos_token_id=eos)
    streamer.end()
    counts = _counts(ids.shape[1], out.shape[1], time.perf_counter() - started)
    print(f"[{type(model).__name__}: {counts}, decoding steps replayed as one CUDA graph]", file=sys.stderr)
    return 0
