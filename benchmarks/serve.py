"""Batch generation throughput, side by side in one process: a set of prompts of different lengths
generated in left-padded batches by the teacher (Hugging Face ``generate`` with its KV cache: the
dynamic one, and a ``StaticCache`` of the longest prompt plus the new tokens, whose decoding step
``generate`` compiles with ``torch.compile(mode="reduce-overhead")``, i.e. CUDA graphs, on CUDA: the
fair serving baseline) and by Lizard (the same ``generate``, and on CUDA with each decoding step replayed
as one CUDA graph, ``lizardlm.graph_decode``). Random weights of the SmolLM2-135M shape, greedy, the
same prompts for every run; the Lizard runs' completions are checked against each other (eager and
graphed decoding). Each (decoding, batch size) is warmed up on one batch of that size first, so
compilation and CUDA-graph recording stay out of the timings.

    python benchmarks/serve.py --prompts 32 --max-len 2048 --new-tokens 128 --batches 1,8,32

Writes ``<out>/serve-<device>.json``: ``{"device", "dtype", "config", "runs": [{"model", "decode",
"batch", "seconds", "new_tokens", "tok_per_s", "prompts_per_s", "peak_gib"} | {..., "status"}],
"agree", "agree_teacher"}`` (the share of completions alike: Lizard eager and graphed, the teacher
dynamic and static), rewritten after every row, and a PNG of new tokens/s by batch size. The static
teacher runs last: its compilation takes longest, and a call cut by its time limit keeps the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lizardlm
import lizardlm  # noqa: E402
from lizardlm import graph_decode  # noqa: E402
from lizardlm.cache import CACHE_KWARG  # noqa: E402
from prefill import SHAPE, plot_rates  # noqa: E402
from result_names import device_slug  # noqa: E402

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=256)


def prompts_of(count: int, max_len: int, vocab: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` random prompts of lengths spread evenly from ``max_len // 4`` to ``max_len`` (token 0 is padding)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.linspace(max_len // 4, max_len, count).long().tolist()
    return [torch.randint(1, vocab, (n,), generator=gen) for n in lengths]


def batches(prompts: list[torch.Tensor], size: int, device: str):
    """Left-padded batches of ``size`` prompts, longest first: ``(ids, mask)``."""
    order = sorted(prompts, key=len, reverse=True)
    for start in range(0, len(order), size):
        part = order[start:start + size]
        width = max(len(p) for p in part)
        ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in part]).to(device)
        yield ids, (ids != 0).long()


def run(model, decode: str, prompts: list[torch.Tensor], size: int, new_tokens: int, device: str,
        max_len: int) -> tuple[dict, list]:
    """Generate every prompt in batches of ``size``; the row and the completions (longest prompt first).
    ``decode="static"``: a fresh ``StaticCache`` of ``max_len + new_tokens`` positions per batch (one shape for
    every batch, so the compiled step is recorded once per batch size)."""
    row = {"decode": decode, "batch": size}
    outs = []
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.no_grad():
        for ids, mask in batches(prompts, size, device):
            if decode == "cuda-graph":
                out = graph_decode.generate(model, ids, new_tokens, attention_mask=mask)
            else:
                cache = {CACHE_KWARG: StaticCache(config=model.config, max_cache_len=max_len + new_tokens)} \
                    if decode == "static" else {}
                out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     do_sample=False, pad_token_id=0, **cache)
            outs += out[:, ids.shape[1]:].cpu().unbind(0)
    if device == "cuda":
        torch.cuda.synchronize()
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    seconds = time.perf_counter() - started
    new = sum(len(o) for o in outs)
    row.update(seconds=round(seconds, 4), new_tokens=new, tok_per_s=round(new / seconds, 1),
               prompts_per_s=round(len(prompts) / seconds, 3))
    return row, outs


def agreement(completions: dict[tuple[str, int], list[torch.Tensor]], decodes: list[str]) -> float | None:
    """The share of completions that the two decodings give alike (None unless there are two)."""
    by_decode = {d: [c for (dd, _), out in completions.items() if dd == d for c in out] for d in decodes}
    if len(decodes) != 2 or not by_decode[decodes[0]] or len(by_decode[decodes[0]]) != len(by_decode[decodes[1]]):
        return None
    return round(sum(torch.equal(a, b) for a, b in zip(*by_decode.values())) / len(by_decode[decodes[0]]), 3)


def measure(name: str, model, decodes: list[str], prompts, sizes: list[int], new_tokens: int, device: str,
            max_len: int, rows: list[dict], completions: dict, on_row) -> None:
    """Append a row per (decoding, batch size) to ``rows`` and its completions to ``completions``, calling
    ``on_row()`` after each (the result file is rewritten then: a call cut by its time limit keeps them)."""
    for decode in decodes:
        for size in sizes:
            try:  # warm-up on one batch of this size: kernels compiled, graphs recorded, allocator pools
                run(model, decode, prompts[-size:], size, min(new_tokens, 4), device, max_len)
                row, completions[(decode, size)] = run(model, decode, prompts, size, new_tokens, device, max_len)
            except torch.OutOfMemoryError:
                row = {"decode": decode, "batch": size, "status": "out of memory"}
                torch.cuda.empty_cache()
            rows.append({"model": name, **row})
            print(json.dumps(rows[-1]), flush=True)
            on_row()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-len", type=int, default=2048, help="the longest prompt (the shortest is a quarter)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--small", action="store_true", help="a 2-layer model of width 64 (a CPU smoke run)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shape = {**SHAPE, **(SMALL if args.small else {})}
    sizes = [int(x) for x in args.batches.split(",")]
    prompts = prompts_of(args.prompts, args.max_len, shape["vocab_size"])

    def teacher():  # the same random weights each time (conversion replaces the attention in place)
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(**shape)).to(device, dtype).eval()

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    slug = device_slug(name) + ("-small" if args.small else "")
    args.out.mkdir(parents=True, exist_ok=True)
    decodes = ["eager", "cuda-graph"] if device == "cuda" else ["eager"]
    runs: list[dict] = []
    teacher_out: dict = {}
    lizard_out: dict = {}
    payload = {"device": name, "dtype": str(dtype), "torch": torch.__version__,
               "config": {"model": "SmolLM2-135M shape, random weights" if not args.small else "2-layer smoke model",
                          "prompts": args.prompts, "min_len": min(len(x) for x in prompts), "max_len": args.max_len, "new_tokens": args.new_tokens, "lizard": "LizardConfig() defaults"},
               "runs": runs}

    def save() -> None:
        payload.update(agree=agreement(lizard_out, decodes), agree_teacher=agreement(teacher_out, ["eager", "static"]))
        (args.out / f"serve-{slug}.json").write_text(json.dumps(payload, indent=2))

    common = (prompts, sizes, args.new_tokens, device, args.max_len, runs)
    measure("teacher", teacher(), ["eager"], *common, teacher_out, save)
    student = lizardlm.convert(teacher(), lizardlm.LizardConfig()).to(device, dtype).eval()
    measure("lizard", student, decodes, *common, lizard_out, save)
    del student
    measure("teacher", teacher(), ["static"], *common, teacher_out, save)  # last: compiling it takes longest
    plot_rates(runs, args.out / f"serve-{slug}.png", f"Batch generation, {args.prompts} prompts of {args.max_len // 4}-"
               f"{args.max_len} tokens, {args.new_tokens} new each ({name})", series="decode", x="batch",
               xlabel="batch size (prompts)", ylabel="new tokens/s", logy=True)


if __name__ == "__main__":
    main()
