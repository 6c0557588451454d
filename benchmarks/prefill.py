"""Chunked prefill of long prompts through the cache, side by side in one process: a Lizard model on the
torch op continuing its cached state (what every chunk after the first ran before) against the Triton
kernels continuing it (``lizardlm.ops.lizard.state_as_prefix``), and the teacher with its KV cache.
Random weights of the SmolLM2-135M shape; Lizard in the default configuration and in the retrieval
runs' (window 128, 256 features, write gate). The two Lizard backends' last-position logits are
compared (same weights, same prompts). This is what the long-context evaluations (passkey, RULER,
long ppl: prompts of 1K-32K tokens fed 2,048 at a time) spend their time on.

    python benchmarks/prefill.py --lengths 2048,8192,32768 --batch 8 --out benchmarks/results

Writes ``<out>/prefill-<device>.json``: ``{"device", "dtype", "config", "runs": [{"model", "backend",
"length", "batch", "seconds", "tok_per_s", "peak_gib"} | {..., "status"}], "agreement": [{"model",
"length", "max_abs_diff", "logit_scale"}]}`` and a PNG of tokens/s by length.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lizardlm
import lizardlm  # noqa: E402
from lizardlm.cache import CACHE_KWARG  # noqa: E402
from lizardlm.eval.streaming import new_cache  # noqa: E402
from lizardlm.layers.attention import LizardAttention  # noqa: E402
from result_names import device_slug  # noqa: E402

SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, max_position_embeddings=1 << 17, rope_theta=100000.0, tie_word_embeddings=True,
             attn_implementation="sdpa")
LIZARD = {
    "default": {},
    "retrieval": dict(window_size=128, feature_dim=256, write_gate="head", gate_init=0.9999),
}


def set_backend(model, backend: str) -> None:
    """Every Lizard attention of ``model`` runs on ``backend`` from now on."""
    for module in model.modules():
        if isinstance(module, LizardAttention):
            module.lizard = dataclasses.replace(module.lizard, backend=backend)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def prefill(model, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """Feed ``ids`` ``(B, T)`` ``chunk`` tokens at a time through a fresh cache; the last position's logits."""
    cache = new_cache(model)
    for start in range(0, ids.shape[1], chunk):
        logits = model(ids[:, start:start + chunk], use_cache=True, logits_to_keep=1, **{CACHE_KWARG: cache}).logits
    return logits[:, -1].float()


def timed(model, ids: torch.Tensor, chunk: int, device: str) -> tuple[torch.Tensor, float]:
    sync(device)
    t0 = time.perf_counter()
    out = prefill(model, ids, chunk)
    sync(device)
    return out, time.perf_counter() - t0


def measure(name: str, model, backends: list[str | None], lengths: list[int], batch: int, chunk: int,
            device: str, vocab: int) -> tuple[list[dict], list[dict]]:
    """Rows per (backend, length) and the Lizard backends' agreement per length."""
    runs, agreement = [], []
    gen = torch.Generator().manual_seed(0)
    prompts = {L: torch.randint(0, vocab, (batch, L), generator=gen).to(device) for L in lengths}
    for L in lengths:
        last = {}
        for backend in backends:
            if backend:
                set_backend(model, backend)
            row = {"model": name, "backend": backend or "sdpa", "length": L, "batch": batch}
            try:
                # untimed first: it meets every kernel specialisation and cuDNN plan of this length (a warm-up
                # of the first length alone left Triton's compilation in the 8K timing, H100 2026-12-05)
                prefill(model, prompts[L], chunk)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                last[backend], secs = timed(model, prompts[L], chunk, device)
                row.update(seconds=round(secs, 6), tok_per_s=round(batch * L / secs, 1))
                if device == "cuda":
                    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            except torch.OutOfMemoryError:
                row["status"] = "out of memory"
                torch.cuda.empty_cache()
            runs.append(row)
            print(json.dumps(row), flush=True)
        if len(last) == 2:
            a, b = last.values()
            agreement.append({"model": name, "length": L, "max_abs_diff": round((a - b).abs().max().item(), 5),
                              "logit_scale": round(b.abs().max().item(), 3)})
    return runs, agreement


def plot_rates(runs: list[dict], path: Path, title: str, *, series: str, x: str, xlabel: str, ylabel: str,
               scale: float = 1.0, logy: bool = False) -> None:
    """Tokens/s (divided by ``scale``) against ``x``, one line per (model, ``series``) of ``runs``."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    for key in dict.fromkeys((r["model"], r[series]) for r in runs):
        ok = [r for r in runs if (r["model"], r[series]) == key and "tok_per_s" in r]
        ax.plot([r[x] for r in ok], [r["tok_per_s"] / scale for r in ok], "o-", label=" / ".join(key))
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="2048,8192,32768")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--chunk", type=int, default=2048, help="prefill chunk (the evaluations' default)")
    p.add_argument("--configs", default=",".join(LIZARD), help=f"Lizard configurations among {', '.join(LIZARD)}")
    p.add_argument("--small", action="store_true", help="a 2-layer model of width 64 (a CPU smoke run)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lengths = [int(x) for x in args.lengths.split(",")]
    shape = {**SHAPE, **(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=256) if args.small else {})}
    def teacher():  # the same random weights each time (conversion replaces the attention in place)
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(**shape)).to(device, dtype).eval()

    runs, agreement = measure("teacher", teacher(), [None], lengths, args.batch, args.chunk, device, shape["vocab_size"])
    backends = ["torch", "triton"] if device == "cuda" else ["torch"]
    configs = {}
    for name in args.configs.split(","):
        cfg = lizardlm.LizardConfig(**LIZARD[name])
        configs[name] = dataclasses.asdict(cfg)
        student = lizardlm.convert(teacher(), cfg).to(device, dtype).eval()
        r, a = measure(f"lizard-{name}", student, backends, lengths, args.batch, args.chunk, device, shape["vocab_size"])
        runs += r
        agreement += a
        del student
        if device == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    slug = device_slug(name) + ("-small" if args.small else "")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"device": name, "dtype": str(dtype), "torch": torch.__version__,
               "config": {"model": "SmolLM2-135M shape, random weights" if not args.small else "2-layer smoke model",
                          "chunk": args.chunk, "batch": args.batch, "lizard": configs},
               "runs": runs, "agreement": agreement}
    (args.out / f"prefill-{slug}.json").write_text(json.dumps(payload, indent=2))
    plot_rates(runs, args.out / f"prefill-{slug}.png", f"Chunked prefill ({args.chunk} a chunk, batch {args.batch}), {name}",
               series="backend", x="length", xlabel="prompt length (tokens)", ylabel="prefill K tokens/s", scale=1e3)


if __name__ == "__main__":
    main()
