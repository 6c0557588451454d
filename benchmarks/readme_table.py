"""Print the README's results tables from the committed files under benchmarks/results/.

    python benchmarks/readme_table.py            # the README's results section (the headline files)
    python benchmarks/readme_table.py --all      # every file's table (docs/results.md)
    python benchmarks/readme_table.py --study    # the study section (between the README's study markers)
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from lizardlm.eval.tasks import REPORTED_METRIC, ZERO_SHOT as ZERO_SHOT_TASKS

RESULTS = Path(__file__).parent / "results"
STUDY_START = "<!-- study table: python benchmarks/readme_table.py --study; tests/test_readme.py checks it -->"
STUDY_END = "<!-- end of study table -->"
NO_STUDY = "No study result yet: `python benchmarks/study.py` on a GPU writes `benchmarks/results/study-<device>.json` (issue 17)."


def attention(path: Path) -> str:
    d = json.loads(path.read_text())
    c = d["config"]
    ms = {(r["op"], r["T"], r["mode"]): r["ms"] for r in d["runs"]}
    forms = c.get("forms", {"lizard": {"combine": "shared", "window": c["window"]}})
    failed = [key for key, v in d["correctness"].items() if not v["pass"]]
    passed = "pass" if not failed else f"FAIL, {len(failed)} of {len(d['correctness'])} checks ({'; '.join(failed)})"
    label = {"shared": "our form", "sum": "paper form"}
    cols = [f"{name} ({label[f['combine']]}, w{f['window']})" for name, f in forms.items()]
    rows = [
        f"Attention op, {d['device']} (`{path.name}`): {c['dtype']}, {c['heads']} heads, head dim {c['head_dim']}, "
        f"feature dim {c['feature_dim']}, {c['tokens_per_batch'] // 1024}K tokens per batch, {c['meta']} meta slots "
        f"(sink logits in the paper form); correctness of every form vs float64 in the same run: {passed}.",
        "",
        "| T | pass | SDPA flash (ms) | SDPA cuDNN (ms) | " + " | ".join(f"{x} (ms)" for x in cols)
        + " | " + " | ".join(f"cuDNN / {name}" for name in forms) + " |",
        "|---|---|---:|---:|" + "---:|" * (2 * len(forms)),
    ]
    fmt = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    for T in sorted({t for (_, t, _) in ms}):
        for mode in ("fwd", "fwd+bwd"):
            if not any((f, T, mode) in ms for f in forms):
                continue
            cu = ms.get(("sdpa-cudnn", T, mode))
            liz = [ms.get((f, T, mode)) for f in forms]
            ratios = ["–" if cu is None or x is None else f"{cu / x:.2f}x" for x in liz]
            rows.append(f"| {T // 1024}K | {mode} | {fmt(ms.get(('sdpa', T, mode)))} | {fmt(cu)} | "
                        + " | ".join(fmt(x) for x in liz) + " | " + " | ".join(ratios) + " |")
    return "\n".join(rows)


def scale(path: Path) -> str:
    d = json.loads(path.read_text())
    if any(r.get("stage1_graph_tok_per_s") for r in d["runs"]):
        return scale_graphed(path, d)
    rows = [
        f"Training steps at scale, {d['device']} (`{path.name}`): random-weight models of real shapes, "
        f"{d['dtype']}, LoRA rank {d['lora']['rank']} on {'/'.join(t[0] for t in d['lora']['targets'])}; teacher = "
        f"the same model's own LoRA step; {d['steps']} timed steps after {d['warmup']} warm-up; projected minutes "
        "of the 20M + 20M recipe at these rates.",
        "",
        "| shape | batch x seq | Lizard form | teacher LoRA tok/s | stage 1 tok/s | stage 2 tok/s | peak GiB | recipe min |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["runs"]:
        if "stage1_tok_per_s" not in r:
            rows.append(f"| {r['shape']} | {r['batch']} x {r['seq']} | {r['mode']} | {r.get('error', 'failed')} |||||")
            continue
        form = f"{r['mode']} (w{r['lizard']['window_size']})"
        rows.append(f"| {r['shape']} | {r['batch']} x {r['seq']} | {form} | {r['teacher_lora_tok_per_s'] / 1e3:.1f}K | "
                    f"{r['stage1_tok_per_s'] / 1e3:.1f}K | {r['stage2_tok_per_s'] / 1e3:.1f}K | {r['peak_gib']:.1f} | "
                    f"{r['recipe_minutes']:.0f} |")
    return "\n".join(rows)


def scale_graphed(path: Path, d: dict) -> str:
    """The scale table of a ``--cuda-graphs`` run: eager and graphed steps side by side, ratios to the
    teacher's eager LoRA step (what a user would otherwise run)."""
    k = lambda x: "–" if x is None else f"{x / 1e3:.1f}K"  # noqa: E731
    rows = [
        f"Eager and CUDA-graphed training steps, {d['device']} (`{path.name}`): random-weight models of real "
        f"shapes, {d['dtype']}, LoRA rank {d['lora']['rank']} on {'/'.join(t[0] for t in d['lora']['targets'])}, "
        f"{d['steps']} timed steps after {d['warmup']} warm-up, AdamW as each row says; x = graphed Lizard step over "
        "the teacher's eager LoRA step; minutes of the 20M + 20M recipe at the eager / graphed rates.",
        "",
        "| shape | batch x seq | form | AdamW | teacher LoRA eager / graphed | stage 1 eager / graphed | stage 2 eager / "
        "graphed | peak GiB | recipe min |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["runs"]:
        t = r["teacher_lora_tok_per_s"]
        cells = [f"{k(t)} / {k(r.get('teacher_lora_graph_tok_per_s'))}"]
        for stage in ("stage1", "stage2"):
            g = r.get(f"{stage}_graph_tok_per_s")
            cells.append(f"{k(r[f'{stage}_tok_per_s'])} / {k(g)}" + (f" ({g / t:.2f}x)" if g and t else ""))
        graphed_min = r.get("recipe_graph_minutes")
        rows.append(f"| {r['shape']} | {r['batch']} x {r['seq']} | {step_form(r)} | "
                    f"{r.get('adamw', 'foreach')} | " + " | ".join(cells) + f" | {r['peak_gib']:.1f} | "
                    f"{r['recipe_minutes']:.0f} / {'–' if graphed_min is None else f'{graphed_min:.0f}'} |")
    return "\n".join(rows)


def step_form(r: dict) -> str:
    """A scale row's Lizard form: mode and window, and for a ``--variant`` row its name, feature dim,
    write gate and the stage-2 settings that change a step's work."""
    z = r["lizard"]
    if "variant" not in r or r["variant"] == r["mode"]:
        return f"{r['mode']} (w{z['window_size']})"
    parts = [f"w{z['window_size']}", f"f{z['feature_dim']}"]
    parts += ["write gate"] * (z.get("write_gate") == "head")
    parts += ["Lizard params in stage 2"] * bool(r.get("stage2_train_lizard"))
    parts += [f"loss {r['loss_average']}"] * (r.get("loss_average", "tokens") != "tokens")
    return f"{r['variant']}: {r['mode']} ({', '.join(parts)})"


def stitch(path: Path) -> str:
    d = json.loads(path.read_text())
    ms = {(r["op"], r["T"], r["mode"]): r.get("ms") for r in d["runs"]}
    ops = ("sdpa-cudnn", "lizard", "fla-chunk_gla", "flex-window", "fla+flex")
    fmt = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    rows = [
        f"Off-the-shelf stitch, {d['device']} (`{path.name}`, fla {d['fla']}): fla `chunk_gla` for the gated "
        "linear branch plus a FlexAttention sliding window, each timed alone and summed (a lower bound: no "
        "shifted keys, meta slots or shared normaliser), beside SDPA cuDNN and the Lizard op in the same process.",
        "",
        "| T | pass | " + " | ".join(f"{o} (ms)" for o in ops) + " | stitch / Lizard |",
        "|---|---|" + "---:|" * (len(ops) + 1),
    ]
    for T in sorted({t for (_, t, _) in ms}):
        for mode in ("fwd", "fwd+bwd"):
            if ms.get(("lizard", T, mode)) is None:
                continue
            st, liz = ms.get(("fla+flex", T, mode)), ms[("lizard", T, mode)]
            rows.append(f"| {T // 1024}K | {mode} | " + " | ".join(fmt(ms.get((o, T, mode))) for o in ops)
                        + f" | {'–' if st is None else f'{st / liz:.1f}x'} |")
    return "\n".join(rows)


def linearize(path: Path) -> str:
    d = json.loads(path.read_text())
    modes = {m: e for m, e in d["modes"].items() if "eval" in e}
    first = next(iter(modes.values()))["eval"]["tasks"]

    def metric(mode: str, task: str, key: str, teacher: bool = False) -> float | None:
        cols = modes[mode]["eval"]["tasks"][task]
        col = cols.get("teacher") if teacher else cols.get("student", cols.get("model"))
        return None if col is None or col.get("status") != "ok" else col["metrics"].get(key)

    lead = next(iter(modes))
    header = ["teacher"] + list(modes)
    rows = [
        f"Linearization of the embedded teacher {d['teacher']}, {d['device']} (`{path.name}`): preset {d['preset']}, "
        f"{d['stage1_tokens'] / 2**20:.0f}M + {d['stage2_tokens'] / 2**20:.0f}M tokens (stage 1 + stage 2) of {d['data']}.",
        "",
        "| metric | " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(header),
    ]
    keys = [("wikitext2", "ppl", "WikiText-2 test perplexity (1024-token windows)")]
    keys += [("mqar", k, f"MQAR {k}") for k in first["mqar"]["teacher"]["metrics"]]
    keys += [("passkey", k, f"passkey {k}") for k in first["passkey"]["teacher"]["metrics"]]
    for task, key, label in keys:
        ref = metric(lead, task, key, teacher=True)
        cells = ["–" if ref is None else (f"{ref:.2f}" if task == "wikitext2" else f"{ref:.3f}")]
        for m in modes:
            v = metric(m, task, key)
            if v is None:
                cells.append("–")
            elif task == "wikitext2":
                cells.append(f"{v:.2f}")
            else:  # accuracy, with its recovery of the teacher's
                cells.append(f"{v:.3f} ({100 * v / ref:.0f}%)" if ref else f"{v:.3f}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    s = {m: e["summary"] for m, e in modes.items()}
    rows.append("| held-out val perplexity (training distribution) | "
                + f"{s[lead]['teacher_val_ppl']:.2f} | " + " | ".join(f"{s[m]['student_val_ppl']:.2f}" for m in modes) + " |")
    rows.append("| wall time stage 1 + stage 2 (s) | – | "
                + " | ".join(f"{s[m]['stage1_seconds']:.0f} + {s[m]['stage2_seconds']:.0f}" for m in modes) + " |")
    budget = f"--stage1-tokens {d['stage1_tokens']} --stage2-tokens {d['stage2_tokens']}"
    runs = [f"`{m}` = `lizardlm linearize --preset {d['preset']} {budget} {e.get('flags') or '--mode ' + m} --out runs/{m}`"
            for m, e in modes.items()]
    rows += ["", "Accuracy cells show (recovery % of the teacher). Runs: " + "; ".join(runs) + "; each then "
             f"`lizardlm eval --model runs/NAME --teacher smollm2-135m --tasks {d['eval_tasks']} --device cuda "
             "--passkey-lengths 1024,2048,4096,8192,16384 --passkey-trials 5`."]
    return "\n".join(rows)


DECODE_LABELS = {"teacher": "teacher", "lizard": "Lizard", "lizard-paper": "Lizard (paper form)"}


def decode(path: Path) -> str:
    d = json.loads(path.read_text())
    by = {name: {r["context"]: r for r in rows} for name, rows in d["results"].items()}
    names = list(by)
    label = lambda name: DECODE_LABELS.get(name, name)  # noqa: E731
    contexts = sorted({c for rows in by.values() for c in rows})
    busy = any("gpu_busy_ms_per_token" in r for rows in by.values() for r in rows.values())
    cols = ["ms/token", "GPU-busy ms/token", "cache (MiB)"] if busy else ["ms/token", "cache (MiB)"]
    graphed = [n for n in names if n != "teacher" and any("cuda_graph_ms_per_token" in r for r in by[n].values())]
    rows = [
        f"Decoding one token after a long context, {d['device']} (`{path.name}`): {d['model']}, {d['dtype']}; "
        "median of the timed steps"
        + ("; the teacher's cache is filled with random keys/values (same cost per step as a real prefix), "
           "Lizard's by prefilling the context" if d.get("teacher_fill") == "random" else "")
        + ("; GPU-busy = CUDA kernel time per step (torch profiler)" if busy else "")
        + ("; Lizard CUDA graph = the whole step replayed as one graph (`lizardlm.graph_decode`)" if graphed else "") + ".",
        "",
        "| context | " + " | ".join(f"{label(who)} {c}" for who in names for c in cols)
        + "".join(f" | {label(n)} CUDA graph ms/token" for n in graphed) + " |",
        "|---:|" + "---:|" * (len(names) * len(cols) + len(graphed)),
    ]
    for c in contexts:
        cells = []
        for name in names:
            r = by[name].get(c, {})
            if r.get("status") != "ok":
                cells += [r.get("status", "–")] + ["–"] * (len(cols) - 1)
                continue
            cells.append(f"{r['ms_per_token']:.1f}")
            if busy:
                cells.append(f"{r['gpu_busy_ms_per_token']:.2f}")
            cells.append(f"{r['cache_mib']:.1f}")
        for name in graphed:
            r = by[name].get(c, {})
            cells.append(f"{r['cuda_graph_ms_per_token']:.2f}" if "cuda_graph_ms_per_token" in r else "–")
        rows.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def prefill(path: Path) -> str:
    """``prefill.py``: chunked-prefill tokens/s per model and backend by prompt length, Triton over torch."""
    d = json.loads(path.read_text())
    c = d["config"]
    rate = {(r["model"], r["backend"], r["length"]): r.get("tok_per_s") for r in d["runs"]}
    lengths = sorted({r["length"] for r in d["runs"]})
    keys = list(dict.fromkeys((r["model"], r["backend"]) for r in d["runs"]))
    lizards = list(dict.fromkeys(m for m, b in keys if b == "triton"))
    diff = {(a["model"], a["length"]): a for a in d["agreement"]}
    k = lambda x: "–" if x is None else f"{x / 1e3:.1f}K"  # noqa: E731
    rows = [
        f"Chunked prefill, {d['device']} (`{path.name}`): {c['model']}, {d['dtype']}, batch {c['batch']}, "
        f"{c['chunk']} tokens a chunk through the cache (what the long-context evaluations do); tokens/s; "
        "Lizard on the torch op continuing its state (before) and on the Triton kernels continuing it "
        "(`state_as_prefix`); max |diff| = the two backends' largest last-position logit difference "
        "(of the largest logit's size).",
        "",
        "| " + " | ".join(["length", *(f"{m} {b}" for m, b in keys),
                           *(f"{m} {x}" for m in lizards for x in ("triton / torch", "max abs diff"))]) + " |",
        "|---:|" + "---:|" * (len(keys) + 2 * len(lizards)),
    ]
    for L in lengths:
        cells = [k(rate.get((m, b, L))) for m, b in keys]
        for m in lizards:
            t, p = rate.get((m, "triton", L)), rate.get((m, "torch", L))
            a = diff.get((m, L))
            cells += ["–" if not (t and p) else f"{t / p:.1f}x",
                      "–" if a is None else f"{a['max_abs_diff']:.3f} (of {a['logit_scale']:.1f})"]
        rows.append(f"| {L} | " + " | ".join(cells) + " |")
    rows += [f"\n{r['model']} {r['backend']} at {r['length']}: {r['status']}" for r in d["runs"] if "status" in r]
    return "\n".join(rows)


def serve(path: Path) -> str:
    """``serve.py``: new tokens/s generating a set of prompts in left-padded batches, per model and decoding."""
    d = json.loads(path.read_text())
    c = d["config"]
    keys = list(dict.fromkeys((r["model"], r["decode"]) for r in d["runs"]))
    by = {(r["model"], r["decode"], r["batch"]): r for r in d["runs"]}
    cell = lambda r: r.get("status", "–") if "tok_per_s" not in r else (  # noqa: E731
        f"{r['tok_per_s']:.0f}" + (f" ({r['peak_gib']:.1f} GiB)" if "peak_gib" in r else ""))
    rows = [
        f"Batch generation, {d['device']} (`{path.name}`): {c['model']}, {d['dtype']}; {c['prompts']} prompts of "
        f"{c['min_len']}-{c['max_len']} tokens, {c['new_tokens']} new tokens each, greedy, in left-padded batches "
        "(longest first); new tokens/s over the whole set (peak GPU memory); "
        + (("the teacher with Hugging Face `generate` and its KV cache: eager (a dynamic cache) and static (a "
            "`StaticCache`" + (", whose decoding step `generate` compiles into CUDA graphs" if d["device"] != "cpu" else "")
            + ")") if ("teacher", "static") in keys else
           "the teacher with its KV cache (eager Hugging Face `generate`, no CUDA graphs)")
        + ", Lizard "
        "with Hugging Face `generate` (eager) and with each step replayed as a CUDA graph"
        + (f"; eager and graphed Lizard give {d['agree']:.0%} of the completions alike" if d.get("agree") is not None else "")
        + (f"; the teacher's two caches give {d['agree_teacher']:.0%} alike" if d.get("agree_teacher") is not None else "")
        + "." + (f" Note: {d['note']}." if d.get("note") else ""),
        "",
        "| batch | " + " | ".join(f"{m} {dec}" for m, dec in keys) + " |",
        "|---:|" + "---:|" * len(keys),
    ]
    for b in sorted({r["batch"] for r in d["runs"]}):
        rows.append(f"| {b} | " + " | ".join(cell(by.get((m, dec, b), {})) for m, dec in keys) + " |")
    return "\n".join(rows)


BENCHMARK_NAMES = {"piqa": "PIQA", "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "hellaswag": "HellaSwag",
                   "winogrande": "WinoGrande", "mmlu": "MMLU 5-shot"}
PRESET_METRICS = tuple((task, metric, f"{BENCHMARK_NAMES[task]} {metric}") for task, metric in REPORTED_METRIC.items())
"""(benchmark, the metric it is reported by, the caption's label)."""
ZERO_SHOT = {task: label for task, _, label in PRESET_METRICS if task in ZERO_SHOT_TASKS}
"""The five zero-shot benchmarks (MMLU is 5-shot) and how a caption names them."""


def preset_runs(path: Path) -> str:
    """Runs of ``linearize_gpu.py`` whose evaluations ran as task groups (e.g. ``--preset paper``)."""
    d = json.loads(path.read_text())
    runs = {name: e for name, e in d["modes"].items() if e.get("status") == "done"}
    scores: dict[str, dict] = {}
    for name, e in runs.items():
        for group in e["eval"]["groups"]:
            for task, by_model in group["tasks"].items():
                scores.setdefault(name, {})[task] = next(iter(by_model.values()))
    names = ["teacher"] + [n for n in runs if n != "teacher"]
    flags = {n: runs[n]["flags"] for n in names if n != "teacher"}
    rows = [
        f"Linearization of the embedded teacher, {d['device']} (`{path.name}`): `lizardlm linearize --preset "
        f"{d['preset']}` ({d['data']} data) at {d['stage1_tokens'] / 2**20:.0f}M + {d['stage2_tokens'] / 2**20:.0f}M "
        "tokens (stage 1 + stage 2); runs: " + ", ".join(f"`{n}` = `{f}`" for n, f in flags.items())
        + "; evaluated with `lizardlm eval` on the full local splits, bf16. Scores in %, stderr in brackets; "
        "(recovery vs teacher).",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    val = {n: runs[n]["summary"] for n in names if n != "teacher"}
    teacher_ppl = next(iter(val.values()))["teacher_val_ppl"] if val else None
    rows.append("| held-out Alpaca val perplexity | " + " | ".join(
        f"{teacher_ppl:.2f}" if n == "teacher" else f"{val[n]['student_val_ppl']:.2f}" for n in names) + " |")
    for task, metric, label in PRESET_METRICS:
        cells = []
        for n in names:
            r = scores.get(n, {}).get(task, {})
            if r.get("status") != "ok":
                cells.append(r.get("status", "–"))
                continue
            x, se = 100 * r["metrics"][metric], 100 * r["metrics"].get(f"{metric}_stderr", 0.0)
            t = scores["teacher"].get(task, {}).get("metrics", {}).get(metric)
            rec = f" ({x / (100 * t):.0%})" if n != "teacher" and t else ""
            cells.append(f"{x:.1f} ({se:.1f}){rec}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    lengths = sorted({int(k.split("@")[1]) for n in names for k in scores.get(n, {}).get("passkey", {}).get("metrics", {})})
    for L in lengths:
        cells = [f"{scores[n]['passkey']['metrics'].get(f'acc @ {L}', float('nan')):.2f}" for n in names]
        rows.append(f"| passkey acc @ {L} ({scores[names[0]]['passkey']['details']['lengths'][0]['n']} trials) | "
                    + " | ".join(cells) + " |")
    rows.append("| stage 1 + stage 2 minutes | – | " + " | ".join(
        f"{(val[n]['stage1_seconds'] + val[n]['stage2_seconds']) / 60:.1f}" for n in names if n != "teacher") + " |")
    return "\n".join(rows)


STUDY_TASKS = {"piqa": "PIQA", "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "hellaswag": "HellaSwag",
               "winogrande": "WinoGrande", "mmlu": "MMLU"}


def _study_table(rows: dict[str, dict], disc: list[str], teacher_val_ppl: float | None) -> list[str]:
    """One study table: scores in % (stderr), mean* of the discriminative tasks and its recovery %
    against the ``teacher`` and ``teacher-lora`` rows of ``rows``."""

    def mean(r: dict) -> float | None:
        return sum(r[t] for t in disc) / len(disc) if disc and all(t in r for t in disc) else None

    refs = [mean(rows[n]) if n in rows else None for n in ("teacher", "teacher-lora")]
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}"  # noqa: E731
    tasks = [f"{label}{'*' if t in disc else ''}" for t, label in STUDY_TASKS.items()]
    out = ["| row | " + " | ".join(tasks) + " | mean* | vs teacher | vs teacher-lora | passkey | MQAR | long ppl "
           "| val ppl | KV @ 32K (MiB) | tokens (M) | train min |",
           "|---|" + "---:|" * (len(tasks) + 10)]
    for name, r in rows.items():
        m = mean(r)
        rec = ["–" if m is None or not ref else f"{100 * m / ref:.0f}%" for ref in refs]
        val_ppl = r.get("val_ppl", teacher_val_ppl if name == "teacher" else None)
        cells = [f"{pct(r.get(t))} ({pct(r['stderr'].get(t))})" if t in r else "–" for t in STUDY_TASKS]
        cells += [pct(m), *rec, pct(r.get("passkey")), pct(r.get("mqar")),
                  f"{r['longppl']:.2f}" if "longppl" in r else "–", "–" if val_ppl is None else f"{val_ppl:.2f}",
                  f"{r['kv_cache_bytes_32k'] / 2**20:.1f}", f"{r['tokens'] / 2**20:.1f}" if "tokens" in r else "–",
                  f"{r['train_seconds'] / 60:.1f}" if "train_seconds" in r else "–"]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def study(path: Path) -> str:
    """The study tables (``benchmarks/study.py``): the rows scored on the whole zero-shot sets (their
    ``full`` scores), then the other rows (the grid) on the ``--limit`` subsets beside the reference
    rows on the same subsets; one table when no row has whole-set scores."""
    d = json.loads(path.read_text())
    b, disc = d["budget"], d["discriminative"]
    rows = {n: r for n, r in d["rows"].items() if r.get("status") == "done"}
    teacher_val_ppl = next((r["teacher_val_ppl"] for r in rows.values() if "teacher_val_ppl" in r), None)
    whole = {n: {**r, **r["full"], "stderr": {**r["stderr"], **r["full"]["stderr"]}} for n, r in rows.items() if "full" in r}
    subset = {n: r for n, r in rows.items() if "full" not in r}
    if whole and subset:
        subset = {**{n: rows[n] for n in ("teacher", "teacher-lora") if n in rows}, **subset}
    limit = f"the first {b['limit']} documents of each task" if b["limit"] else "the whole sets"
    mmlu = f"MMLU 5-shot on {b['mmlu_limit']} questions per subject" if b.get("mmlu_limit") else "MMLU 5-shot, all"
    out = [
        f"Benchmark study, {d['device']} (`{path.name}`): teacher {b['teacher']}, `lizardlm linearize --preset "
        f"{b['preset']} --seed {b['seed']}`, {b['stage1_tokens'] / 2**20:g}M + {b['stage2_tokens'] / 2**20:g}M tokens "
        f"(stage 1 + stage 2; `grid-*` rows {b['grid_stage1_tokens'] / 2**20:g}M + {b['grid_stage2_tokens'] / 2**20:g}M), "
        "each row's flags below. Scores in % (stderr); * = discriminative (the "
        "teacher above chance by more than 3 stderr); mean* = their mean, recovered against `teacher` and "
        f"`teacher-lora`; passkey = mean accuracy over {b['passkey_lengths']} tokens; long ppl = perplexity of "
        f"{b['longppl_len']}-token held-out books; val ppl = the run's validation perplexity (its training data); "
        f"KV = one sequence's generation cache at {d['kv_context'] // 1024}K tokens (bf16).",
        ""]
    if whole:
        sizes = ", ".join(f"{STUDY_TASKS[t]} {n}" for t, n in next(iter(whole.values())).get("n", {}).items())
        out += [f"Zero-shot tasks on the whole sets{f' ({sizes} documents)' if sizes else ''}, {mmlu}:", "",
                *_study_table(whole, disc, teacher_val_ppl), ""]
    if subset:
        if whole:
            out += [f"Rows without whole-set scores (every task on {limit}, {mmlu}), beside the reference rows "
                    "on the same subsets:", ""]
        else:
            out[0] += f" Eval: {limit}, {mmlu}."
        out += [*_study_table(subset, disc, teacher_val_ppl), ""]
    no_stage1 = lambda r: r.get("stage1_tokens") == 0 and "--baseline" not in r["flags"]  # noqa: E731
    out += ["Rows: " + "; ".join(f"`{n}` = `{r['flags'] or '(the teacher as it is)'}"
                                 f"{' --stage1-tokens 0' if no_stage1(r) else ''}`"
                                 + (f" (softmax layers {r['softmax_layers']})" if n.startswith("hybrid") else "")
                                 for n, r in rows.items()) + "."]
    return "\n".join(out)


def study_tables() -> str:
    """Every study JSON's table, or the placeholder when there is none."""
    return "\n\n".join(study(p) for p in sorted(RESULTS.glob("study-*.json"))) or NO_STUDY


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate of ``hits`` in ``n`` trials (95% at ``z = 1.96``)."""
    p, spread = hits / n, z * z / n
    centre, half = (p + spread / 2) / (1 + spread), z * math.sqrt(p * (1 - p) / n + spread / (4 * n)) / (1 + spread)
    return centre - half, centre + half


def kib(n: int) -> str:
    """A token count as the tables write it: ``4096`` -> ``"4K"``, ``512`` -> ``"512"``."""
    return f"{n // 1024}K" if n >= 1024 else str(n)


def passkey_results(folder: Path | None = None) -> list[tuple[Path, dict]]:
    """Every passkey result file of ``folder`` (default :data:`RESULTS`), read: ``(path, contents)`` by name."""
    return [(p, json.loads(p.read_text())) for p in sorted((folder or RESULTS).glob("passkey-*.json"))]


def longppl_runs(path: Path) -> tuple[dict, list[tuple[str, str, list[float]]]]:
    """The fixed-context reference curve of ``path`` (``lizardlm eval --tasks longppl --longppl-context N``)
    and every committed passkey run's long-ppl curve on the same buckets: ``(name, file stem, ppl)``, a run
    copied into several files (the teacher, baselines) once."""
    d = json.loads(path.read_text())
    (model, entry), = d["tasks"]["longppl"].items()
    ref = {**entry["curve"], "device": d["meta"]["device"].get("cuda_device") or "cpu",
           "model": d["models"][model]["name_or_path"].rstrip("/").split("/")[-1]}
    runs, seen = [], set()
    for other, contents in passkey_results():
        for name, curve in contents.get("longppl", {}).items():
            if "@" in name or curve.get("bucket_start") != ref["bucket_start"] or (name, tuple(curve["ppl"])) in seen:
                continue
            seen.add((name, tuple(curve["ppl"])))
            runs.append((name, other.stem.removeprefix("passkey-"), curve["ppl"]))
    return ref, runs


def longppl_reference(path: Path) -> str:
    """The fixed-context reference curve and every committed passkey run's long perplexity beside it, by
    position bucket: ppl, and past the reference's context how far above it (the same books, so the
    books' own difficulty by position cancels)."""
    ref, runs = longppl_runs(path)
    starts, ends = ref["bucket_start"], ref["bucket_end"]
    rows = [
        f"Long-document perplexity against a fixed-context reference (`{path.name}`, {ref['device']}): "
        f"{ref['model']} reading the same {ref['windows']} held-out {kib(ref['seq_len'])}-token book windows with "
        f"at most {ref['context']} tokens before each position (sliding windows), so a bucket's reference moves "
        "only with how hard that stretch of text is. Each run of the passkey result files beside it (their "
        "device in the file name); in brackets, beyond the reference's context, the run's perplexity over the "
        "reference's.",
        "",
        "| run (file) | " + " | ".join(f"{kib(a)}-{kib(b)}" for a, b in zip(starts, ends)) + " |",
        "|---|" + "---:|" * len(starts),
        f"| reference: teacher, {ref['context']}-token context | " + " | ".join(f"{p:.1f}" for p in ref["ppl"]) + " |",
    ]
    for name, stem, ppl in runs:
        cells = [f"{p:.1f}" + (f" ({p / r - 1:+.0%})" if a >= ref["context"] else "")
                 for a, p, r in zip(starts, ppl, ref["ppl"])]
        rows.append(f"| {name} (`{stem}`) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def longppl_folder_curves(folder: Path) -> tuple[dict[str, dict], dict[str, dict], str]:
    """A folder of ``lizardlm eval --tasks longppl`` results (``<label>-eval.json``, one device, one text):
    each label's curve and model record, the teacher's (``teacher-eval.json``) first, then the fixed-context
    references (``--longppl-context``) by context, then the others by name (numbers in it by value), and the device."""
    evals = {f.name.removesuffix("-eval.json"): json.loads(f.read_text()) for f in sorted(folder.glob("*-eval.json"))}
    curves = {label: next(iter(d["tasks"]["longppl"].values()))["curve"] for label, d in evals.items()}
    by_name = lambda label: [float(part) if i % 2 else part  # noqa: E731
                             for i, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", label))]
    order = sorted(evals, key=lambda label: (label != "teacher", not curves[label].get("context"),
                                             curves[label].get("context") or 0, by_name(label)))
    curves = {label: curves[label] for label in order}
    models = {label: next(iter(evals[label]["models"].values())) for label in order}
    return curves, models, next(iter(evals.values()))["meta"]["device"].get("cuda_device") or "CPU"


def longppl_folder(folder: Path) -> str:
    """A folder of ``lizardlm eval --tasks longppl`` results (:func:`longppl_folder_curves`; the held-out books
    or what ``--longppl-data`` named): perplexity by position bucket per file, and the ratio to the teacher's
    file beside each other's."""
    curves, models, device = longppl_folder_curves(folder)
    teacher = curves.get("teacher")
    first = teacher or next(iter(curves.values()))
    starts, ends = first["bucket_start"], first["bucket_end"]
    books = "long-docs@eval"  # lizardlm.eval.report.LONGPPL_BOOKS: what a curve without "data" read
    data = first.get("data", books)
    command = "lizardlm eval --tasks longppl" + ("" if data == books else f" --longppl-data {data}")
    out = [f"Long-document perplexity on `{data}`, {device} (`{folder.name}`, `{command}`): {first['windows']} windows of "
           f"{kib(first['seq_len'])} tokens, perplexity of each position bucket; in brackets a student's over the "
           "teacher's; knobs: the decay scale / write contrast / read sharpness evaluated at (and the softmax window, "
           "where the evaluation recorded it), or the context of a fixed-context reference (`--longppl-context`: each "
           "position predicted from at most that many tokens).", "",
           "| model | knobs | " + " | ".join(f"{kib(a)}-{kib(b)}" for a, b in zip(starts, ends)) + " |",
           "|---|---|" + "---:|" * len(starts)]
    for label, curve in curves.items():
        if curve.get("context"):
            knobs = f"context {kib(curve['context'])}"
        elif KNOBS[0][0] in models[label]:  # a Lizard model's, with its window where the evaluation recorded it
            knobs = " / ".join(f"{models[label].get(key, 1.0):g}" for key, *_ in KNOBS)
            knobs += f", window {kib(models[label]['window_size'])}" if models[label].get("window_size") else ""
        else:
            knobs = "–"
        cells = [f"{p:.1f}" + (f" ({p / t - 1:+.0%})" if teacher and label != "teacher" else "")
                 for p, t in zip(curve["ppl"], teacher["ppl"] if teacher else curve["ppl"])]
        out.append(f"| {label} | {knobs} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def passkey(path: Path, compact: bool = False) -> str:
    """Long-context retrieval (``benchmarks/passkey_gpu.py``): passkey accuracy by length (the
    evaluation template, then the training template where it ran), the RULER mean by length and the
    long-document perplexity of the last position bucket, one row per run. ``compact``: the evaluation
    template's passkey, MQAR, the zero-shot mean and long ppl only (the README's table)."""
    d = json.loads(path.read_text())
    # a run with numbers of any task shown: one with only zero-shot numbers is a baseline of the zero-shot column (e.g.
    # the recipe without retrieval), one with only MQAR a step of its recipe
    names = ["teacher"] * ("teacher" in d["passkey"]) + [
        n for n in d["runs"] if any(n in d.get(task, {}) for task in (*LONG_TASKS, "benchmarks"))]
    pk_lengths = sorted({int(k) for n in names if isinstance(d["passkey"].get(n), dict) for k in d["passkey"][n]})
    trained = d.get("passkey_train", {})
    tr_lengths = sorted({int(k) for n in names if isinstance(trained.get(n), dict) for k in trained[n]})
    first = d.get("passkey_train_first_digit", {})
    fd_lengths = sorted({int(k) for n in names if isinstance(first.get(n), dict) for k in first[n]})
    nll = d.get("passkey_train_answer_nll", {})
    nll_lengths = sorted({int(k) for n in names if isinstance(nll.get(n), dict) for k in nll[n]})
    ru_lengths = sorted({int(k) for n in names if isinstance(d.get("ruler", {}).get(n), dict) for k in d["ruler"][n]})
    mqar = d.get("mqar", {})
    mq_lengths = sorted({int(k) for n in names if isinstance(mqar.get(n), dict) for k in mqar[n]})

    def per_run(value) -> tuple[dict[str, dict[str, object]], bool]:
        """A one-cell column section of ``value(run record)`` per run, and whether the runs differ in it."""
        section = {n: {"0": value(d["runs"][n])} for n in names if n in d["runs"]}
        return section, len({v["0"] for v in section.values()}) > 1

    keys_section, keys_vary = per_run(lambda r: r.get("passkey_keys", 5))
    keys_vary = keys_vary and bool(tr_lengths)
    seq_section, seq_vary = per_run(lambda r: r["seq_len"])
    trials_section = {n: {"0": d["runs"][n]["passkey_trials"]} for n in names
                      if n in d["runs"] and isinstance(d["passkey"].get(n), dict)}
    trials = sorted({v["0"] for v in trials_section.values()}) or [
        d["runs"][n]["passkey_trials"] for n in names if n in d["runs"]][:1]

    known = {n: r for other, contents in passkey_results(path.parent) if other != path
             for n, r in contents.get("runs", {}).items()} | d["runs"]

    def budget(r: dict) -> str:
        """Stage 1 + stage 2 tokens; a run started from another (``--init-from .../NAME``) adds its stage-2
        tokens to that run's: ``1M + 12M + 4M`` where this file or another passkey result file beside it
        (a run trained on another device) holds NAME, else ``NAME + 4M``; a soup (``lizardlm soup``) the
        budgets of its runs."""
        if r["data"].startswith("soup:"):
            parts = [name for name, _ in soup_parts(r)]
            return "soup of " + ", ".join(budget(known[p]) if p in known else p for p in parts)
        base = started_from(r)
        if base:
            return f"{budget(known[base]) if base in known else base} + {r['stage2_tokens'] / 2**20:g}M"
        return f"{r['stage1_tokens'] / 2**20:g}M + {r['stage2_tokens'] / 2**20:g}M"

    budget_section, budget_vary = per_run(budget)
    zero_shot = [t for t in ZERO_SHOT if any(t in v for v in d.get("benchmarks", {}).values())]
    zs_section = {n: {"0": mean} for n, v in d.get("benchmarks", {}).items()
                  if zero_shot and (mean := zero_shot_mean(v, zero_shot)) is not None}
    columns = ([(budget_section, 0, "tokens (stage 1 + 2)", None)] * budget_vary
               + [(seq_section, 0, "train seq len", 0)] * seq_vary
               + [(trials_section, 0, "passkey trials", 0)] * (len(trials) > 1)
               + [(d["passkey"], L, f"passkey @ {kib(L)}", 2) for L in pk_lengths]
               + [(keys_section, 0, "train-template keys", 0)] * keys_vary
               + [(trained, L, f"train-template @ {kib(L)}", 2) for L in tr_lengths]
               + [(first, L, f"train-template first digit @ {kib(L)}", 2) for L in fd_lengths]
               + [(nll, L, f"train-template answer NLL @ {kib(L)}", 2) for L in nll_lengths]
               + [(d.get("ruler", {}), L, f"RULER @ {kib(L)}", 2) for L in ru_lengths]
               + [(mqar, L, f"MQAR @ {L}", 2) for L in mq_lengths]
               + [(zs_section, 0, f"zero-shot mean of {len(zero_shot)} (%)", 2)] * bool(zero_shot))
    """(section, length, title, decimals) per column; decimals None: the value as text."""
    if compact:
        columns = [c for c in columns if not c[2].startswith(("train-template", "RULER"))]

    def cell(value, digits: int | None) -> str:
        if digits is None and value is not None:
            return str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{value:.{digits}f}"
        return "OOM" if "memory" in str(value) else "–"

    def last_ppl(curve) -> str:
        if not isinstance(curve, dict) or not curve.get("ppl"):
            return "–"
        return f"{curve['ppl'][-1]:.2f} @ {kib(curve['bucket_start'][-1])}-{kib(curve['bucket_end'][-1])}"

    run0 = d["runs"][next(n for n in names if n in d["runs"])]
    out = [
        f"Long-context retrieval, {d['device']} (`{path.name}`): teacher {d['teacher']}; each run is `lizardlm "
        f"linearize` with the data and flags below ("
        + ("as many tokens (stage 1 + stage 2) as the tokens column says"
           + (" (one started from another by `--init-from`: that run's, then its own)" if any(
               started_from(d["runs"][n]) for n in names if n in d["runs"]) else "") + ","
           if budget_vary else f"{run0['stage1_tokens'] / 2**20:g}M + {run0['stage2_tokens'] / 2**20:g}M tokens")
        + (" in sequences as long as the train seq len column says" if seq_vary else f" of {run0['seq_len']}")
        + ("" if budget_vary else ", the same for every run") + "), then "
        f"`lizardlm eval --tasks {eval_tasks(d, names)}`"
        + (" (every column: `docs/results.md`)" if compact else "")
        + ". passkey: "
        + (f"{trials[0]} trials" if len(trials) == 1 else "as many trials as the passkey trials column says")
        + f" per length over {run0['passkey_depths']} depths, exact match of the key ("
        + "; ".join(f"{n} trials: " * (len(trials) > 1) + _trials_note(n) for n in trials) + "; "
        "the evaluation template, not the training one; "
        "train-template: the training template, "
        + ("as many numbered keys as the keys column says" if keys_vary else f"{run0.get('passkey_keys', 5)} numbered key(s)")
        + " in held-out books, "
        "one asked for; first digit: "
        "the answer's first digit right; answer NLL: the right answer's teacher-forced NLL per token, the loss "
        "stage 2 trains); RULER: mean exact match of its five tasks; MQAR: accuracy of 8 key-value pairs "
        "recalled at that many tokens; long ppl: perplexity of the "
        "last position bucket of held-out books"
        + (f"; zero-shot mean: {', '.join(ZERO_SHOT[t] for t in zero_shot)} on their whole evaluation sets"
           if zero_shot else "")
        + ". – = not run; OOM = the teacher ran out of memory.",
        "",
        "| run | " + " | ".join(title for _, _, title, _ in columns) + " | long ppl |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for n in names:
        cells = [cell(sec[n].get(str(L)), digits) if isinstance(sec.get(n), dict) else "–" for sec, L, _, digits in columns]
        out.append(f"| {n} | " + " | ".join(cells + [last_ppl(d.get("longppl", {}).get(n))]) + " |")
    out += ["", "Runs: " + "; ".join(run_lines({n: r for n, r in d["runs"].items() if n in names})) + "."]
    return "\n".join(out)


def _trials_note(n: int) -> str:
    """How far a passkey cell of ``n`` trials can be trusted: one trial's step, and the 95% interval of a cell
    near 0.92 (``round(0.92 n)`` hits; 46 of 50: 0.81-0.97), where the runs that near the goal of 0.95 sit."""
    hits = round(0.92 * n)
    lo, hi = wilson(hits, n)
    return f"one trial is {1 / n:.2f}; a cell of {hits / n:.2f} has a 95% interval of {lo:.2f}-{hi:.2f}, Wilson"


def zero_shot_mean(scores: dict | None, tasks=tuple(ZERO_SHOT)) -> float | None:
    """The mean of ``tasks`` (default the five zero-shot ones) in percent, or None where any is missing."""
    if not scores or any(not isinstance(scores.get(t), (int, float)) for t in tasks):
        return None
    return 100 * sum(scores[t] for t in tasks) / len(tasks)


def soup_parts(run: dict) -> list[tuple[str, str]]:
    """The (run, weight) pairs of a soup's ``data`` (``soup:A=wa,B=wb``, as benchmarks/device_runs.sh gives it)."""
    return [(name, weight) for name, _, weight in (p.rpartition("=") for p in run["data"][len("soup:"):].split(","))]


def started_from(run: dict) -> str | None:
    """The name of the run a run was started from (its flags' ``--init-from .../NAME``), if any."""
    found = re.search(r"--init-from \S*?([^/\s]+)(?:\s|$)", run.get("flags", ""))
    return found.group(1) if found else None


LONG_TASKS = ("passkey", "passkey_train", "ruler", "longppl", "diagnostics", "mqar")
"""The long-context tasks a result file holds as sections of their own (the zero-shot ones: ``benchmarks``)."""


def eval_tasks(d: dict, names: list[str]) -> str:
    """The tasks any of ``names`` was evaluated on, in first-seen order: each run's ``eval_command``, the
    evaluations joined to it later (``added_evals``), and the tasks whose numbers the file holds for it (an
    evaluation resumed over several calls names only its last call's tasks); the file's ``eval_tasks``
    where none says."""
    tasks: list[str] = []
    for n in names:
        run = d["runs"].get(n, {})
        words = run.get("eval_command", "").split()
        given = [words[words.index("--tasks") + 1].split(",")] if "--tasks" in words else []
        held = [t for t in LONG_TASKS if n in d.get(t, {})] + list(d.get("benchmarks", {}).get(n, {}))
        for group in given + [e["tasks"] for e in run.get("added_evals", [])] + [held]:
            tasks += [t for t in group if t not in tasks]
    return ",".join(tasks) or d["eval_tasks"]


KNOBS = (("decay_scale", "--decay-scale", "decay", "S"), ("write_contrast", "--write-contrast", "write", "C"),
         ("read_sharpness", "--read-sharpness", "read", "t"))
"""The inference knobs an evaluation of a trained run may set (``NAME@decayS``, ``NAME@writeC``, ``NAME@readT``):
record key, flag, label tag, letter."""


def run_lines(runs: dict[str, dict]) -> list[str]:
    """```name` = `--mode M --data D FLAGS``` per run, with a mixture's trained shares where recorded (a
    soup: ```name` = `lizardlm soup A B --weights wa,wb```); the evaluations of one run at several decay
    scales or write contrasts (``NAME@decayS``, ``NAME@writeC``) share one line per set of knobs that
    names their values."""
    training = {n: f"`lizardlm soup {' '.join(p for p, _ in soup_parts(r))} --weights {','.join(w for _, w in soup_parts(r))}`"
                if r["data"].startswith("soup:") else
                f"`--mode {r['mode']} --data {r['data']}" + (f" {r['flags'].strip()}" if r["flags"].strip() else "") + "`"
                + (" (trained on " + ", ".join(f"{share:.1%} {spec}" for spec, share in r["train_shares"].items())
                   + " of the rows)" if r.get("train_shares") else "")
                for n, r in runs.items()}
    tuned: dict[tuple[str, str, tuple], list[str]] = {}
    for n, r in runs.items():
        knobs = tuple(k for k in KNOBS if k[0] in r)
        if knobs:
            tuned.setdefault((n.partition("@")[0], training[n], knobs), []).append(", ".join(f"{r[k[0]]:g}" for k in knobs))
    lines = [f"`{n}` = {training[n]}" for n, r in runs.items() if not any(k[0] in r for k in KNOBS)]
    for (base, train, knobs), values in tuned.items():
        label = base + "".join(f"@{tag}{letter}" for _, _, tag, letter in knobs)
        flags = [f"`{flag} {letter}`" for _, flag, _, letter in knobs]
        given = " and ".join(filter(None, (", ".join(flags[:-1]), flags[-1])))
        apart = ", " if len(knobs) == 1 else "; "  # one knob: S = 0.25, 0.5; two: S, C = 0.25, 2; 0.5, 2
        lines.append(f"`{label}` = {train}, evaluated with {given} for {', '.join(k[3] for k in knobs)} = {apart.join(values)}")
    return lines


def toy_needle(path: Path) -> str:
    """The from-scratch needle lookup (``benchmarks/toy_needle.py``): accuracy by length, one row per run."""
    d = json.loads(path.read_text())
    s = d["settings"]
    lengths = [str(L) for L in s["lengths"]]
    k = s.get("value_tokens", 1)
    value = "value" if k == 1 else (f"{k}-token value (all {k} right, each given the ones before; the first "
                                    f"{s['curriculum']} steps on one-token values)")
    out = [
        f"Needle lookup learned from scratch, {d['device']} (`{path.name}`): {s['model']}, {s['steps']} steps of "
        f"{s['batch']} x {s['length']} tokens (seed {s['seed']}); one marker + {value} at least {s['gap']} tokens "
        f"before the query (outside the {s['base']['window_size']}-token window); exact match of the value on "
        f"128 rows per length; `converted:<form>` = the softmax run as teacher, linearized by "
        f"{s['stage1_steps']} steps of attention transfer and {s['stage2_steps']} of LoRA. Can the layer retrieve "
        "beyond its window at all, does it extrapolate, and does linearization keep it? The last column puts the "
        f"needle {s['inside']} tokens back, inside the window, a distance training never used; for the softmax "
        "model it is the share of values it can emit at all.",
        "",
        "| run | " + " | ".join(f"acc @ {L}" for L in lengths) + f" | needle inside the window @ {s['length']} |",
        "|---|" + "---:|" * (len(lengths) + 1),
    ]
    out += [f"| {name} | " + " | ".join(f"{run['acc'][L]:.2f}" for L in lengths) + f" | {run['ceiling']:.2f} |"
            for name, run in d["runs"].items()]
    return "\n".join(out)


def toy_grid(path: Path) -> str:
    """``toy_needle.py --grid``: by the needle's distance to the query and by the filler before it, one row
    per run and decay scale."""
    d = json.loads(path.read_text())
    s = d["settings"]
    pres, dists = [str(x) for x in s["grid_pre"]], [str(x) for x in s["grid_dist"]]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out = [
        f"Where a long prompt loses the needle, {d['device']} (`{path.name}`): the toy task's runs ({s['model']}, "
        f"{s['steps']} steps of {s['batch']} x {s['length']} tokens, seed {s['seed']}), each needle placed after "
        f"{', '.join(pres)} filler tokens and {', '.join(dists)} tokens before the query (prompts up to "
        f"{(s['grid_pre'][-1] + s['grid_dist'][-1] + 4) / s['length']:.3g}x the training length), 128 rows a cell; gated "
        "forms also with every log-decay times S (`set_decay_scale`). Left: by distance, the mean over the filler "
        "before; right: by the filler before, the mean over distances.",
        "",
        "| run | decay scale | " + " | ".join(f"distance {x}" for x in dists) + " | "
        + " | ".join(f"{x} before" for x in pres) + " |",
        "|---|---:|" + "---:|" * (len(dists) + len(pres)),
    ]
    for name, run in d["runs"].items():
        for scale, grid in run["grid"].items():
            by_dist = [mean([grid[pre][dist] for pre in pres]) for dist in dists]
            by_pre = [mean([grid[pre][dist] for dist in dists]) for pre in pres]
            out.append(f"| {name} | {scale} | " + " | ".join(f"{v:.2f}" for v in by_dist + by_pre) + " |")
    return "\n".join(out)


def mqar_window(path: Path) -> str:
    """``mqar_window.py``: each model's MQAR accuracy, split by whether its window sees the pair."""
    d = json.loads(path.read_text())
    s, w = d["settings"], str(d["settings"]["window"])
    lengths = list(d["share"][w])
    cell = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    out = [
        f"MQAR inside and outside the window, {d['device']} (`{path.name}`, {d['dtype']}): the prompts of `lizardlm eval "
        f"--tasks mqar` ({s['pairs']} pairs, {s['samples']} a length, seed {s['seed']}); a query is inside when its "
        f"pair's key lies less than {w} tokens back, where a {w}-token window alone sees the pair. Each cell: "
        "accuracy (inside / outside).",
        "",
        "| model | " + " | ".join(f"{L} tokens" for L in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
        f"| share of queries inside {w} | " + " | ".join(f"{d['share'][w][L]:.3f}" for L in lengths) + " |",
    ]
    for name, by_len in d["models"].items():
        out.append(f"| {name} | " + " | ".join(
            f"{r['acc']:.2f} ({cell(r['inside'])} / {cell(r['outside'])})" for r in (by_len[L] for L in lengths)) + " |")
    return "\n".join(out)


def answer_format(path: Path) -> str:
    """``answer_format.py``: every committed passkey evaluation's exact match beside how often its answers held
    a number and how many of those were the key."""
    d = json.loads(path.read_text())["evaluations"]
    lengths = sorted({int(L) for models in d.values() for by_len in models.values() for L in by_len})
    cell = lambda r: "–" if r is None else (  # noqa: E731
        f"{r['acc']:.2f} · {r['number_rate']:.2f} · " + ("–" if r["number_acc"] is None else f"{r['number_acc']:.2f}"))
    out = [
        f"Passkey misses in words or in numbers (`{path.name}`, re-scored on CPU from the trials each committed "
        "`eval.json` keeps; its folder names the device it ran on). Each cell: exact match · the share of answers "
        "holding a number · exact match over those. A miss without a number is an answer in words (\" the pass "
        "key.\"), which exact match cannot tell from a lookup that found nothing (the answer NLL of the run's "
        "evaluation says how likely the key still was); a miss with a number is a wrong key. At a share of 0.10 "
        "the numbers given are those of the needles at depth 1.0, inside the window.",
        "",
        "| evaluation | model | " + " | ".join(f"{kib(L)}" for L in lengths) + " |",
        "|---|---|" + "---:|" * len(lengths),
    ]
    for name, models in d.items():
        for model, by_len in models.items():
            out.append(f"| {name.removesuffix('-eval.json').removesuffix('.json')} | {model} | "
                       + " | ".join(cell(by_len.get(str(L))) for L in lengths) + " |")
    return "\n".join(out) + "\n\n" + miss_table(d)


def read_sharpness(folder: Path) -> str:
    """``read_sharpness_pilot.py``'s files in ``folder`` (one device): passkey exact match by run and read
    sharpness ``t`` on the evaluation's own prompts, the mean answer NLL and the zero-shot mean where run; then,
    per run, the misses ``t = 2`` mended and the hits it broke on the same prompts, with McNemar's exact test."""
    files = [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
    rows: dict[tuple[str, str], dict] = {}
    for d in files:
        for t, by_len in d["results"].items():
            row = rows.setdefault((d["run"], t), {"acc": {}, "nll": {}, "wrong": {}, "n": {}})
            for L, r in by_len.items():
                if L.isdigit():
                    row["acc"][int(L)], row["nll"][int(L)], row["n"][int(L)] = r["acc"], r["answer_nll"], d["settings"]["trials"]
                    if "wrong" in r:
                        row["wrong"][int(L)] = set(r["wrong"])
            if "zero_shot" in by_len:
                row["zs"] = by_len["zero_shot"]["mean"]
    lengths = sorted({L for row in rows.values() for L in row["acc"]})
    s = files[0]["settings"]
    out = [f"Read sharpness, {_device(files[0])} (`{folder.name}`, a folder of `benchmarks/read_sharpness_pilot.py` files): passkey exact "
           f"match on the evaluation's own prompts (seed 0, 10 depths) at `--decay-scale {s['decay_scale']:g} "
           f"--write-contrast {s['write_contrast']:g}` and `--read-sharpness t`, the query feature map's logits times t "
           "(t = 1: as trained); the same prompts at every t, so the misses pair up. Trials a length in brackets; the "
           "answer NLL is the mean over the lengths of the right key's teacher-forced loss per token; the zero-shot mean "
           "(PIQA, ARC-e, ARC-c, HellaSwag, WinoGrande) where it ran.", "",
           "| run | t | " + " | ".join(kib(L) for L in lengths) + " | answer NLL (2K-8K) | zero-shot mean |",
           "|---|---:|" + "---:|" * (len(lengths) + 2)]
    for (run, t), row in sorted(rows.items(), key=lambda kv: (kv[0][0], float(kv[0][1]))):
        cells = [f"{row['acc'][L]:.3f} ({row['n'][L]})" if L in row["acc"] else "–" for L in lengths]
        short = [row["nll"][L] for L in lengths if L <= 8192 and L in row["nll"]]
        nll = f"{sum(short) / len(short):.3f}" if short else "–"
        out.append(f"| `{run}` | {t} | " + " | ".join(cells) + f" | {nll} | "
                   + (f"{row['zs']:.2f}" if "zs" in row else "–") + " |")
    paired = []
    for (run, t), row in sorted(rows.items()):
        base = rows.get((run, "1"))
        if t == "1" or base is None:
            continue
        common = sorted(set(row["wrong"]) & set(base["wrong"]))
        if common:
            mended = sum(len(base["wrong"][L] - row["wrong"][L]) for L in common)
            broken = sum(len(row["wrong"][L] - base["wrong"][L]) for L in common)
            paired.append((run, t, common, mended, broken))
    if paired:
        out += ["", "| run | t against 1 | lengths | misses mended | hits broken |", "|---|---:|---|---:|---:|"]
        out += [f"| `{run}` | {t} | {' / '.join(kib(L) for L in common)} | {m} | {b} |" for run, t, common, m, b in paired]
        for t in sorted({p[1] for p in paired}):
            m, b = sum(p[3] for p in paired if p[1] == t), sum(p[4] for p in paired if p[1] == t)
            out.append(f"\nAll runs at t = {t}: {m} mended, {b} broken; McNemar's exact test p = {mcnemar(m, b):.2g}.")
    return "\n".join(out)


def mcnemar(b: int, c: int) -> float:
    """McNemar's exact two-sided p for ``b`` and ``c`` discordant pairs (a binomial test of b against b + c at 1/2)."""
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0


MISS_LABELS = {"words": "in words", "other_key": "another key", "dropped_repeat": "doubled digit dropped",
               "dropped": "other digit dropped", "inserted": "digit added", "neighbour": "digit -> its neighbour",
               "substituted": "digit -> another", "other": "other"}
"""Column titles of :func:`miss_table` for the kinds of ``lizardlm.eval.passkey.MISS_KINDS``."""


def miss_table(evaluations: dict) -> str:
    """The wrong answers of every re-scored evaluation (``answer_format.py``'s ``misses``), by kind, summed over
    its lengths; evaluations scored before the kinds were recorded, or without a miss, left out. The kinds are
    those the files record (:data:`MISS_LABELS` names them; a kind it does not know shows by its key)."""
    recorded = dict.fromkeys(k for models in evaluations.values() for by_len in models.values()
                             for r in by_len.values() for k in r.get("misses", {}))
    kinds = {k: label for k, label in MISS_LABELS.items() if k in recorded} | {k: k for k in recorded if k not in MISS_LABELS}
    out = [
        "The same evaluations' wrong answers by kind, summed over their lengths (`lizardlm.eval.passkey.miss_kind`): "
        "a digit of a doubled pair left out (53664 -> 5364) or one replaced by the key's digit beside it (86949 -> "
        "86449) is where a lookup that finds each digit from the one before it slips; another key (the training "
        "template's five) is the wrong needle found.",
        "",
        "| evaluation | model | trials | misses | " + " | ".join(kinds.values()) + " |",
        "|---|---|---:|---:|" + "---:|" * len(kinds),
    ]
    for name, models in evaluations.items():
        for model, by_len in models.items():
            if not all("misses" in r for r in by_len.values()):
                continue
            counts = {k: sum(r["misses"].get(k, 0) for r in by_len.values()) for k in kinds}
            if sum(counts.values()):
                out.append(f"| {name.removesuffix('-eval.json').removesuffix('.json')} | {model} | "
                           f"{sum(r['n'] for r in by_len.values())} | {sum(counts.values())} | "
                           + " | ".join(str(counts[k]) for k in kinds) + " |")
    return "\n".join(out)


def state_passing(path: Path) -> str:
    """``state_passing_pilot.py``: perplexity by position on held-out books, teacher and every student."""
    d = json.loads(path.read_text())
    s, curves = d["settings"], d["longppl"]
    first = next(iter(curves.values()))
    spans = list(zip(first["bucket_start"], first["bucket_end"]))
    datas = list(dict.fromkeys(run["data"] for run in d["runs"].values()))
    out = [
        f"State passing, CPU pilot, {d['device']} (`{path.name}`): the embedded teacher, `lizardlm linearize "
        f"{s['recipe']} --data DATA`, {s['stage1_tokens']:,} + {s['stage2_tokens']:,} tokens of 256-token rows, "
        f"DATA = {', '.join(f'`{x}`' for x in datas)}; runs `DATA/no-passing`, `DATA/passing-P` (`--state-passing P`) "
        f"and `DATA/contiguous-P` (`--row-order contiguous --state-passing P`), the same seed. Perplexity by position "
        f"on {first['windows']} held-out long-docs books of "
        f"{s['eval_len']:,} tokens (the training rows are 256; `long-docs@train` never holds them); val ppl: "
        "the run's own validation rows (its data), each from an empty memory, and the teacher's on them.",
        "",
        "| model | val ppl (teacher) | " + " | ".join(f"{a}-{b}" for a, b in spans) + " |",
        "|---|---:|" + "---:|" * len(spans),
    ]
    for name, c in curves.items():
        run = d["runs"].get(name)
        val = f"{run['summary']['student_val_ppl']:.2f} ({run['summary']['teacher_val_ppl']:.2f})" if run else ""
        out.append(f"| {name} | {val} | " + " | ".join(f"{p:.1f}" for p in c["ppl"]) + " |")
    return "\n".join(out)


def tbptt_toy(path: Path) -> str:
    """``tbptt_toy.py``: the needle toy's exact match by length, mean (min-max) over seeds, one row per run."""
    d = json.loads(path.read_text())
    s = d["settings"]
    lengths = s["lengths"]
    out = [
        f"Long documents read in rows, the needle toy, {d['device']} (`{path.name}`): {s['model']}, "
        f"`{s['config']['mode']}` with a write gate, from scratch, {s['steps']} steps of {s['batch']} documents, "
        f"rows of {s['row']} tokens. `rows`: a document is one row; `tbptt-D`: documents of D tokens read in "
        f"D/{s['row']} rows in order, each from the memory the row before left (detached), the question in the last; "
        "`mixed-D`: the two step by step; `then-D`: `rows` for the first half of the steps, `mixed-D` for the "
        "second; `full-D`: rows of D tokens, whole backward. Exact match from an empty "
        "memory on 128 prompts a length, the needle uniform over the prompt: mean over the seeds (min-max); "
        "half-lives: each layer's mean gate half-life in tokens, mean over the seeds.",
        "",
        "| run | seeds | tokens read | " + " | ".join(f"acc @ {L}" for L in lengths) + " | half-lives |",
        "|---|---:|---:|" + "---:|" * len(lengths) + "---|",
    ]
    kinds = ("rows", "full", "mixed", "then", "tbptt")
    order = lambda item: (kinds.index(item[0].partition("-")[0]), int(item[0].partition("-")[2] or 0))  # noqa: E731
    for name, run in sorted(d["runs"].items(), key=order):
        seeds = list(run["seeds"].values())

        def cell(length: str) -> str:
            accs = [r["acc"][length] for r in seeds]
            spread = f" ({min(accs):.2f}-{max(accs):.2f})" if len(accs) > 1 else ""
            return f"{run['acc'][length]:.2f}{spread}"

        lives = [sum(r["half_life"][i] for r in seeds) / len(seeds) for i in range(len(seeds[0]["half_life"]))]
        out.append(f"| {name} | {len(seeds)} | {run['tokens_read'] / 1e6:.1f}M | " + " | ".join(map(cell, lengths))
                   + " | " + " / ".join(f"{x:.0f}" for x in lives) + " |")
    return "\n".join(out)


def cpu_demo(path: Path) -> str:
    s = json.loads(path.read_text())
    return (
        f"cpu-demo preset, {s['device']} (`{path.name}`): teacher val perplexity {s['teacher_val_ppl']:.2f}, "
        f"after stage 1 {s['stage1_val_ppl']:.2f}, after stage 2 {s['student_val_ppl']:.2f}; attention-transfer "
        f"validation MSE (sum over layers) {sum(s['stage1_val_mse_init_per_layer']):.2f} -> "
        f"{sum(s['stage1_val_mse_per_layer']):.2f}; wall time {s['wall_seconds_this_call'] / 60:.1f} min."
    )


def _load(pattern: str) -> tuple[Path, dict] | None:
    """The first committed result file matching ``pattern`` and its JSON (None if there is none)."""
    path = next(iter(sorted(RESULTS.glob(pattern))), None)
    return None if path is None else (path, json.loads(path.read_text()))


def _device(d: dict) -> str:
    return d["device"].removeprefix("NVIDIA ").replace(" 80GB HBM3", "")


def glance() -> str:
    """One line per headline result, each computed from its committed file (named, with its device)."""
    rows = ["| what | measured | device (file) |", "|---|---|---|"]
    if found := _load("attention-nvidia-h200.json"):
        path, d = found
        ms = {(r["op"], r["T"], r["mode"]): r["ms"] for r in d["runs"]}
        cells = []
        for name, f in d["config"]["forms"].items():
            if name in ("lizard", "paper"):
                ratio = [ms[("sdpa-cudnn", T, "fwd+bwd")] / ms[(name, T, "fwd+bwd")] for T in (2048, 32768)]
                label = {"shared": "our form", "sum": "paper form"}[f["combine"]]
                cells.append(f"{label} (window {f['window']}) {ratio[0]:.2f}x at 2K, {ratio[1]:.1f}x at 32K")
        rows.append("| attention op, forward + backward, against cuDNN SDPA (bf16, 32 heads x 128) | "
                    f"{'; '.join(cells)} | {_device(d)} (`{path.name}`) |")
    if found := _load("scale-graphs-nvidia-h200.json"):
        path, d = found
        cells = [f"{r['shape']} at {r['seq'] // 1024}K: stage 1 {r['stage1_graph_tok_per_s'] / r['teacher_lora_tok_per_s']:.2f}x, "
                 f"stage 2 {r['stage2_graph_tok_per_s'] / r['teacher_lora_tok_per_s']:.2f}x" for r in d["runs"]
                 if r.get("stage1_graph_tok_per_s") and r["seq"] == 2048]
        rows.append("| training step (CUDA graphs) against the teacher's own LoRA step, tokens/s | "
                    f"{'; '.join(cells)} | {_device(d)} (`{path.name}`) |")
    if found := _load("study-nvidia-h200.json"):
        path, d = found
        disc = d["discriminative"]
        mean = {n: 100 * sum(r["full"][t] for t in disc) / len(disc) for n, r in d["rows"].items() if "full" in r}
        ceiling = mean["teacher-lora"]
        names = {"teacher-lora": "teacher + same LoRA (ceiling)", "lizard": "ours", "lolcats": "LoLCATs",
                 "lizard-paper": "paper form"}
        cells = [f"{label} {mean[n]:.1f}" + ("" if n == "teacher-lora" else f" ({mean[n] / ceiling:.0%})")
                 for n, label in names.items() if n in mean]
        b = d["budget"]
        rows.append(f"| zero-shot quality, mean of {', '.join(STUDY_TASKS[t] for t in disc)} (%), "
                    f"{b['stage1_tokens'] / 2**20:g}M + {b['stage2_tokens'] / 2**20:g}M tokens | "
                    f"{'; '.join(cells)} | {_device(d)} (`{path.name}`) |")
    mixed = [(p, d, n, v) for p, d in passkey_results() for n, v in d["passkey"].items()
             if isinstance(v, dict) and n in d["runs"]
             and "alpaca-cleaned" in d["runs"][n]["data"] and "retrieval" in d["runs"][n]["data"]]
    trained = [m for m in mixed if "@" not in m[2]]
    if trained and (found := _load("passkey-mix-nvidia-h200.json")):  # the teacher's numbers
        mean = lambda m: sum(m[3].values()) / len(m[3])  # noqa: E731
        path, d, best, runs = max(trained, key=mean)
        lengths = sorted(int(L) for L in runs)
        fmt = lambda v: " / ".join(f"{v[str(L)]:.2f}" if str(L) in v else "–" for L in lengths)  # noqa: E731
        teacher_path, td = found
        cells = [f"`{best}` {fmt(runs)} ({_device(d)}, `{path.name}`)"]
        if tuned := [m for m in mixed if "@" in m[2]]:
            # a choice `lizardlm tune` made on prompts of its own wins over the best of the evaluations
            chosen = [m for m in tuned if m[1].get("tuned", {}).get(m[2].partition("@")[0], {}).get("chosen") == m[2]]
            knob_path, kd, knob_best, knob_runs = max(chosen or tuned, key=mean)
            knobs = ", ".join(f"`{flag} {kd['runs'][knob_best][key]:g}`" for key, flag, _, _ in KNOBS
                              if key in kd["runs"][knob_best])
            if chosen:
                t = kd["tuned"][knob_best.partition("@")[0]]
                how = (f"chosen by `lizardlm tune` from {len(t['grid'])} settings on {t['trials']} prompts of seed "
                       f"{t['seed']} a length at {' / '.join(kib(L) for L in t['lengths'])}"
                       + (f", {t['close']} of the others within two standard errors of it" if "close" in t else "")
                       + ", scored on the evaluation's own prompts")
            else:
                how = f"the best of {len({m[2] for m in tuned})} evaluations at knobs, chosen on these prompts"
            cells.append(f"with inference knobs, `{knob_best}` ({knobs}) {fmt(knob_runs)} ({_device(kd)}, `{knob_path.name}`; {how})")
        cells.append(f"teacher {fmt(td['passkey']['teacher'])}" + (" (trained to 8K)" if td["teacher"] == "smollm2-135m" else "")
                     + f" ({_device(td)}, `{teacher_path.name}`)")
        devices = " / ".join(sorted({_device(d), _device(td)} | ({_device(kd)} if tuned else set())))
        rows.append(f"| passkey retrieval after training mixed with Alpaca-cleaned, exact match at "
                    f"{' / '.join(kib(L) for L in lengths)} tokens (the best of "
                    f"{len({m[2] for m in trained})} such runs) | " + "; ".join(cells) + f" | {devices} (each cell names its file) |")
    if found := _load("decode-nvidia-*.json"):
        path, d = found
        ok = {n: [r for r in rows_ if r["status"] == "ok"] for n, rows_ in d["results"].items()}
        mib = lambda x: f"{x / 1024:.1f} GiB" if x >= 1024 else f"{x:.1f} MiB"  # noqa: E731
        tokens = lambda n: f"{n // 2**20}M" if n >= 2**20 else f"{n // 1024}K"  # noqa: E731
        lo, hi = ok["lizard"][0]["context"], ok["lizard"][-1]["context"]
        rows.append(f"| generation cache per sequence, {tokens(lo)} -> {tokens(hi)} tokens of context | "
                    f"Lizard {mib(ok['lizard'][0]['cache_mib'])} -> {mib(ok['lizard'][-1]['cache_mib'])}; "
                    f"teacher {mib(ok['teacher'][0]['cache_mib'])} -> {mib(ok['teacher'][-1]['cache_mib'])} "
                    f"| {_device(d)} (`{path.name}`) |")
    if found := _load("cpu-demo-*.json"):
        path, d = found
        rows.append(f"| the newcomer command (`--preset cpu-demo`, 2 CPU cores) | {d['wall_seconds_this_call'] / 60:.1f} min; "
                    f"validation perplexity teacher {d['teacher_val_ppl']:.1f}, student {d['student_val_ppl']:.1f} "
                    f"| {d['device']} (`{path.name}`) |")
    return "\n".join(rows)


RENDERERS = (
    ("attention-stitch-*.json", lambda p: stitch(p)),
    ("attention-*.json", lambda p: attention(p)),
    ("scale-*.json", lambda p: scale(p)),
    ("linearize-*.json", lambda p: linearize(p)),
    ("paper-preset-*.json", lambda p: preset_runs(p)),
    ("passkey-*.json", lambda p: passkey(p)),
    ("longppl-reference-*.json", lambda p: longppl_reference(p)),
    ("longppl-ood-*", lambda p: longppl_folder(p)),
    ("longppl-knobs-*", lambda p: longppl_folder(p)),
    ("longppl-books-*", lambda p: longppl_folder(p)),
    ("mqar-window-*.json", lambda p: mqar_window(p)),
    ("answer-format-*.json", lambda p: answer_format(p)),
    ("read-sharpness-nvidia-*", lambda p: read_sharpness(p)),
    ("state-passing-pilot-*.json", lambda p: state_passing(p)),
    ("tbptt-toy-*.json", lambda p: tbptt_toy(p)),
    ("toy-needle-grid-*.json", lambda p: toy_grid(p)),
    ("toy-needle-*.json", lambda p: toy_needle(p)),
    ("decode-*.json", lambda p: decode(p)),
    ("prefill-*.json", lambda p: prefill(p)),
    ("serve-*.json", lambda p: serve(p)),
    ("cpu-demo-*.json", lambda p: cpu_demo(p)),
)
"""Each result file's table, by the first pattern its name matches, in this order in ``docs/results.md``."""

README_FILES = ("attention-nvidia-h200.json", "scale-graphs-*.json", "paper-preset-*.json", "passkey-mix-*.json",
                "passkey-contrast-*.json", "read-sharpness-nvidia-*", "prefill-nvidia-*.json", "decode-nvidia-*.json", "serve-nvidia-*.json", "cpu-demo-*.json")
"""The result files whose tables the README shows after :func:`glance`; ``docs/results.md`` shows every file's."""


def table(path: Path) -> str:
    """The table of one result file."""
    return next(render(path) for pattern, render in RENDERERS if path.match(pattern))


def every_table() -> list[Path]:
    """Every result file with a table, in ``RENDERERS`` order (the superseded ``-v1`` kernels left out)."""
    seen: list[Path] = []
    for pattern, _ in RENDERERS:
        seen += [p for p in sorted(RESULTS.glob(pattern)) if p not in seen and not p.stem.endswith("-v1")]
    return seen


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--study"]:
        print(study_tables())
    elif argv == ["--all"]:
        print("\n\n".join(table(p) for p in every_table()))
    else:
        readme = [p for pattern in README_FILES for p in sorted(RESULTS.glob(pattern))]
        print("\n\n".join([glance(), *(passkey(p, compact=True) if p.name.startswith("passkey-") else table(p)
                                        for p in readme)]))


if __name__ == "__main__":
    main()
