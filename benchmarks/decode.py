"""Per-token decoding latency and cache memory of a Lizard model vs its teacher (KV cache), as the
context grows. Random weights of the SmolLM2-135M shape by default (no download needed).

The context is built by prefilling in chunks (Lizard: chunked form with state; teacher: KV cache),
then ``--decode-tokens`` single-token steps are timed at each measured length. The teacher runs until
it exceeds ``--teacher-max`` tokens or runs out of memory. ``--teacher-fill random`` writes random
keys/values straight into the teacher's cache instead of prefilling it: a softmax decode step costs
the same whatever the cached values are, and a quadratic 1M-token prefill would not fit the time.
``--deadline`` stops measuring longer contexts once that many seconds have passed. On CUDA the
Lizard model is also timed with each step replayed as one CUDA graph (``lizardlm.graph_decode``).

    python benchmarks/decode.py --lengths 1024,4096,16384 --out benchmarks/results
    python benchmarks/decode.py --lengths 1024,4096,16384,65536,262144,1048576 --teacher-fill random \
        --chunk 16384 --deadline 500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lizardlm
import lizardlm  # noqa: E402
from lizardlm.cache import cache_nbytes  # noqa: E402
from lizardlm.graph_decode import CudaGraphDecoder  # noqa: E402
from result_names import device_slug  # noqa: E402


def fill_random(model, cache: DynamicCache, n: int) -> None:
    """Append ``n`` random key/value positions to every layer of a softmax model's cache."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    like = next(model.parameters())
    for layer in range(cfg.num_hidden_layers):
        k, v = (torch.randn(1, cfg.num_key_value_heads, n, head_dim, device=like.device, dtype=like.dtype)
                for _ in range(2))
        cache.update(k, v, layer)


def gpu_busy_ms(step, steps: int = 4) -> float:
    """Milliseconds of CUDA kernel time per call of ``step`` (torch profiler): the device's share of
    a decoding step, free of the host's launch overhead that dominates small models' wall time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    total_us = sum(getattr(e, "self_device_time_total", 0) for e in prof.key_averages())
    return total_us / 1000 / steps


def median_ms(step, n: int, device: str) -> float:
    """Median wall milliseconds of ``n`` calls of ``step``, each synchronised."""
    times = []
    for _ in range(n):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[n // 2]


@torch.no_grad()
def measure(model, lengths: list[int], decode_tokens: int, chunk: int, device: str, max_len: int,
            random_fill: bool = False, deadline: float = float("inf")) -> list[dict]:
    """Decode latency (median ms per token) and cache size at each context length."""
    cache = lizardlm.LizardCache.for_model(model) if lizardlm.models.is_lizard_model(model) else DynamicCache()
    vocab = model.config.vocab_size
    started = time.perf_counter()
    done, rows = 0, []
    for target in lengths:
        if target > max_len:
            rows.append({"context": target, "status": f"skipped (over {max_len} tokens)"})
            continue
        if time.perf_counter() - started > deadline:
            rows.append({"context": target, "status": f"skipped (past the {deadline:.0f} s deadline)"})
            continue
        try:
            t_fill = time.perf_counter()
            if random_fill:
                fill_random(model, cache, target - done)
                done = target
            while done < target:
                n = min(chunk, target - done)
                model(torch.randint(0, vocab, (1, n), device=device), past_key_values=cache, use_cache=True)
                done += n
            fill_seconds = time.perf_counter() - t_fill
            tok = torch.randint(0, vocab, (1, 1), device=device)

            def step() -> None:
                nonlocal tok, done
                tok = model(tok, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
                done += 1

            rows.append({"context": target, "ms_per_token": median_ms(step, decode_tokens, device),
                         "cache_mib": cache_nbytes(cache) / 2**20, "fill_seconds": fill_seconds,
                         "fill": "random" if random_fill else "prefill", "status": "ok"})
            if device == "cuda":
                rows[-1]["gpu_busy_ms_per_token"] = gpu_busy_ms(step)
                rows[-1]["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
            if device == "cuda" and lizardlm.models.is_lizard_model(model):
                decoder = CudaGraphDecoder(model, cache)

                def graphed() -> None:
                    nonlocal tok, done
                    tok = decoder.step(tok).argmax(-1, keepdim=True)
                    done += 1

                rows[-1]["cuda_graph_ms_per_token"] = median_ms(graphed, decode_tokens, device)
                del decoder
        except torch.OutOfMemoryError:
            rows.append({"context": target, "status": "out of memory"})
            break
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lengths", default="1024,4096,16384")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--chunk", type=int, default=2048, help="prefill chunk")
    p.add_argument("--teacher-max", type=int, default=1 << 20)
    p.add_argument("--teacher-fill", choices=("prefill", "random"), default="prefill")
    p.add_argument("--deadline", type=float, default=float("inf"), help="seconds per model")
    p.add_argument("--modes", default="lizard", help="Lizard modes to convert the teacher to (e.g. lizard,paper)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lengths = [int(x) for x in args.lengths.split(",")]
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=1 << 21, rope_theta=100000.0, tie_word_embeddings=True,
        attn_implementation="sdpa",
    )

    def teacher():  # the same random weights each time (conversion replaces the attention in place)
        torch.manual_seed(0)
        return LlamaForCausalLM(config).to(device, dtype).eval()

    results = {"teacher": measure(teacher(), lengths, args.decode_tokens, args.chunk, device, args.teacher_max,
                                  random_fill=args.teacher_fill == "random", deadline=args.deadline)}
    for mode in args.modes.split(","):
        if device == "cuda":  # each model's peak memory on its own
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        student = lizardlm.convert(teacher(), lizardlm.LizardConfig(mode=mode))
        results["lizard" if mode == "lizard" else f"lizard-{mode}"] = measure(
            student, lengths, args.decode_tokens, args.chunk, device, 1 << 40, deadline=args.deadline)
        del student

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    slug = device_slug(name)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"device": name, "dtype": str(dtype), "torch": torch.__version__, "model": "SmolLM2-135M shape, random weights",
               "decode_tokens": args.decode_tokens, "prefill_chunk": args.chunk,
               "teacher_fill": args.teacher_fill, "results": results}
    (args.out / f"decode-{slug}.json").write_text(json.dumps(payload, indent=2))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for label, rows in results.items():
        ok = [r for r in rows if r["status"] == "ok"]
        axes[0].plot([r["context"] for r in ok], [r["ms_per_token"] for r in ok], "o-", label=label)
        if any("cuda_graph_ms_per_token" in r for r in ok):
            axes[0].plot([r["context"] for r in ok], [r["cuda_graph_ms_per_token"] for r in ok], "s--",
                         label=f"{label} (CUDA graph)")
        axes[1].plot([r["context"] for r in ok], [r["cache_mib"] for r in ok], "o-", label=label)
    for ax, ylabel in zip(axes, ("ms per token (median)", "cache (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(f"Decoding: Lizard vs teacher with KV cache ({name})", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out / f"decode-{slug}.png")
    print(json.dumps(payload["results"], indent=1))


if __name__ == "__main__":
    main()
