"""Passkey retrieval (Mohtashami & Jaggi, 2023): a random number hidden in repeated filler text at a
given depth, asked for at the end; scored by exact match of the digits in the greedy continuation.

Prompt (token ids are concatenated piece by piece so the prompt has exactly ``length`` tokens)::

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.
    I will quiz you about the important information there.
    The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.  (xN)
    The pass key is 68410. Remember it. 68410 is the pass key.          <- at depth d of the filler
    The grass is green. ...                                              (xM)
    What is the pass key? The pass key is

That is the evaluation template (``template="eval"``). ``template="train"`` scores the training
template of :mod:`lizardlm.data.retrieval` instead (5 numbered passkeys in held-out Gutenberg
books, one asked for), so both can be reported. Trials run in batches of equal-length prompts,
prefilled in chunks through the model's cache (:mod:`lizardlm.eval.streaming`: constant memory for
Lizard models); ``depths`` spreads the trials over a grid of needle depths (a depth x length heat map).

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
    encode,
    is_full_attention_hf_model,
    model_device,
    skip_length,
    split_on_oom,
)
from lizardlm.eval.streaming import DEFAULT_CHUNK, greedy_and_nll
from lizardlm.progress import progress

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
    placed_depth: float | None = None  # the depth as placed, where the template knows it
    other_keys: tuple[str, ...] = ()  # the prompt's other passkeys (training template), never asked for
    answer_ids: tuple[int, ...] = ()  # the right continuation's tokens (the key and its full stop)
    needle_end: int | None = None  # token index just after the needle (evaluation template)

    @property
    def actual_depth(self) -> float:
        """Fraction of the filler that lies before the needle."""
        if self.placed_depth is not None:
            return self.placed_depth
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
    from lizardlm.data.retrieval import continuation_tokens

    answer = continuation_tokens(tokenizer, QUESTION, key)
    start = len(prefix) + len(before)
    return PasskeyPrompt(ids, key, depth, start, n_filler, len(prefix), answer_ids=tuple(answer),
                         needle_end=start + len(needle))


def extract_digits(text: str) -> str:
    m = re.search(r"\d+", text)
    return m.group(0) if m else ""


def make_train_prompt(pool: Any, length: int, depth: float, rng: random.Random, keys: int = 5) -> PasskeyPrompt:
    """A prompt in the training template (:func:`lizardlm.data.retrieval.make_example`): ``keys``
    passkeys, number 1 at ``depth`` and the others at random depths, passkey number 1 asked for."""
    from lizardlm.data.retrieval import make_example

    example = make_example(pool, rng, length, keys=keys, ask=1, depths=[depth])
    others = tuple(key for number, key in sorted(example.keys.items()) if number != 1)
    return PasskeyPrompt(example.input_ids, example.keys[1], depth, example.needle_starts[1], 1, 0, example.depths[1],
                         others, tuple(example.continuation))


def answer_batch(prompts: Sequence[PasskeyPrompt]) -> torch.Tensor:
    """The prompts' right answers ``(B, K)``, each padded to the longest by repeating its last token
    (padding after an answer cannot change the positions before it: causal)."""
    width = max(len(p.answer_ids) for p in prompts)
    return torch.tensor([list(p.answer_ids) + [p.answer_ids[-1]] * (width - len(p.answer_ids)) for p in prompts])


def run_prompts(model: Any, tokenizer: Any, prompts: Sequence[PasskeyPrompt], extra_tokens: int = 4, chunk: int = DEFAULT_CHUNK) -> list[dict]:
    """Greedy answers of equal-length prompts in one batch, each scored by exact match of its digits;
    ``first_digit`` says whether the answer starts right, ``other_key`` whether it is exactly another
    passkey of the prompt (a needle found, but not the one asked for), ``answer_nll`` the mean
    teacher-forced NLL per token of the right answer (what stage 2 trains on the training template),
    ``needle_distance`` the tokens between the needle's end and the prompt's end (None where the
    template does not mark it)."""
    ids = torch.tensor([p.input_ids for p in prompts], dtype=torch.long)
    # enough tokens for the key even when every digit is its own token
    answers = answer_batch(prompts)
    new, nll = greedy_and_nll(model, ids, max(len(p.key) for p in prompts) + extra_tokens, answers, chunk=chunk)
    out = []
    for p, row, row_nll in zip(prompts, new.tolist(), nll):
        text = tokenizer.decode(row, skip_special_tokens=True)
        pred = extract_digits(text)
        out.append({"depth": round(p.depth, 4), "actual_depth": round(p.actual_depth, 4), "key": p.key,
                    "pred": pred, "output": text, "correct": pred == p.key,
                    "first_digit": pred[:1] == p.key[:1], "other_key": pred in p.other_keys,
                    "answer_nll": round(row_nll[: len(p.answer_ids)].mean().item(), 4),
                    "needle_distance": None if p.needle_end is None else len(p.input_ids) - p.needle_end})
    return out


def depth_grid(n: int) -> tuple[float, ...]:
    """``n`` evenly spaced needle depths from 0 to 1."""
    return tuple(i / (n - 1) for i in range(n)) if n > 1 else (0.5,)


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
    depths: int | None = None,
    batch_size: int = 1,
    template: str = "eval",
    filler: Any = None,
    chunk: int = DEFAULT_CHUNK,
    keys: int = 5,
) -> dict:
    """Accuracy per length over ``trials`` prompts with random keys, drawn length after length from one
    generator seeded by ``seed``: the prompts at a length depend on the lengths before it in ``lengths``
    (two evaluations pair trial by trial only where they asked for the same lengths up to it).

    Depths are random (``depths=None``) or cycle through ``depth_grid(depths)``; ``template`` is
    ``"eval"`` (the module's prompt) or ``"train"`` (the training template; ``filler`` is the
    :class:`~lizardlm.data.retrieval.FillerPool` of held-out books, with ``keys`` passkeys a prompt).
    ``batch_size`` prompts run at once.

    Per length: ``{"length", "status": "ok", "acc", "first_digit_acc", "other_key_rate", "repeated_digit_acc",
    "distinct_digit_acc", "number_rate", "number_acc", "misses", "answer_nll", "by_depth", "trials": [...],
    "seconds"}``
    (``other_key_rate``: the share of answers that are exactly another passkey of the prompt, always 0 for
    the evaluation template's one needle; ``repeated_digit_acc`` / ``distinct_digit_acc``: exact match over
    the keys that repeat a digit (70% of random 5-digit keys) / that do not, None where there were none: a
    model that finds the needle but copies each digit from the one before it slips on the former;
    ``number_rate``: the share of answers that hold a number at all, ``number_acc``: exact match over those,
    None where none does: a miss in words ("the pass key.") lost the answer's format, where a wrong number
    is a wrong key; whether the key was still there, ``answer_nll`` says; ``misses``: the wrong answers
    counted by kind (:func:`miss_kind`: in words, another key, a digit of a doubled pair left out...); for a
    Lizard model on the evaluation template, ``beyond_window_acc`` / ``beyond_window_n``: exact match over
    the trials whose whole needle lies before the window of the answer's first token, ``needle_distance >=
    w``, i.e. what only the linear memory can answer, None where there were none) or
    ``{"length", "status": "skipped (reason)"}``. A length is skipped when it runs out of memory,
    when the time it would take (extrapolated from the previous length: linearly, or for stock
    full-attention models as the mean of linear and quadratic growth) exceeds ``time_budget_s``, or, for stock
    full-attention models with eager attention, when one layer's attention scores would not fit
    ``max_memory_bytes`` (default: available RAM on CPU). A length that exceeds the budget part-way keeps the trials done.
    """
    if template not in ("eval", "train") or (template == "train" and filler is None):
        raise ValueError("template is 'eval', or 'train' with a filler pool of held-out books")
    rng = random.Random(seed)
    grid = depth_grid(depths) if depths else None
    full_attn = is_full_attention_hf_model(model)
    window = getattr(getattr(model, "lizard_config", None), "window_size", None)
    results = []
    prev: tuple[int, float] | None = None  # (length, seconds per trial)
    bar = _bar(len(lengths) * trials, progress)
    for L in lengths:
        rec: dict[str, Any] = {"length": int(L)}
        plan = [(grid[i % len(grid)] if grid else rng.random(), str(rng.randint(10 ** (digits - 1), 10**digits - 1)))
                for i in range(trials)]
        reason = _precheck(model, L, full_attn, prev, trials, time_budget_s, max_memory_bytes)
        if reason:
            rec["status"] = f"skipped ({reason})"
            results.append(rec)
            bar.update(trials)
            continue
        done: list[dict] = []
        t0 = time.perf_counter()
        with skip_length(rec):
            for start in range(0, trials, batch_size):
                part = plan[start:start + batch_size]
                if template == "train":
                    prompts = [make_train_prompt(filler, L, depth, rng, keys=keys) for depth, _ in part]
                else:
                    prompts = [make_prompt(tokenizer, L, depth, key=key) for depth, key in part]
                done += split_on_oom(lambda ps: run_prompts(model, tokenizer, ps, chunk=chunk), prompts)
                bar.update(len(part))
                bar.set_postfix(length=L, acc=f"{_mean(done):.2f}")
                if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s and len(done) < trials:
                    rec["note"] = f"time budget {time_budget_s:.0f}s reached after {len(done)} of {trials} trials"
                    bar.update(trials - len(done))
                    break
        secs = time.perf_counter() - t0
        if "status" not in rec:
            rec["status"] = "ok"
        if done:
            rec.update(
                acc=_mean(done),
                first_digit_acc=_mean(done, "first_digit"),
                other_key_rate=_mean(done, "other_key"),
                repeated_digit_acc=_mean([d for d in done if len(set(d["key"])) < len(d["key"])]),
                distinct_digit_acc=_mean([d for d in done if len(set(d["key"])) == len(d["key"])]),
                **number_answers(done),
                misses=miss_kinds(done),
                answer_nll=_mean(done, "answer_nll"),
                n=len(done),
                by_depth=_by_depth(done),
                **(beyond_window(done, window) if window and template == "eval" else {}),
                trials=done,
                seconds=round(secs, 2),
            )
            prev = (L, secs / len(done))
            if rec["status"] != "ok":
                rec["note"] = (rec.get("note", "") + f" partial: {len(done)} trials before failure").strip()
        results.append(rec)
    bar.close()
    return {"lengths": results, "trials": trials, "digits": digits, "template": template, "depths": list(grid or ()),
            **({"keys": keys} if template == "train" else {})}


def beyond_window(trials: list[dict], window: int) -> dict[str, float | int | None]:
    """``beyond_window_acc``: exact match over the ``trials`` whose needle ended at least ``window`` tokens
    before the prompt's end (None where none did), and their count ``beyond_window_n``."""
    beyond = [d for d in trials if d["needle_distance"] is not None and d["needle_distance"] >= window]
    return {"beyond_window_acc": _mean(beyond), "beyond_window_n": len(beyond)}


def number_answers(trials: list[dict]) -> dict[str, float | None]:
    """``number_rate``: the share of ``trials`` (non-empty) whose answer holds a number; ``number_acc``: exact
    match over those (None where none does)."""
    numbered = [d for d in trials if d["pred"]]
    return {"number_rate": len(numbered) / len(trials), "number_acc": _mean(numbered)}


MISS_KINDS = ("words", "other_key", "dropped_repeat", "dropped", "inserted", "neighbour", "substituted", "other")


def miss_kind(trial: dict) -> str:
    """What a wrong answer did to its key (``trial["key"]`` and the answer's digits ``trial["pred"]``):
    ``words`` (no number), ``other_key`` (another passkey of the prompt), ``dropped_repeat`` (one digit of a
    doubled pair left out, 53664 -> 5364: a lookup that finds each digit from the one before it has two
    answers after the first 6), ``dropped`` (another digit left out), ``inserted`` (one digit added),
    ``neighbour`` (one digit replaced by the key's digit beside it, 86949 -> 86449), ``substituted`` (one
    digit replaced by another) or ``other`` (several changes)."""
    key, pred = trial["key"], trial["pred"]
    if not pred:
        return "words"
    if trial.get("other_key"):
        return "other_key"
    if len(pred) == len(key) - 1:
        left_out = [i for i in range(len(key)) if key[:i] + key[i + 1:] == pred]
        if left_out:
            doubled = any(key[i] in (key[i - 1:i] + key[i + 1:i + 2]) for i in left_out)
            return "dropped_repeat" if doubled else "dropped"
    if len(pred) == len(key) + 1 and any(pred[:i] + pred[i + 1:] == key for i in range(len(pred))):
        return "inserted"
    if len(pred) == len(key):
        changed = [i for i in range(len(key)) if pred[i] != key[i]]
        if len(changed) == 1:
            i = changed[0]
            return "neighbour" if pred[i] in key[max(i - 1, 0):i] + key[i + 1:i + 2] else "substituted"
    return "other"


def miss_kinds(trials: list[dict]) -> dict[str, int]:
    """How many of the wrong ``trials`` fall in each of :data:`MISS_KINDS` (see :func:`miss_kind`)."""
    counts = dict.fromkeys(MISS_KINDS, 0)
    for trial in trials:
        if not trial["correct"]:
            counts[miss_kind(trial)] += 1
    return counts


def _mean(done: list[dict], field: str = "correct") -> float | None:
    """The mean of ``field`` over these trials (by default exact match); None for none."""
    return sum(d[field] for d in done) / len(done) if done else None


def _by_depth(done: list[dict]) -> dict[str, float]:
    """Accuracy per requested depth (a heat-map column)."""
    groups: dict[float, list[bool]] = {}
    for d in done:
        groups.setdefault(d["depth"], []).append(d["correct"])
    return {f"{depth:.4f}": sum(v) / len(v) for depth, v in sorted(groups.items())}


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
