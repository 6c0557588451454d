"""Training-step throughput of the linearization stages on a SmolLM2-135M-shaped model (random
weights, no download): stage 1 (attention transfer) and stage 2 (LoRA) steps per second, and what
``--answer-rows lizard:v_proj,o_proj`` costs stage 2 (half the rows answer rows; the row-averaged loss
with and without the gate, side by side).

    python benchmarks/train_step.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import lizardlm
from lizardlm.data.packing import without_loss
from lizardlm.layers import attention_transfer
from lizardlm.train.answer_rows import AdapterRowGate
from lizardlm.train.linearize import _lm_loss_fn
from result_names import device_slug


def timed(fn, steps: int, device: str) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="print the top device ops of one step of each stage")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = lizardlm.convert(LlamaForCausalLM(config).to(device), lizardlm.LizardConfig())
    ids = torch.randint(0, 49152, (args.batch_size, args.seq_len), device=device)
    model.requires_grad_(False)
    params = list(model.lizard_parameters())
    for prm in params:
        prm.requires_grad_(True)
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def stage1():
        with amp, attention_transfer(model) as layers:
            model.model(input_ids=ids, use_cache=False)
            loss = torch.stack([layer.transfer_loss for layer in layers]).sum()
        loss.backward()

    s1 = timed(stage1, args.steps, device)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))

    def stage2():
        with amp:
            loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()

    s2 = timed(stage2, args.steps, device)
    for p in params:  # --stage2-train-lizard, as with --answer-rows
        p.requires_grad_(True)
    targets = torch.ones_like(ids, dtype=torch.bool)
    targets[1::2] = False
    targets[1::2, -16:] = True  # odd rows: answers only
    batch = without_loss(ids, targets)

    def rows_step(gate: AdapterRowGate | None) -> None:
        with amp:
            loss, _ = _lm_loss_fn(peft_model, "rows", gate=gate)(batch)
        loss.backward()

    rows = timed(lambda: rows_step(None), args.steps, device)
    with AdapterRowGate(peft_model, keep=("v_proj", "o_proj")) as gate:
        gated = timed(lambda: rows_step(gate), args.steps, device)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for fn in (stage1, stage2):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total" if device == "cuda" else "cpu_time_total", row_limit=18))
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    tokens = args.batch_size * args.seq_len
    result = {
        "device": name, "torch": torch.__version__, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "stage1_s_per_step": s1, "stage2_s_per_step": s2,
        "stage1_tokens_per_s": tokens / s1, "stage2_tokens_per_s": tokens / s2,
        "stage2_rows_s_per_step": rows, "stage2_answer_rows_s_per_step": gated, "answer_rows_cost": gated / rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    slug = device_slug(name)
    (args.out / f"train-step-{slug}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
