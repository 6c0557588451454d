"""The rows of the benchmark study (issue 17) and the numbers each row keeps from its evaluation.

Every row is one ``lizardlm linearize`` run (``--preset paper``, one seed, one token budget) with
the row's own flags, except ``teacher`` (evaluated as it is). Rows, by group:

* reference: ``teacher``, ``teacher-lora`` (the teacher with the same stage-2 LoRA: the fair ceiling)
* forms: ``lizard-paper`` (the paper's layer, token gate), ``lizard`` (our form), ``lolcats``
* ours: our form without its gate, without its meta slots, and at window 128 (what the first study
  left open: which part of ours costs PIQA and ARC-e against ``lolcats``)
* ablations of the paper form: ``paper-no-gate``, ``paper-no-sink``, ``paper-no-window``, ``paper-no-stage1``
* gates on the paper form (``lizard-paper`` is the token gate): ``gate-scalar``, ``gate-mamba2``, ``gate-pooled_key``
* grid (reduced budget): ``grid-w{32,64,128,256}-m{2,4,6}`` of the paper form
* hybrids of the paper form: ``hybrid-{even,auto}-{25,50}`` (softmax in 25% / 50% of the layers,
  evenly spaced or chosen by stage-1 transfer error), and of ours: ``hybrid-lizard-auto-{25,50}``
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lizardlm.eval.tasks import REPORTED_METRIC

MC_TASKS = REPORTED_METRIC
"""The six benchmarks and the metric each row reports (MMLU 5-shot, the rest 0-shot)."""
CHANCE = {"piqa": 0.5, "arc_easy": 0.25, "arc_challenge": 0.25, "hellaswag": 0.25, "winogrande": 0.5, "mmlu": 0.25}
LONG_TASKS = ("passkey", "mqar", "longppl")
EVAL_GROUPS = ("piqa,arc_easy,arc_challenge,hellaswag,winogrande", "mmlu", "passkey,mqar,longppl")
"""One ``lizardlm eval`` process per group, run concurrently."""
FULL_GROUP = EVAL_GROUPS[0]
"""The zero-shot tasks, scored again on their whole sets (no ``--limit``) for the ``--full-sets`` rows."""
GROUPS = ("reference", "forms", "ours", "ablations", "gates", "grid", "hybrids")


@dataclass(frozen=True)
class Row:
    """One study row: ``flags`` added to ``lizardlm linearize``; ``budget`` ``main``, ``grid`` (the
    reduced budget) or ``none`` (no training); ``stage1`` False trains stage 2 only (stage-1 tokens 0)."""

    name: str
    group: str
    flags: tuple[str, ...] = ()
    budget: str = "main"
    stage1: bool = True


def study_rows(num_layers: int) -> dict[str, Row]:
    """Every row, in table order, for a teacher of ``num_layers`` layers (hybrids keep 25% / 50% of them)."""
    rows = [
        Row("teacher", "reference", budget="none"),
        Row("teacher-lora", "reference", ("--baseline", "teacher-lora")),  # its stage-1 budget only sizes the data
        Row("lizard-paper", "forms", ("--mode", "paper")),
        Row("lizard", "forms", ("--mode", "lizard")),
        Row("lolcats", "forms", ("--mode", "lolcats")),
        Row("lizard-no-gate", "ours", ("--mode", "no_gate")),
        Row("lizard-no-meta", "ours", ("--mode", "no_meta")),
        Row("lizard-w128", "ours", ("--mode", "lizard", "--window-size", "128")),
        Row("paper-no-gate", "ablations", ("--mode", "paper_no_gate")),
        Row("paper-no-sink", "ablations", ("--mode", "paper_no_sink")),
        Row("paper-no-window", "ablations", ("--mode", "paper_no_window")),
        Row("paper-no-stage1", "ablations", ("--mode", "paper"), stage1=False),
        *(Row(f"gate-{g}", "gates", ("--mode", "paper", "--gate", g)) for g in ("scalar", "mamba2", "pooled_key")),
        *(Row(f"grid-w{w}-m{m}", "grid", ("--mode", "paper", "--window-size", str(w), "--num-meta-tokens", str(m)),
              budget="grid") for w in (32, 64, 128, 256) for m in (2, 4, 6)),
    ]
    for share in (25, 50):
        count = max(1, round(share / 100 * num_layers))
        rows += [Row(f"hybrid-{how}-{share}", "hybrids", ("--mode", "paper", "--softmax-layers", f"{how}:{count}"))
                 for how in ("even", "auto")]
        rows.append(Row(f"hybrid-lizard-auto-{share}", "hybrids", ("--mode", "lizard", "--softmax-layers", f"auto:{count}")))
    return {row.name: row for row in rows}


def select_rows(rows: dict[str, Row], spec: str | None) -> list[Row]:
    """``--rows``: comma-separated row names and/or group names (all rows when None)."""
    if not spec:
        return list(rows.values())
    chosen: dict[str, Row] = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item in GROUPS:
            chosen.update({r.name: r for r in rows.values() if r.group == item})
        elif item in rows:
            chosen[item] = rows[item]
        else:
            raise ValueError(f"unknown study row {item!r}; rows: {', '.join(rows)}; groups: {', '.join(GROUPS)}")
    return list(chosen.values())


def _entries(groups: list[dict]) -> dict[str, dict]:
    """``task -> entry`` over the ``eval.json`` files of one model (one column each)."""
    return {task: next(iter(by_model.values())) for g in groups for task, by_model in g["tasks"].items()}


def long_ppl(curve: dict) -> float:
    """Perplexity over the whole window from the per-bucket mean NLLs: ``exp(sum n_b nll_b / sum n_b)``
    with ``n_b`` the predicted tokens of bucket b (the first bucket has one fewer)."""
    sizes = [e - s - (s == 0) for s, e in zip(curve["bucket_start"], curve["bucket_end"])]
    return math.exp(sum(n * x for n, x in zip(sizes, curve["nll"])) / sum(sizes))


def row_scores(groups: list[dict]) -> dict:
    """Scores of one row from its ``eval.json`` files: each MC task's metric (``MC_TASKS``) and its
    stderr; ``passkey`` = mean accuracy over the lengths (each under ``passkey_by_length``); ``mqar`` =
    mean accuracy over its settings; ``longppl`` = long-document perplexity over the whole window.
    Tasks that did not run are absent (their status under ``status``)."""
    entries = _entries(groups)
    scores: dict = {"stderr": {}, "status": {}}
    for task, entry in entries.items():
        scores["status"][task] = entry.get("status")
        if entry.get("status") != "ok":
            continue
        metrics = entry.get("metrics", {})
        if task in MC_TASKS:
            scores[task] = metrics[MC_TASKS[task]]
            scores["stderr"][task] = metrics.get(f"{MC_TASKS[task]}_stderr")
        elif task == "passkey":
            by_length = {k.removeprefix("acc @ "): v for k, v in metrics.items() if k.startswith("acc @ ")}
            scores["passkey"] = sum(by_length.values()) / len(by_length)
            scores["passkey_by_length"] = by_length
        elif task == "mqar":
            scores["mqar"] = metrics["acc (mean)"]
        elif task == "longppl":
            scores["longppl"] = long_ppl(entry["curve"])
    return scores


def full_scores(group: dict) -> dict:
    """The ``FULL_GROUP`` scores of one row (each task's metric, ``stderr`` and ``n``, the documents scored)."""
    scores = row_scores([group])
    scores["n"] = {t: e["n"] for t, e in _entries([group]).items() if t in scores and "n" in e}
    return {k: v for k, v in scores.items() if k != "status"}


def discriminative(teacher: dict, sigmas: float = 3.0) -> list[str]:
    """MC tasks on which the teacher row is above chance by more than ``sigmas`` standard errors."""
    return [t for t in MC_TASKS if t in teacher and teacher["stderr"].get(t)
            and teacher[t] - CHANCE[t] > sigmas * teacher["stderr"][t]]
