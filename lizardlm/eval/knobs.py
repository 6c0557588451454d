"""Choosing a Lizard model's inference knobs for prompts longer than training, on prompts the
evaluation never scores.

The knobs are ``decay_scale`` ``S`` (every log-decay times ``S``: ``a -> a^S``, half-lives times
``1/S``), ``write_contrast`` ``C`` (the write gate's logits times ``C``: ``s = 2 sigmoid(C z)``) and
``read_sharpness`` ``t`` (the query feature map's logits times ``t``: ``phi_q(u) = [softmax(t u W),
softmax(-t u W)]``). None is trained, and the best values move with the prompt length, so they are
searched: every ``(S, C, t)`` of a grid scores passkey prompts at the lengths to be served, and the
setting with the highest mean exact match over those lengths wins (ties: the lowest mean answer NLL, the
teacher-forced loss of the right key, a finer signal than a few dozen exact matches; then the setting
nearest ``S = C = t = 1``, the model as trained). The prompts are drawn from ``seed``; the evaluation's
passkey task draws from its own (``lizardlm eval --seed``, 0 by default), so a setting chosen here is
scored there on keys it was not chosen on.

A choice among a few dozen prompts a length is noisy (on the H100, 20 prompts scored a setting 1.00 that
100 others scored 0.78: ``benchmarks/NOTES.md``), so every setting carries the standard error of its mean
exact match, each length a binomial proportion with two hits and two misses added (Agresti-Coull: 20 of 20
is not read as certain), ``se = sqrt(sum_L p_L (1 - p_L) / (n_L + 4)) / K`` with ``p_L = (x_L + 2) / (n_L + 4)``
over the ``K`` lengths, and the choice names the settings within two standard errors of the difference
from it: the ones more trials would have to tell apart. With ``refine`` those settings and the choice score
that many more prompts a length, drawn from ``seed + 1``, pooled with their first (a race: trials go where
the choice is still open), and the choice is made again.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from itertools import product
from typing import Any, Iterator, Sequence

from lizardlm.config import INFERENCE_KNOBS, LizardConfig
from lizardlm.eval.passkey import passkey_eval

DEFAULT_DECAY_SCALES = (1.0, 0.5, 0.25, 0.125)
DEFAULT_WRITE_CONTRASTS = (1.0, 2.0, 3.0)
DEFAULT_READ_SHARPNESSES = (1.0, 2.0)
"""The grid when none is given (the write contrasts only for a model with a write gate): the values
that mattered on the H100 (``benchmarks/results/passkey-contrast-nvidia-h100-80gb-hbm3.json``; the read
sharpness: ``benchmarks/results/read-sharpness-nvidia-h100-80gb-hbm3/``, where ``t = 2`` mended 17 of 61
misses at 2K-8K and broke 2 of 1,139 hits on the same prompts, and 3 did no better)."""


def has_decay_gate(model: Any) -> bool:
    """Whether ``model``'s linear branch decays (what ``decay_scale`` stretches; LoLCATs' does not)."""
    return model.lizard_config.gate != "none"


def has_write_gate(model: Any) -> bool:
    """Whether ``model``'s Lizard layers have a write gate (what ``write_contrast`` sharpens)."""
    return model.lizard_config.write_gate != "none"


@contextmanager
def at_knobs(model: Any, decay_scale: float = 1.0, write_contrast: float = 1.0, read_sharpness: float = 1.0) -> Iterator[Any]:
    """``model`` with its decay scale, write contrast and read sharpness set to these (1: as trained), its
    own set back on leaving."""
    cfg = model.lizard_config
    try:
        model.set_decay_scale(decay_scale)
        model.set_write_contrast(write_contrast)
        model.set_read_sharpness(read_sharpness)
        yield model
    finally:
        model.set_decay_scale(cfg.decay_scale)
        model.set_write_contrast(cfg.write_contrast)
        model.set_read_sharpness(cfg.read_sharpness)


def tune_knobs(
    model: Any,
    tokenizer: Any,
    lengths: Sequence[int],
    decay_scales: Sequence[float] | None = None,
    write_contrasts: Sequence[float] | None = None,
    read_sharpnesses: Sequence[float] | None = None,
    refine: int = 0,
    **passkey: Any,
) -> dict[str, Any]:
    """Score every ``(decay_scale, write_contrast, read_sharpness)`` of the grid with
    :func:`~lizardlm.eval.passkey.passkey_eval` at ``lengths`` (``passkey``: its other arguments: trials, seed,
    depths, template, batch size ...) and pick the best. ``decay_scales=None``: :data:`DEFAULT_DECAY_SCALES`
    with a decay gate, else 1 alone; ``write_contrasts=None``: :data:`DEFAULT_WRITE_CONTRASTS` with a write
    gate, else 1 alone; ``read_sharpnesses=None``: :data:`DEFAULT_READ_SHARPNESSES`. ``refine > 0``: where
    other settings are within noise of the best, they and the best score ``refine`` more prompts a length of
    seed ``seed + 1``, pooled with their first, and the best is chosen again. The model's own knobs are
    restored afterwards.

    Returns ``{"grid": [{"decay_scale", "write_contrast", "read_sharpness", "acc": {length: acc},
    "first_digit_acc", "answer_nll", "n": {length: trials}, "mean_acc", "mean_acc_se", "mean_nll"}, ...],
    "best": {"decay_scale", "write_contrast", "read_sharpness", "mean_acc", "mean_nll", "mean_acc_se",
    "close": [the knobs of the settings within noise of it, :func:`close_to`]}, "lengths", "trained": {the
    three}, "passkey": {its settings}, "refined": {"trials", "seed", "settings": [the knobs it refined]} or
    None}``.
    ValueError for an empty grid, a scale other than 1 without a decay gate, a contrast other than 1
    without a write gate, or a setting the :class:`~lizardlm.config.LizardConfig` refuses (a value <= 0),
    before any setting runs."""
    gated, decays = has_write_gate(model), has_decay_gate(model)
    if decay_scales is None:
        decay_scales = DEFAULT_DECAY_SCALES if decays else (1.0,)
    if write_contrasts is None:
        write_contrasts = DEFAULT_WRITE_CONTRASTS if gated else (1.0,)
    if read_sharpnesses is None:
        read_sharpnesses = DEFAULT_READ_SHARPNESSES
    if not decay_scales or not write_contrasts or not read_sharpnesses or not lengths:
        raise ValueError("the grid needs at least one decay scale, one write contrast, one read sharpness and one length")
    if not decays and any(s != 1 for s in decay_scales):
        raise ValueError("the model has no decay gate, so its decay scale changes nothing (--decay-scales 1)")
    if not gated and any(c != 1 for c in write_contrasts):
        raise ValueError("the model has no write gate, so its write contrast stays 1 (--write-contrasts 1)")
    cfg = model.lizard_config
    settings = [dict(zip(INFERENCE_KNOBS, values)) for values in product(decay_scales, write_contrasts, read_sharpnesses)]
    for knobs in settings:  # every setting checked by the config's own rules before any runs
        LizardConfig.from_dict({**cfg.to_dict(), **knobs})
    trained = {k: getattr(cfg, k) for k in INFERENCE_KNOBS}
    grid = []
    for knobs in settings:
        with at_knobs(model, **knobs):
            r = passkey_eval(model, tokenizer, lengths=lengths, **passkey)
        grid.append(knobs | _row(r["lengths"]))
    best = max(grid, key=_rank)
    refined = None
    if refine > 0 and (close := close_to(best, grid)):
        refined = {"trials": refine, "seed": passkey.get("seed", 0) + 1, "settings": [_knobs(best), *close]}
        for row in [row for row in grid if _knobs(row) in refined["settings"]]:
            with at_knobs(model, **_knobs(row)):
                r = passkey_eval(model, tokenizer, lengths=lengths, **{**passkey, "trials": refine, "seed": refined["seed"]})
            row.update(_pooled(row, _row(r["lengths"])))
        best = max(grid, key=_rank)
    choice = {k: best[k] for k in (*INFERENCE_KNOBS, "mean_acc", "mean_nll", "mean_acc_se")}
    return {"grid": grid, "best": choice | {"close": close_to(best, grid)},
            "lengths": [int(L) for L in lengths], "trained": trained,
            "passkey": {k: v for k, v in passkey.items() if k not in ("filler", "progress")}, "refined": refined}


def _knobs(row: dict[str, Any]) -> dict[str, float]:
    """A grid row's setting: its decay scale, write contrast and read sharpness."""
    return {k: row[k] for k in INFERENCE_KNOBS}


def _rank(row: dict[str, Any]) -> tuple[float, float, float]:
    """The choice's order: mean exact match, then the lower mean answer NLL, then the setting nearest the
    model as trained."""
    return (row["mean_acc"], -(math.inf if row["mean_nll"] is None else row["mean_nll"]),
            -sum(abs(math.log(row[k])) for k in INFERENCE_KNOBS))


def _row(lengths: list[dict]) -> dict[str, Any]:
    """One grid point from ``passkey_eval``'s per-length records. A length that did not run (skipped or
    failed) scores 0 and has no NLL, and then neither has the mean: a setting must run every length to win."""
    def per(key: str, missing: float | None) -> dict[str, float | None]:
        return {str(rec["length"]): rec[key] if rec.get("n") else missing for rec in lengths}

    return _scores(per("acc", 0.0), per("first_digit_acc", 0.0), per("answer_nll", None), per("n", 0))


def _pooled(first: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Two rounds of one setting as one: per length, the scores weighted by their trial counts (a round
    with no trials at a length adds nothing there)."""
    n = {L: first["n"][L] + more["n"][L] for L in first["n"]}

    def pool(key: str, missing: float | None) -> dict[str, float | None]:
        return {L: sum(r[key][L] * r["n"][L] for r in (first, more) if r["n"][L]) / n[L] if n[L] else missing
                for L in n}

    return _scores(pool("acc", 0.0), pool("first_digit_acc", 0.0), pool("answer_nll", None), n)


def _scores(acc: dict, first_digit: dict, nll: dict, n: dict) -> dict[str, Any]:
    """A setting's per-length scores and their means over the lengths (no mean NLL where a length has none)."""
    return {"acc": acc, "first_digit_acc": first_digit, "answer_nll": nll, "n": n,
            "mean_acc": sum(acc.values()) / len(acc), "mean_acc_se": mean_acc_se(acc, n),
            "mean_nll": None if None in nll.values() else sum(nll.values()) / len(nll)}


def mean_acc_se(acc: dict[str, float], n: dict[str, int]) -> float:
    """Standard error of the mean of the per-length exact matches ``acc`` over ``n`` trials each, every
    length a binomial proportion with two hits and two misses added (Agresti-Coull), so that a length
    scored perfectly on few trials keeps the uncertainty its trial count leaves."""
    var = 0.0
    for length, a in acc.items():
        adjusted = (a * n[length] + 2) / (n[length] + 4)
        var += adjusted * (1 - adjusted) / (n[length] + 4)
    return math.sqrt(var) / len(acc)


def close_to(best: dict[str, Any], grid: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """The knobs of the other settings whose mean exact match is within two standard errors of the
    difference from ``best``'s (the highest): ``m_best - m < 2 sqrt(se_best^2 + se^2)``."""
    return [_knobs(row) for row in grid if row is not best
            and best["mean_acc"] - row["mean_acc"] < 2 * math.hypot(best["mean_acc_se"], row["mean_acc_se"])]
