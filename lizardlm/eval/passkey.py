"""Passkey retrieval (Mohtashami & Jaggi, 2023): a random number hidden in repeated filler text at a
given depth, asked for at the end; scored by exact match of the digits in the greedy continuation.

Prompt (token ids are concatenated piece by piece so the prompt has exactly ``length`` tokens)::

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.
    I will quiz you about the important information there.
    The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.  (xN)
    The pass key is 68410. Remember it. 68410 is the pass key.          <- at depth d of the filler
    The grass is green. ...                                              (xM)
    What is the pass key? The pass key is

Long lengths are slow on CPU and full-attention teachers can run out of memory past their trained
context; :func:`passkey_eval` records such lengths as ``"skipped (reason)"`` instead of failing.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lizardlm.eval._utils import (
    call_logits,
    encode,
    free_memory,
    is_full_attention_hf_model,
    is_oom,
    model_device,
    progress,
)

PREFIX = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"

DEFAULT_LENGTHS_CPU = (1024, 2048)
DEFAULT_LENGTHS_GPU = (1024, 2048, 4096, 8192, 16384, 32768)


@dataclass
class PasskeyPrompt:
    input_ids: list[int]
    key: str
    depth: float  # requested depth in [0, 1]
    needle_start: int  # token index where the needle starts
    filler_tokens: int  # filler tokens in the prompt (before + after the needle)
    prefix_len: int  # tokens of the instruction before the filler

    @property
    def actual_depth(self) -> float:
        """Fraction of the filler that lies before the needle."""
        before = self.needle_start - self.prefix_len
        return before / self.filler_tokens if self.filler_tokens else 0.0


def make_prompt(tokenizer: Any, length: int, depth: float, key: str | int | None = None, rng: random.Random | None = None, digits: int = 5) -> PasskeyPrompt:
    """A passkey prompt of exactly ``length`` tokens with the needle after ``depth`` of the filler."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError("depth must be in [0, 1]")
    rng = rng or random.Random(0)
    if key is None:
        key = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
    key = str(key)
    prefix = encode(tokenizer, PREFIX)
    unit = encode(tokenizer, FILLER)
    needle = encode(tokenizer, NEEDLE.format(key=key))
    question = encode(tokenizer, QUESTION)
    n_filler = length - len(prefix) - len(needle) - len(question)
    if n_filler < 0:
        raise ValueError(f"length {length} is too short for the passkey prompt ({length - n_filler} tokens without filler)")
    reps = n_filler // len(unit) + 1
    filler = (unit * reps)[:n_filler]
    # cut the filler at a whole unit boundary near the requested depth
    cut = int(round(depth * n_filler / len(unit))) * len(unit)
    cut = max(0, min(cut, n_filler))
    before, after = filler[:cut], filler[cut:]
    ids = prefix + before + needle + after + question
    return PasskeyPrompt(ids, key, depth, len(prefix) + len(before), n_filler, len(prefix))


def greedy_generate(model: Any, input_ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Greedy continuation of one prompt: ``model.generate`` for Hugging Face models (uses the model's
    own cache), else a plain loop of full forwards (for stubs)."""
    dev = model_device(model)
    x = input_ids.to(dev)
    if hasattr(model, "generate") and hasattr(model, "generation_config"):
        with torch.inference_mode():
            out = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=_pad_id(model),
            )
        return out[0, x.shape[1] :].tolist()
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = call_logits(model, x, last_only=True)
        nxt = int(logits[0, -1].argmax())
        new.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]], device=x.device)], dim=1)
    return new


def _pad_id(model: Any) -> int | None:
    cfg = getattr(model, "generation_config", None)
    pad = getattr(cfg, "pad_token_id", None)
    if pad is None:
        eos = getattr(cfg, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    return pad


def extract_digits(text: str) -> str:
    m = re.search(r"\d+", text)
    return m.group(0) if m else ""


def run_prompt(model: Any, tokenizer: Any, prompt: PasskeyPrompt, extra_tokens: int = 4) -> dict:
    ids = torch.tensor([prompt.input_ids], dtype=torch.long)
    # enough tokens for the key even when every digit is its own token
    new = greedy_generate(model, ids, max_new_tokens=len(prompt.key) + extra_tokens)
    text = tokenizer.decode(new, skip_special_tokens=True)
    pred = extract_digits(text)
    return {"depth": round(prompt.depth, 4), "key": prompt.key, "pred": pred, "output": text, "correct": pred == prompt.key}


def passkey_eval(
    model: Any,
    tokenizer: Any,
    lengths: Sequence[int] = DEFAULT_LENGTHS_CPU,
    trials: int = 5,
    seed: int = 0,
    digits: int = 5,
    time_budget_s: float | None = None,
    max_memory_bytes: int | None = None,
    progress: bool = True,
) -> dict:
    """Accuracy per length over ``trials`` prompts with random depths and keys.

    Per length: ``{"length", "status": "ok", "acc", "trials": [...], "seconds"}`` or
    ``{"length", "status": "skipped (reason)"}``. A length is skipped when it runs out of memory,
    when the time it would take (extrapolated from the previous length: linearly, or for stock
    full-attention models as the mean of linear and quadratic growth) exceeds ``time_budget_s``, or, for stock
    full-attention models with eager attention, when one layer's attention scores would not fit
    ``max_memory_bytes`` (default: available RAM on CPU). A length that exceeds the budget part-way keeps the trials done.
    """
    rng = random.Random(seed)
    full_attn = is_full_attention_hf_model(model)
    results = []
    prev: tuple[int, float] | None = None  # (length, seconds per trial)
    bar = _bar(len(lengths) * trials, progress)
    for L in lengths:
        rec: dict[str, Any] = {"length": int(L)}
        plan = [(rng.random(), str(rng.randint(10 ** (digits - 1), 10**digits - 1))) for _ in range(trials)]
        reason = _precheck(model, L, full_attn, prev, trials, time_budget_s, max_memory_bytes)
        if reason:
            rec["status"] = f"skipped ({reason})"
            results.append(rec)
            bar.update(trials)
            continue
        done = []
        t0 = time.perf_counter()
        try:
            for depth, key in plan:
                p = make_prompt(tokenizer, L, depth, key=key)
                done.append(run_prompt(model, tokenizer, p))
                bar.update(1)
                bar.set_postfix(length=L, acc=f"{sum(d['correct'] for d in done) / len(done):.2f}")
                if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s and len(done) < trials:
                    rec["note"] = f"time budget {time_budget_s:.0f}s reached after {len(done)} of {trials} trials"
                    bar.update(trials - len(done))
                    break
        except ValueError as err:
            rec["status"] = f"skipped ({err})"
        except (RuntimeError, MemoryError) as err:
            if not is_oom(err):
                raise
            free_memory()
            rec["status"] = "skipped (out of memory)"
        secs = time.perf_counter() - t0
        if "status" not in rec:
            rec["status"] = "ok"
        if done:
            rec.update(
                acc=sum(d["correct"] for d in done) / len(done),
                n=len(done),
                trials=done,
                seconds=round(secs, 2),
            )
            prev = (L, secs / len(done))
            if rec["status"] != "ok":
                rec["note"] = (rec.get("note", "") + f" partial: {len(done)} trials before failure").strip()
        results.append(rec)
    bar.close()
    return {"lengths": results, "trials": trials, "digits": digits}


def _precheck(model, L, full_attn, prev, trials, budget, max_mem) -> str | None:
    cfg = getattr(model, "config", None)
    if full_attn and getattr(cfg, "_attn_implementation", None) == "eager":
        heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
        dtype_bytes = torch.finfo(next(model.parameters()).dtype).bits // 8
        need = heads * L * L * dtype_bytes  # one layer's attention scores if materialized
        if max_mem is None and model_device(model).type == "cpu":
            max_mem = _available_ram()
        if max_mem is not None and need > max_mem:
            return f"full attention at {L} tokens needs ~{need / 2**30:.1f} GiB for one layer's scores, {max_mem / 2**30:.1f} GiB available"
    if budget is not None and prev is not None:
        L0, per_trial = prev
        r = L / L0
        # full attention: part linear (MLPs), part quadratic (attention) in the length
        est = per_trial * ((r + r * r) / 2 if full_attn else r) * trials
        if est > budget:
            return f"estimated {est:.0f}s > time budget {budget:.0f}s"
    return None


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _bar(total: int, enable: bool):
    return progress(total=total, enable=enable, desc="passkey", unit="trial")
