"""Where a Lizard model's memory goes: per-layer measurements of the linear branch on passkey prompts.

Every Lizard layer reports the exact inputs of its attention op (``LizardAttention.capture``): window
``w``, log-decays ``g`` (``G_t = sum_{r<=t} g_r``), features ``fq_t`` (with ``e^beta`` in the shared
form) and ``fk_j``. With ``a_tj = exp(G_t - G_j) fq_t . fk_j`` over the linear branch's tokens ``J_t``
(``j <= t - w`` in the shared form, ``j <= t`` in the sum form), ``Z_t = sum_{j in J_t} a_tj`` and
``N_t = sum_{j in J_t} a_tj v_j``, each layer gets (heads averaged):

(a) the **linear share** of its output per position bucket: ``Z_t / (1 + Z_t)`` in the shared form
    (``y = (o + N) / (1 + Z)``: the window's softmax mass is 1), ``|y_gla| / (|y_gla| + |alpha o|)``
    in the sum form (``y = y_gla + alpha o``, ``y_gla = N / (Z + eps)``; norms over the value axis);
(b) the **needle's weight** at the last prompt token ``t``: ``sum_{j in needle} a_tj / Z_t`` against
    the uniform ``|needle| / |J_t|``; also without the decay (``fq_t . fk_j`` alone: how sharply the
    feature maps single the needle out) and for the best head; trials whose needle has not yet left the
    window (shared form) are left out and counted;
(c) the **gate**: mean log-decay per token ``gbar``, half-life ``ln(1/2) / gbar`` tokens and the decay
    ``exp(n gbar)`` a token keeps after ``n`` steps (``n`` = 1K ... 32K); also the longest head's half-life;
(d) the needle's **write mass**: the mean ``|fk_j|_1`` of its tokens over that of the other tokens of
    ``J_t`` (what each token writes into the state and the normaliser; Hedgehog features give every
    token mass 2, so this is 1 unless a write gate, ``write_gate="head"``, learned to select);
(e) the **copy weight**: with the right answer appended (teacher forcing), at each query that
    predicts a digit of the key (the question's last token, then each answer token), the share of the
    linear weight on that digit's positions in the needle (``copy_weight``, best head
    ``best_head_copy_weight``), and that share over the whole needle's (``copy_in_needle``, against its
    uniform value ``copy_uniform_in_needle``): does the lookup single out the digit to copy next, or
    only the needle?

(a) and (b) use the torch ops (:func:`~lizardlm.ops.gla.gla_chunk`,
:func:`~lizardlm.ops.window.window_attention_chunk`) on the captured tensors, one forward per batch of
prompts from the passkey task's builder (:func:`~lizardlm.eval.passkey.make_prompt`).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Sequence

import torch

from lizardlm.eval._utils import call_logits, encode, model_device, skip_length
from lizardlm.eval.longppl import bucket_edges
from lizardlm.eval.passkey import NEEDLE, answer_batch, depth_grid, make_prompt
from lizardlm.ops.gla import gla_chunk
from lizardlm.ops.lizard import SUM_EPS, map_values
from lizardlm.ops.utils import expand_heads
from lizardlm.ops.window import window_attention_chunk
from lizardlm.progress import progress

RETAIN_STEPS = (1024, 2048, 4096, 8192, 16384, 32768)


def linear_branch(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, shift: int,
                  chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, Z)`` ``(B, H, T, V)``, ``(B, H, T)`` over ``J_t = {j <= t - shift}``.

    A plain gated linear attention run ``shift`` tokens behind: query ``t`` sits at ``s = t - shift``
    as ``fq_t exp(G_t - G_s)``, so ``sum_{j<=s} exp(G_s - G_j) (fq_t exp(G_t - G_s) . fk_j) v_j`` is
    the sum above; positions ``t < shift`` see no token (0).
    """
    B, H, T, _ = fq.shape
    dtype = torch.promote_types(fq.dtype, torch.float32)
    g = fq.new_zeros(B, H, T, dtype=dtype) if g is None else g.to(dtype)
    n = T - shift
    V = v.shape[-1]
    N = fq.new_zeros(B, H, T, V, dtype=dtype)
    Z = fq.new_zeros(B, H, T, dtype=dtype)
    if n <= 0:
        return N, Z
    G = g.cumsum(-1)
    q_in = fq[:, :, shift:].to(dtype) * torch.exp(G[..., shift:] - G[..., :n])[..., None]
    v_in = expand_heads(torch.cat([v.to(dtype), torch.ones_like(v[..., :1], dtype=dtype)], dim=-1), H)[:, :, :n]
    out, _ = gla_chunk(q_in, expand_heads(fk.to(dtype), H)[:, :, :n], v_in, g[..., :n], chunk_size=chunk_size)
    N[:, :, shift:], Z[:, :, shift:] = out[..., :V], out[..., V]
    return N, Z


def linear_share(inputs: dict[str, Any], shift: int) -> torch.Tensor:
    """Share ``(B, H, T)`` of each output that comes from the linear branch (module docstring, (a))."""
    v = map_values(inputs["v"], inputs.get("value_map"))
    N, Z = linear_branch(inputs["fq"], inputs["fk"], v, inputs["g"], shift)
    if inputs["combine"] == "shared":
        return Z / (1.0 + Z)
    o, _ = window_attention_chunk(inputs["q"], inputs["k"], inputs["v"], inputs["window"], inputs["scale"],
                                  inputs["meta_k"], inputs["meta_v"], meta_bias=inputs["meta_bias"])
    lin = (N / (Z[..., None] + SUM_EPS)).norm(dim=-1)
    win = (inputs["alpha"].to(lin.dtype).view(1, -1, 1, 1) * o.to(lin.dtype)).norm(dim=-1)
    return lin / (lin + win).clamp_min(torch.finfo(lin.dtype).tiny)


def _weights(fq: torch.Tensor, fk: torch.Tensor, g: torch.Tensor | None, t: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a_tj, fq_t . fk_j)`` ``(B, H, t - shift + 1)`` in float64: query ``t``'s linear-branch weights with
    and without the decay over the keys ``j <= t - shift``."""
    B, H = fq.shape[:2]
    last = t - shift + 1  # keys 0 .. t - shift
    f = expand_heads(fk[:, :, :last].double(), H)
    dots = torch.einsum("bhf,bhjf->bhj", fq[:, :, t].double(), f)
    G = (fq.new_zeros(B, H, t + 1, dtype=torch.float64) if g is None else g[..., : t + 1].double()).cumsum(-1)
    return dots * torch.exp(G[..., t : t + 1] - G[..., :last]), dots


def needle_weights(fq: torch.Tensor, fk: torch.Tensor, g: torch.Tensor | None, t: int, shift: int,
                   spans: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """At query ``t``, per row and head ``(B, H)``: the needle's weight ``sum_{j in span} a_tj / sum_{j <= t -
    shift} a_tj`` with (``weight``) and without (``weight_no_decay``) the decay; ``spans`` gives each
    row's needle ``[start, end)``, which must lie in ``J_t``."""
    decayed, dots = _weights(fq, fk, g, t, shift)
    mask = torch.zeros(fq.shape[0], 1, decayed.shape[-1], dtype=torch.float64, device=fq.device)
    for b, (start, end) in enumerate(spans):
        mask[b, 0, start:end] = 1.0
    return {"weight": (decayed * mask).sum(-1) / decayed.sum(-1), "weight_no_decay": (dots * mask).sum(-1) / dots.sum(-1)}


def copy_weights(fq: torch.Tensor, fk: torch.Tensor, g: torch.Tensor | None, shift: int,
                 steps: Sequence[tuple[int, Sequence[int]]], span: tuple[int, int]) -> dict[str, torch.Tensor]:
    """One row (batch 1) of a teacher-forced answer: for each ``(t, targets)`` of ``steps`` (query ``t``
    predicts the answer's next digit; ``targets``: that digit's positions in the needle ``span``), per
    step and head ``(steps, H)``: ``copy``, the targets' share of the linear weight ``sum_{j in targets}
    a_tj / sum_j a_tj``, and ``needle``, the whole needle's share (so ``copy / needle`` is how much of
    the needle's weight falls on the digit to copy next)."""
    copy, needle = [], []
    for t, targets in steps:
        decayed, _ = _weights(fq, fk, g, t, shift)
        total = decayed.sum(-1)[0]
        copy.append(decayed[0, :, list(targets)].sum(-1) / total)
        needle.append(decayed[0, :, span[0]:span[1]].sum(-1) / total)
    return {"copy": torch.stack(copy), "needle": torch.stack(needle)}


def answer_steps(prompt_len: int, answer_ids: Sequence[int], needle_ids: Sequence[int], needle_start: int,
                 is_digit) -> list[tuple[int, list[int]]]:
    """``(query position, target positions)`` for each digit token of a teacher-forced answer appended to
    a prompt of ``prompt_len`` tokens: the query is the token before the digit (the prompt's last token,
    then the answer's), the targets are that digit's positions in every copy of the key's digit tokens
    inside the needle (``needle_ids`` starting at ``needle_start``); empty if the needle does not hold them."""
    digits = [a for a, tok in enumerate(answer_ids) if is_digit(tok)]
    if not digits:
        return []
    key = list(answer_ids[digits[0] : digits[-1] + 1])
    starts = [i for i in range(len(needle_ids) - len(key) + 1) if list(needle_ids[i : i + len(key)]) == key]
    return [(prompt_len - 1 + a, [needle_start + i + a - digits[0] for i in starts]) for a in digits] if starts else []


def write_mass(fk: torch.Tensor, t: int, shift: int, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Per row ``(B,)``: mean ``|fk_j|_1`` over the needle ``spans[b]`` divided by its mean over the other
    keys ``j <= t - shift`` (heads averaged); the spans must lie in ``J_t``."""
    mass = fk[:, :, : t - shift + 1].double().abs().sum(-1).mean(1)  # (B, keys)
    mask = torch.zeros_like(mass, dtype=torch.bool)
    for b, (start, end) in enumerate(spans):
        mask[b, start:end] = True
    needle = (mass * mask).sum(-1) / mask.sum(-1)
    rest = (mass * ~mask).sum(-1) / (~mask).sum(-1).clamp_min(1)
    return needle / rest


def decay_stats(mean_log_gate: float, steps: Sequence[int] = RETAIN_STEPS) -> dict[str, Any]:
    """``{"half_life", "retained": {n: exp(n gbar)}}``; half-life None when nothing decays (``gbar = 0``)."""
    half = math.log(0.5) / mean_log_gate if mean_log_gate < 0 else None
    return {"half_life": half, "retained": {str(n): math.exp(n * mean_log_gate) for n in steps}}


class _Collector:
    """Capture callback: accumulates (a)-(e) per Lizard layer while the model runs."""

    def __init__(self, layers: list, edges: list[int], t: int) -> None:
        self.index = {id(layer): i for i, layer in enumerate(layers)}
        n = len(layers)
        self.edges = edges
        self.share = torch.zeros(n, len(edges) - 1, dtype=torch.float64)
        self.rows = 0
        self.needle: dict[str, list[list[float]]] = {
            k: [[] for _ in range(n)] for k in ("weight", "weight_no_decay", "best_head_weight", "uniform", "write_mass",
                                                "copy_weight", "best_head_copy_weight", "copy_in_needle", "copy_uniform_in_needle")
        }
        self.spans: list[tuple[int, int]] = []
        self.t = t  # the question's last token: where (b) and (d) are measured
        self.steps: list[list[tuple[int, list[int]]]] = []  # per row: the answer's copy steps, (e)
        self.gate_sum = [None] * n  # per head
        self.gate_count = 0

    def __call__(self, layer, inputs: dict[str, Any]) -> None:
        i = self.index[id(layer)]
        shift = inputs["window"] if inputs["combine"] == "shared" else 0
        share = linear_share(inputs, shift).double().mean(1).sum(0).cpu()  # (T,) summed over rows
        self.share[i] += torch.stack([share[lo:hi].mean() for lo, hi in zip(self.edges, self.edges[1:])])
        t = self.t
        rows = [b for b, (_, end) in enumerate(self.spans) if end - 1 <= t - shift]
        if rows:
            w = needle_weights(inputs["fq"][rows], inputs["fk"][rows], None if inputs["g"] is None else inputs["g"][rows],
                               t, shift, [self.spans[b] for b in rows])
            self.needle["weight"][i] += w["weight"].mean(1).tolist()
            self.needle["weight_no_decay"][i] += w["weight_no_decay"].mean(1).tolist()
            self.needle["best_head_weight"][i] += w["weight"].max(1).values.tolist()
            self.needle["uniform"][i] += [(self.spans[b][1] - self.spans[b][0]) / (t - shift + 1) for b in rows]
            self.needle["write_mass"][i] += write_mass(inputs["fk"][rows], t, shift, [self.spans[b] for b in rows]).tolist()
        for b in (b for b in rows if self.steps[b]):
            one = slice(b, b + 1)
            c = copy_weights(inputs["fq"][one], inputs["fk"][one], None if inputs["g"] is None else inputs["g"][one],
                             shift, self.steps[b], self.spans[b])
            self.needle["copy_weight"][i].append(c["copy"].mean().item())
            self.needle["best_head_copy_weight"][i].append(c["copy"].mean(0).max().item())
            self.needle["copy_in_needle"][i].append((c["copy"].mean() / c["needle"].mean()).item())
            targets = sum(len(tg) for _, tg in self.steps[b]) / len(self.steps[b])
            self.needle["copy_uniform_in_needle"][i].append(targets / (self.spans[b][1] - self.spans[b][0]))
        g = inputs["g"]
        heads = inputs["fq"].shape[1]
        gsum = torch.zeros(heads, dtype=torch.float64) if g is None else g.double().sum((0, 2)).cpu()
        self.gate_sum[i] = gsum if self.gate_sum[i] is None else self.gate_sum[i] + gsum

    def batch_done(self, rows: int, tokens: int) -> None:
        self.rows += rows
        self.gate_count += rows * tokens


def _lizard_layers(model: Any) -> list:
    from lizardlm.layers import LizardAttention

    return [m for m in model.modules() if isinstance(m, LizardAttention)]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def diagnostics_eval(
    model: Any,
    tokenizer: Any,
    lengths: Sequence[int] = (1024,),
    trials: int = 8,
    depths: int = 4,
    batch_size: int = 4,
    seed: int = 0,
    steps: Sequence[int] = RETAIN_STEPS,
    progress_bar: bool = True,
) -> dict:
    """Measurements (a)-(e) of the module docstring on ``trials`` passkey prompts per length (needle
    depths cycling through ``depth_grid(min(depths, trials))``, ``batch_size`` prompts per forward).

    ``{"status": "ok", "form", "window", "layers", "lengths": [{"length", "status", "n", "bucket_start",
    "bucket_end", "linear_share": [layer][bucket], "needle": {"trials", "weight", "weight_no_decay",
    "best_head_weight", "uniform", "write_mass", "copy_weight", "best_head_copy_weight", "copy_in_needle",
    "copy_uniform_in_needle": [layer]}}], "gate": {"mean_log_gate", "half_life",
    "longest_head_half_life", "retained": {n: [layer]}}}``; a model without Lizard layers is skipped.
    """
    layers = _lizard_layers(model)
    if not layers:
        return {"status": "skipped (not a Lizard model)"}

    def is_digit(token: int) -> bool:
        return any(c.isdigit() for c in tokenizer.decode([token]))

    cfg = layers[0].lizard
    rng = random.Random(seed)
    grid = depth_grid(min(depths, trials))
    device = model_device(model)
    gate_sum: list[torch.Tensor | None] = [None] * len(layers)
    gate_count = 0
    out_lengths = []
    bar = progress(total=len(lengths) * trials, enable=progress_bar, desc="diagnostics", unit="prompt")
    try:
        for L in lengths:
            rec: dict[str, Any] = {"length": int(L)}
            col = _Collector(layers, bucket_edges(int(L), cfg.window_size or 1), int(L) - 1)
            for layer in layers:
                layer.capture = col
            with skip_length(rec):
                for start in range(0, trials, batch_size):
                    n = min(batch_size, trials - start)
                    keys = [str(rng.randint(10_000, 99_999)) for _ in range(n)]
                    prompts = [make_prompt(tokenizer, L, grid[(start + b) % len(grid)], key=k) for b, k in enumerate(keys)]
                    col.spans = [(p.needle_start, p.needle_start + len(encode(tokenizer, NEEDLE.format(key=p.key))))
                                 for p in prompts]
                    col.steps = [answer_steps(L, p.answer_ids, p.input_ids[lo:hi], lo, is_digit)
                                 for p, (lo, hi) in zip(prompts, col.spans)]
                    answers = answer_batch(prompts)[:, :-1]  # the answer's last token queries nothing
                    ids = torch.cat([torch.tensor([p.input_ids for p in prompts]), answers], dim=1)
                    call_logits(model, ids.to(device), last_only=True)
                    col.batch_done(n, ids.shape[1])
                    bar.update(n)
                rec["status"] = "ok"
            if rec["status"] != "ok":
                out_lengths.append(rec)
                continue
            rec.update(
                n=col.rows, bucket_start=col.edges[:-1], bucket_end=col.edges[1:],
                linear_share=(col.share / col.rows).tolist(),
                needle={"trials": len(col.needle["weight"][0]),
                        **{k: [_mean(v) for v in per_layer] for k, per_layer in col.needle.items()}},
            )
            out_lengths.append(rec)
            for i, s in enumerate(col.gate_sum):
                gate_sum[i] = s if gate_sum[i] is None else gate_sum[i] + s
            gate_count += col.gate_count
    finally:
        for layer in layers:
            layer.capture = None
        bar.close()
    result: dict[str, Any] = {"status": "ok", "form": cfg.combine, "window": cfg.window_size,
                              "layers": [layer.layer_idx for layer in layers], "lengths": out_lengths}
    if gate_count:
        per_head = [s / gate_count for s in gate_sum]
        means = [float(h.mean()) for h in per_head]
        stats = [decay_stats(m, steps) for m in means]
        result["gate"] = {
            "mean_log_gate": means,
            "half_life": [s["half_life"] for s in stats],
            "longest_head_half_life": [decay_stats(float(h.max()), steps)["half_life"] for h in per_head],
            "retained": {str(n): [s["retained"][str(n)] for s in stats] for n in steps},
        }
    return result


def summary_metrics(r: dict) -> dict[str, float | None]:
    """Table numbers: layer means of the last bucket's linear share, of the needle lift (weight /
    uniform), of the needle's write mass and of the next digit's lift inside the needle (copy_in_needle /
    its uniform value) at the longest length measured, the gate half-life and the decay kept after 1K tokens."""
    metrics: dict[str, float | None] = {}
    ok = [rec for rec in r.get("lengths", []) if rec.get("status") == "ok"]
    if ok:
        rec = ok[-1]
        metrics[f"linear share @ {rec['length']} (last bucket)"] = _mean([row[-1] for row in rec["linear_share"]])
        n = rec["needle"]
        lifts = [w / u for w, u in zip(n["weight"], n["uniform"]) if w is not None]
        metrics[f"needle weight / uniform @ {rec['length']}"] = _mean(lifts)
        if "write_mass" in n:
            metrics[f"needle write mass / filler @ {rec['length']}"] = _mean([m for m in n["write_mass"] if m is not None])
        if "copy_in_needle" in n:
            lifts = [c / u for c, u in zip(n["copy_in_needle"], n["copy_uniform_in_needle"]) if c is not None]
            metrics[f"next digit's weight in the needle / uniform @ {rec['length']}"] = _mean(lifts)
    gate = r.get("gate")
    if gate:
        lives = [h for h in gate["half_life"] if h is not None]
        metrics["gate half-life (tokens)"] = _mean(lives) if len(lives) == len(gate["half_life"]) else None
        metrics["decay kept after 1K"] = _mean(gate["retained"].get("1024", []))
    return metrics


def plot_diagnostics(r: dict, path: str | Path, title: str) -> str:
    """Four panels over layers: linear share per position bucket, needle weight vs uniform, gate
    half-life (mean and longest head), decay kept after 1K-32K tokens."""
    import matplotlib.pyplot as plt

    from lizardlm.eval.report import _save

    layers = r["layers"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    ok = [rec for rec in r["lengths"] if rec.get("status") == "ok"]
    if ok:
        rec = ok[-1]
        for j, (s, e) in enumerate(zip(rec["bucket_start"], rec["bucket_end"])):
            ax.plot(layers, [row[j] for row in rec["linear_share"]], marker=".", label=f"pos {s}-{e}")
        ax.set_title(f"linear-branch share of the output ({rec['length']} tokens, {r['form']} form)")
        ax.legend(fontsize=7)
        ax2 = axes[0][1]
        n = rec["needle"]
        xs = [x for x, w in zip(layers, n["weight"]) if w is not None]
        for key, label in (("weight", "needle weight (mean head)"), ("best_head_weight", "best head"),
                           ("weight_no_decay", "feature maps alone (no decay)"), ("uniform", "uniform 1/t share")):
            ax2.plot(xs, [v for v in n[key] if v is not None], marker=".", label=label)
        ax2.set_yscale("log")
        ax2.set_title(f"needle's weight at the question ({n['trials']} trials)")
        ax2.legend(fontsize=7)
    ax.set_ylim(-0.02, 1.02)
    gate = r.get("gate")
    if gate:
        ax3, ax4 = axes[1]
        mean = [h if h is not None else float("nan") for h in gate["half_life"]]
        longest = [h if h is not None else float("nan") for h in gate["longest_head_half_life"]]
        ax3.bar([x - 0.2 for x in layers], mean, width=0.4, label="mean log-gate")
        ax3.bar([x + 0.2 for x in layers], longest, width=0.4, label="longest head")
        ax3.set_yscale("log")
        ax3.set_title("gate half-life (tokens)")
        ax3.legend(fontsize=7)
        for n_steps, kept in gate["retained"].items():
            ax4.plot(layers, [max(v, 1e-300) for v in kept], marker=".", label=f"after {int(n_steps) // 1024}K")
        ax4.set_yscale("log")
        ax4.set_title("decay a token keeps")
        ax4.legend(fontsize=7)
    for a in axes.flat:
        a.set_xlabel("layer")
        a.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    return _save(fig, Path(path))
