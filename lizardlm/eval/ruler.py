"""A RULER-style suite (Hsieh et al. 2024) generated offline, scored by exact match.

Tasks (each prompt has exactly ``length`` tokens of neutral filler around the needles, then the
question and an answer prefix; the greedy continuation is scored):

* ``single_needle`` mirrors RULER ``niah_single_2`` (one "special magic number" for one key in filler);
* ``multi_key`` mirrors ``niah_multikey_1``: 4 needles with different keys, one asked for;
* ``multi_value`` mirrors ``niah_multivalue``: 4 numbers stored under one key, all asked for;
* ``multi_query`` mirrors ``niah_multiquery``: 4 keys with a number each, all asked for;
* ``variable_tracking`` mirrors ``vt``: a chain ``VAR A = 12345``, ``VAR B = VAR A``, ... of 4
  hops, the names of every variable holding the number asked for.

A trial scores the share of its expected answers that appear verbatim in the continuation (RULER's
``string_match_all``), so single-answer tasks score 0 or 1. Keys are words, values 7-digit numbers;
needles sit at seeded random depths. Lizard models run at constant memory (chunked prefill).
"""

from __future__ import annotations

import random
import time
from typing import Any, Sequence

import torch

from lizardlm.eval._utils import OOM_SKIP, encode, skip_length
from lizardlm.eval.streaming import DEFAULT_CHUNK, greedy_batch
from lizardlm.progress import progress

TASKS = ("single_needle", "multi_key", "multi_value", "multi_query", "variable_tracking")
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
HEADER = "Some special magic numbers are hidden within the following text. Make sure to memorize them.\n"
KEYS = "apple river garden window mountain candle forest island castle bridge planet violin".split()
VARIABLES = "QXA TRV MZK PLD WNE HBS".split()
HOPS = 4


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def task_items(task: str, rng: random.Random) -> tuple[list[str], str, list[str]]:
    """``(needles, question + answer prefix, expected answers)`` of one trial of ``task``."""
    keys = rng.sample(KEYS, 4)
    if task == "single_needle":
        value = _number(rng)
        return ([f" One of the special magic numbers for {keys[0]} is: {value}."],
                f"\nWhat is the special magic number for {keys[0]}? The special magic number for {keys[0]} is:", [value])
    if task == "multi_key":
        values = [_number(rng) for _ in keys]
        needles = [f" One of the special magic numbers for {k} is: {v}." for k, v in zip(keys, values)]
        return needles, f"\nWhat is the special magic number for {keys[0]}? The special magic number for {keys[0]} is:", values[:1]
    if task == "multi_value":
        values = [_number(rng) for _ in range(4)]
        needles = [f" One of the special magic numbers for {keys[0]} is: {v}." for v in values]
        return needles, f"\nWhat are all the special magic numbers for {keys[0]}? The special magic numbers for {keys[0]} are:", values
    if task == "multi_query":
        values = [_number(rng) for _ in keys]
        needles = [f" One of the special magic numbers for {k} is: {v}." for k, v in zip(keys, values)]
        return needles, f"\nWhat are the special magic numbers for {', '.join(keys)}? They are:", values
    if task == "variable_tracking":
        names = rng.sample(VARIABLES, HOPS + 1)
        value = str(rng.randint(10_000, 99_999))
        needles = [f" VAR {names[0]} = {value}."] + [f" VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
        return needles, f"\nFind all variables that are assigned the value {value}. Answer: the variables are:", names
    raise ValueError(f"unknown RULER task {task!r}; known: {', '.join(TASKS)}")


def make_prompt(tokenizer: Any, task: str, length: int, rng: random.Random) -> tuple[list[int], list[str]]:
    """Token ids (exactly ``length``) of one trial and its expected answers; needles in text order."""
    needles, question, answers = task_items(task, rng)
    head, tail = encode(tokenizer, HEADER), encode(tokenizer, question)
    parts = [encode(tokenizer, n) for n in needles]
    if task != "variable_tracking":  # the chain stays in order, as in RULER
        rng.shuffle(parts)
    unit = encode(tokenizer, FILLER)
    n_filler = length - len(head) - len(tail) - sum(map(len, parts))
    if n_filler < 0:
        raise ValueError(f"length {length} is too short for RULER {task} ({length - n_filler} tokens without filler)")
    filler = (unit * (n_filler // len(unit) + 1))[:n_filler]
    units = n_filler // len(unit)
    cuts = sorted(rng.randint(0, units) * len(unit) for _ in parts)
    ids, prev = list(head), 0
    for cut, part in zip(cuts, parts):
        ids += filler[prev:cut] + part
        prev = cut
    return ids + filler[prev:] + tail, answers


def ruler_eval(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str] = TASKS,
    lengths: Sequence[int] = (1024, 2048),
    trials: int = 20,
    seed: int = 0,
    batch_size: int = 1,
    chunk: int = DEFAULT_CHUNK,
    progress_bar: bool = True,
) -> dict:
    """Score per task and length: ``{"tasks": {task: [{"length", "status", "score", "n", "trials"}]}, "mean": {length: score}}``.

    A length that runs out of memory is ``"skipped (out of memory)"`` (not zero), for every task after it too.
    """
    bar = progress(total=len(tasks) * len(lengths) * trials, enable=progress_bar, desc="ruler", unit="trial")
    out: dict[str, list[dict]] = {}
    oom_from: int | None = None
    for task in tasks:
        rng = random.Random(f"{seed}-{task}")
        out[task] = []
        for L in lengths:
            rec: dict[str, Any] = {"length": int(L)}
            if oom_from is not None and L >= oom_from:
                out[task].append({**rec, "status": OOM_SKIP})
                bar.update(trials)
                continue
            t0, done = time.perf_counter(), []
            with skip_length(rec):
                prompts = [make_prompt(tokenizer, task, L, rng) for _ in range(trials)]
                for start in range(0, trials, batch_size):
                    part = prompts[start:start + batch_size]
                    ids = torch.tensor([p for p, _ in part], dtype=torch.long)
                    longest = max(len(encode(tokenizer, " " + ", ".join(a))) for _, a in part)
                    new = greedy_batch(model, ids, longest + 8, chunk=chunk)
                    for (_, answers), row in zip(part, new.tolist()):
                        text = tokenizer.decode(row, skip_special_tokens=True)
                        done.append({"answers": answers, "output": text,
                                     "score": sum(a in text for a in answers) / len(answers)})
                    bar.update(len(part))
                rec.update(status="ok", score=sum(d["score"] for d in done) / len(done), n=len(done), trials=done)
            if rec["status"] == OOM_SKIP:
                oom_from = L
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            out[task].append(rec)
    bar.close()
    mean = {}
    for L in lengths:
        scores = [r["score"] for recs in out.values() for r in recs if r["length"] == L and "score" in r]
        mean[str(L)] = sum(scores) / len(scores) if len(scores) == len(tasks) else None
    return {"tasks": out, "mean": mean, "trials": trials, "lengths": list(lengths)}
