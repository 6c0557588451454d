"""The linearization job: teacher -> Lizard model, stage 1 (attention transfer) then stage 2 (LoRA)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from tqdm.auto import tqdm

import lizardlm
from lizardlm.convert import check_convertible, convert
from lizardlm.errors import LizardError
from lizardlm.layers import attention_transfer
from lizardlm.train.activations import checkpoint_decoder_layers, checkpointed_attention
from lizardlm.train.checkpoint import atomic_save, load_checked
from lizardlm.train.loop import MetricsLog, Stage, run_stage
from lizardlm.train.plots import plot_stage_losses
from lizardlm.train.rundir import RunDir, load_lizard_state
from lizardlm.train.settings import TrainSettings


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return name


def lm_loss(model, rows: torch.Tensor, batch_size: int, accelerator: Accelerator) -> float:
    """Mean next-token negative log-likelihood over ``rows`` (each row one scoring window)."""
    from lizardlm.eval.perplexity import perplexity

    with accelerator.autocast():
        return perplexity(model, None, rows.reshape(-1), window=rows.shape[1], batch_size=batch_size)["nll"]


@torch.no_grad()
def transfer_mse(model, rows: torch.Tensor, batch_size: int, accelerator: Accelerator) -> list[float]:
    """Per-layer validation MSE between Lizard and teacher attention outputs."""
    sums: list[float] = []
    batches = 0
    with attention_transfer(model) as layers:
        for start in tqdm(range(0, rows.shape[0], batch_size), desc="val mse", leave=False):
            with accelerator.autocast():
                model.model(input_ids=rows[start : start + batch_size].to(accelerator.device), use_cache=False)
            losses = [layer.transfer_loss.item() for layer in layers]
            sums = [a + b for a, b in zip(sums, losses)] if sums else losses
            batches += 1
    return [s / batches for s in sums]


def _transfer_loss_fn(model):
    def loss_fn(batch: torch.Tensor):
        with attention_transfer(model) as layers:
            model.model(input_ids=batch, use_cache=False)
            losses = torch.stack([layer.transfer_loss for layer in layers])
        return losses.sum(), {"mse_mean": losses.mean().item()}

    return loss_fn


def _lm_loss_fn(model):
    def loss_fn(batch: torch.Tensor):
        return model(input_ids=batch, labels=batch, use_cache=False).loss, {}

    return loss_fn


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def linearize(settings: TrainSettings, out: str | Path, *, resume: bool = False, merge: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole job into ``out``; returns the summary also written to summary.json."""
    from lizardlm.data import build_splits
    from lizardlm.teachers import load_teacher, resolve_teacher

    run = RunDir(out)
    teacher_ref = resolve_teacher(settings.teacher).to_dict()
    manifest = run.check_resumable(settings, teacher_ref) if resume else None
    if not resume:
        run.check_new()
    device = pick_device(settings.device)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="bf16" if device == "cuda" else "no")
    torch.manual_seed(settings.seed)

    started = time.perf_counter()
    model, tokenizer = load_teacher(settings.teacher, dtype=torch.float32, device=accelerator.device)
    try:
        check_convertible(model, settings.lizard_config())
    except ValueError as err:
        raise LizardError(str(err)) from None
    splits = build_splits(
        settings.data, tokenizer, settings.seq_len,
        train_tokens=max(settings.stage1_tokens, settings.stage2_tokens, settings.seq_len * settings.batch_size),
        val_tokens=settings.val_tokens, seed=settings.seed, teacher=(model, tokenizer),
    )
    if manifest is None:  # inputs are valid: only now does the run directory come into being
        manifest = {
            "teacher": teacher_ref,
            "settings": settings.to_dict(),
            "data": splits.meta,
            "completed": [],
            "results": {},
            "versions": {"lizardlm": lizardlm.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        }
        run.write_manifest(manifest)
    results = manifest["results"]
    log = MetricsLog(run)
    train_kw = dict(
        batch_size=settings.batch_size, seed=settings.seed, warmup_fraction=settings.warmup_fraction,
        weight_decay=settings.weight_decay, checkpoint_every=settings.checkpoint_every, adam_betas=settings.adam_betas,
        run=run,
        accelerator=accelerator, log=log,
    )

    if "teacher_val_loss" not in results:
        results["teacher_val_loss"] = lm_loss(model, splits.val, settings.batch_size, accelerator)
    model = convert(model, settings.lizard_config())
    if "stage1_val_mse_init" not in results:
        results["stage1_val_mse_init"] = transfer_mse(model, splits.val, settings.batch_size, accelerator)
        run.write_manifest(manifest)

    # Stage 1: attention transfer, only the Lizard parameters train.
    model.requires_grad_(False)
    lizard_params = dict(model.lizard_named_parameters())
    if "stage1" in manifest["completed"]:
        load_lizard_state(model, load_checked(run.lizard_weights)[0], source=run.lizard_weights)
    else:
        t0 = time.perf_counter()
        for p in lizard_params.values():
            p.requires_grad_(True)
        model.train()
        stage = Stage("stage1", settings.steps(1), settings.stage1_lr, lizard_params, _transfer_loss_fn(model))
        with checkpointed_attention(model, settings.gradient_checkpointing):
            run_stage(stage, splits.train, **train_kw)
        model.eval()
        atomic_save(lizard_params, run.lizard_weights)
        results["stage1_val_mse"] = transfer_mse(model, splits.val, settings.batch_size, accelerator)
        results["stage1_val_loss"] = lm_loss(model, splits.val, settings.batch_size, accelerator)
        results["stage1_seconds"] = results.get("stage1_seconds", 0.0) + time.perf_counter() - t0
        manifest["completed"].append("stage1")
        run.write_manifest(manifest)
        plot_stage_losses(log.read("stage1"), run.path / "stage1_loss.png", "Stage 1: attention transfer (sum of layer MSE)")

    # Stage 2: LoRA on next-token loss (Lizard parameters optionally keep training).
    peft_model = get_peft_model(
        model,
        LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                   target_modules=list(settings.lora_targets)),
    )
    for p in lizard_params.values():
        p.requires_grad_(settings.stage2_train_lizard)
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    if settings.gradient_checkpointing:
        checkpoint_decoder_layers(peft_model)
    if "stage2" not in manifest["completed"]:
        t0 = time.perf_counter()
        peft_model.train()
        stage = Stage("stage2", settings.steps(2), settings.stage2_lr, trainable, _lm_loss_fn(peft_model))
        run_stage(stage, splits.train, **train_kw)
        peft_model.eval()
        peft_model.save_pretrained(str(run.adapter))
        if settings.stage2_train_lizard:
            atomic_save(lizard_params, run.lizard_weights)
        results["stage2_val_loss"] = lm_loss(peft_model, splits.val, settings.batch_size, accelerator)
        results["stage2_seconds"] = results.get("stage2_seconds", 0.0) + time.perf_counter() - t0
        manifest["completed"].append("stage2")
        run.write_manifest(manifest)
        plot_stage_losses(log.read("stage2"), run.path / "stage2_loss.png", "Stage 2: LoRA fine-tuning (next-token loss)")

    if merge:
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(str(run.merged))
        tokenizer.save_pretrained(str(run.merged))

    summary = {
        "teacher": teacher_ref["name"],
        "mode": settings.lizard_config().mode,
        "val_tokens": int(splits.val[:, 1:].numel()),
        "teacher_val_loss": results["teacher_val_loss"],
        "teacher_val_ppl": _ppl(results["teacher_val_loss"]),
        "stage1_val_loss": results["stage1_val_loss"],
        "stage1_val_ppl": _ppl(results["stage1_val_loss"]),
        "student_val_loss": results["stage2_val_loss"],
        "student_val_ppl": _ppl(results["stage2_val_loss"]),
        "stage1_val_mse_init_per_layer": results["stage1_val_mse_init"],
        "stage1_val_mse_per_layer": results["stage1_val_mse"],
        "stage1_seconds": results["stage1_seconds"],
        "stage2_seconds": results["stage2_seconds"],
        "wall_seconds_this_call": time.perf_counter() - started,
        "device": manifest["device"],
    }
    run.summary.write_text(json.dumps(summary, indent=2))
    return summary
