"""Paired differences between two models scored on the same benchmark items.

Two models evaluated on the same questions differ far less by chance than their two accuracies'
standard errors suggest: most questions are right (or wrong) for both. With per-question scores
``a_i, b_i`` in {0, 1} over the ``n`` shared questions, the difference ``d = mean(b_i - a_i)`` has the
standard error ``sd(b_i - a_i) / sqrt(n)`` (ddof 1): only the discordant questions count. A mean over
tasks ``K`` (e.g. the five zero-shot ones) takes ``se = sqrt(sum_k se_k^2) / K``, the tasks'
questions being independent. Without per-question scores on both sides (results from before they
were recorded) a task falls back to the unpaired ``sqrt(se_a^2 + se_b^2)`` and says so.

Per-question scores live in each benchmark entry of ``eval.json`` as ``items``: ``{metric: "0110..."}``
in document order, and ``items_digest``, a hash of the documents in that order, so that two results
are paired only when they scored the same questions.

Passkey evaluations keep every trial (its key, depth and whether the answer was exact), so two of them
on the same prompts (same seed, depths and keys at a length) pair trial by trial too: per length, the
trials right only in A / only in B and McNemar's exact two-sided test on those discordant trials,
``p = min(1, 2 * P[Binomial(m, 1/2) <= min(a_only, b_only)])``, ``m = a_only + b_only``.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable

from lizardlm.errors import LizardError
from lizardlm.eval.tasks import REPORTED_METRIC, ZERO_SHOT


def item_scores(samples: Iterable[dict], metrics: Iterable[str]) -> tuple[dict[str, str], str] | None:
    """``({metric: "0110..."}, digest)`` from lm-eval's logged samples of one task (each with ``doc_id``,
    ``doc_hash`` and the per-document metric values), ordered by ``doc_id``; None where a value is
    not 0 or 1 (nothing to pair)."""
    rows = sorted(samples, key=lambda s: s["doc_id"])
    if not rows:
        return None
    out: dict[str, str] = {}
    for m in metrics:
        values = [r.get(m) for r in rows]
        if any(v not in (0, 1, 0.0, 1.0, True, False) for v in values):
            return None
        out[m] = "".join("1" if v else "0" for v in values)
    digest = hashlib.sha1("\n".join(str(r.get("doc_hash", r["doc_id"])) for r in rows).encode()).hexdigest()[:16]
    return out, digest


def paired_difference(a: str, b: str) -> dict:
    """``b - a`` over per-question scores ``a``, ``b`` ("0"/"1" strings of one length): both means, their
    difference, its paired standard error, n, and the questions right only in ``a`` / only in ``b``."""
    if len(a) != len(b) or not a:
        raise ValueError(f"per-question scores of different lengths ({len(a)} and {len(b)}) cannot be paired")
    n = len(a)
    a_only = sum(x == "1" and y == "0" for x, y in zip(a, b))
    b_only = sum(x == "0" and y == "1" for x, y in zip(a, b))
    diff = (b_only - a_only) / n
    # sum of squared deviations of d_i in {-1, 0, 1}: (a_only + b_only) - n diff^2
    var = ((a_only + b_only) - n * diff * diff) / (n - 1) if n > 1 else 0.0
    return {"a": a.count("1") / n, "b": b.count("1") / n, "diff": diff, "se": math.sqrt(max(var, 0.0) / n), "n": n,
            "a_only": a_only, "b_only": b_only, "paired": True}


def _unpaired(ea: dict, eb: dict, metric: str) -> dict:
    va, vb = ea["metrics"][metric], eb["metrics"][metric]
    sa, sb = (e["metrics"].get(f"{metric}_stderr") for e in (ea, eb))
    se = math.sqrt(sa * sa + sb * sb) if isinstance(sa, (int, float)) and isinstance(sb, (int, float)) else None
    return {"diff": vb - va, "se": se, "n": eb.get("n"), "paired": False}


def task_difference(ea: dict, eb: dict, metric: str) -> dict:
    """``eb - ea`` on ``metric`` for one benchmark's two entries: paired where both hold per-question
    scores of the same questions, else unpaired (``paired`` False, ``why`` says what was missing)."""
    ia, ib = ea.get("items", {}).get(metric), eb.get("items", {}).get(metric)
    if ia is not None and ib is not None:
        if ea.get("items_digest") != eb.get("items_digest"):
            raise LizardError("the two results scored different questions (their items_digest differ: "
                              "another --limit, seed or data file); they cannot be compared question by question")
        out = paired_difference(ia, ib)
    else:
        out = {**_unpaired(ea, eb, metric), "why": "no per-question scores in "
               + " and ".join(s for s, i in (("the first", ia), ("the second", ib)) if i is None)}
    return {**out, "a": ea["metrics"][metric], "b": eb["metrics"][metric], "metric": metric}


def mean_difference(rows: list[dict]) -> dict:
    """The difference of the means over tasks (each row a :func:`task_difference`): mean of the
    differences, ``se = sqrt(sum se^2) / K`` (None where a row has no se); ``paired``: how many of the
    K differences are paired."""
    k = len(rows)
    ses = [r["se"] for r in rows]
    se = math.sqrt(sum(s * s for s in ses)) / k if all(s is not None for s in ses) else None
    return {"a": sum(r["a"] for r in rows) / k, "b": sum(r["b"] for r in rows) / k,
            "diff": sum(r["diff"] for r in rows) / k, "se": se, "tasks": k, "paired": sum(r["paired"] for r in rows)}


def paired_lines(results: dict, reference: str, model: str) -> list[str]:
    """Markdown lines on ``model`` against ``reference`` within one evaluation, for the benchmarks both
    scored question by question (none without per-question scores)."""
    try:
        cmp = compare(results, reference, results, model)
    except LizardError:
        return []
    rows = {t: r for t, r in cmp["tasks"].items() if r["paired"]}
    if not rows:
        return []
    parts = [f"{t} {100 * r['diff']:+.2f} ± {100 * r['se']:.2f}" for t, r in rows.items()]
    m = cmp["mean"]
    if m and m["paired"] == m["tasks"]:
        parts.append(f"zero-shot mean {100 * m['diff']:+.2f} ± {100 * m['se']:.2f}")
    return [f"- `{model}` - `{reference}`, percentage points ± paired se: " + ", ".join(parts)]


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """McNemar's exact two-sided p-value from the discordant pairs (1 when there are none)."""
    m = a_only + b_only
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(a_only, b_only) + 1)) / 2**m
    return min(1.0, 2 * tail)


def passkey_difference(ea: dict, eb: dict) -> dict[str, dict]:
    """Per length both passkey entries scored on the same prompts (the same keys at the same depths, in
    order): exact match of A and B, ``diff`` (B - A), n, the trials right only in A / B, McNemar's p.
    Lengths whose prompts differ (another seed or depths) are left out."""
    la = {r["length"]: r for r in ea.get("details", {}).get("lengths", []) if r.get("trials")}
    out: dict[str, dict] = {}
    for rb in eb.get("details", {}).get("lengths", []):
        ra = la.get(rb["length"])
        if ra is None or not rb.get("trials"):
            continue
        if [(t["key"], t["depth"]) for t in ra["trials"]] != [(t["key"], t["depth"]) for t in rb["trials"]]:
            continue
        a, b = ("".join("1" if t["correct"] else "0" for t in r["trials"]) for r in (ra, rb))
        d = paired_difference(a, b)
        out[str(rb["length"])] = {**d, "p": mcnemar_exact(d["a_only"], d["b_only"])}
    return out


def _entry(results: dict, task: str, model: str) -> dict | None:
    e = results.get("tasks", {}).get(task, {}).get(model)
    return e if e and e.get("status") == "ok" else None


COMPARABLE = (*REPORTED_METRIC, "passkey")
"""What :func:`compare` pairs: the benchmarks question by question, the passkey trial by trial."""


def compare(a: dict, model_a: str, b: dict, model_b: str, tasks: Iterable[str] | None = None) -> dict:
    """``model_b`` of results ``b`` against ``model_a`` of results ``a`` (``eval.json`` dicts, possibly the
    same one) on every benchmark both scored and on the passkey (or on ``tasks``): ``{"tasks": {task:
    row}, "mean": row or None, "mean_tasks": [...], "passkey": {length: row}}``; the mean is over the
    zero-shot five where both have all five, the passkey's lengths those scored on the same prompts
    (``passkey_note`` says why none was, where both have a passkey)."""
    names = list(tasks) if tasks is not None else list(COMPARABLE)
    rows: dict[str, dict] = {}
    passkey: dict[str, dict] = {}
    note = None
    for t in names:
        if t not in COMPARABLE:
            raise LizardError(f"{t!r} cannot be compared question by question; these can: {', '.join(COMPARABLE)}")
        ea, eb = _entry(a, t, model_a), _entry(b, t, model_b)
        if ea is None or eb is None:
            if tasks is not None:
                side, missing = ("A", model_a) if ea is None else ("B", model_b)
                raise LizardError(f"no {t} result for model {missing!r} of {side} to compare")
            continue
        if t == "passkey":
            passkey = passkey_difference(ea, eb)
            if not passkey:
                note = ("the two passkey evaluations share no length scored on the same prompts (another seed or "
                        "depths, or other lengths before it: the keys are drawn length after length from one seed)")
                if tasks is not None:
                    raise LizardError(note)
        else:
            rows[t] = task_difference(ea, eb, REPORTED_METRIC[t])
    if not rows and not passkey:
        raise LizardError(f"the two results share nothing to compare ({', '.join(COMPARABLE)})")
    mean_tasks = [t for t in ZERO_SHOT if t in rows]
    mean = mean_difference([rows[t] for t in mean_tasks]) if len(mean_tasks) == len(ZERO_SHOT) else None
    return {"tasks": rows, "mean": mean, "mean_tasks": mean_tasks if mean else [], "passkey": passkey,
            "passkey_note": note}
