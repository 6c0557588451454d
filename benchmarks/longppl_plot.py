"""Long-document perplexity of the committed passkey runs over a fixed-context reference, by position.

The reference (``lizardlm eval --tasks longppl --longppl-context N``, e.g. the embedded teacher at 2K)
reads the same held-out book windows as every run, so the ratio cancels how hard each stretch of the
books is: a flat line is a student that keeps its quality as the context grows past the reference's.

    python benchmarks/longppl_plot.py --runs mixr2k-books,lizard,lolcats,mixr2k,alpaca-f256

Writes ``<out>/longppl-vs-reference-<reference device>.png``; the numbers are ``docs/results.md``'s table
of the same files (``readme_table.longppl_reference``). With ``--folder`` it draws a folder of
``lizardlm eval --tasks longppl`` results instead (``readme_table.longppl_folder``'s table): every file's
perplexity by position, the teacher's fixed-context references (``--longppl-context``) dashed, into
``<folder>/longppl.png``, and, where the folder holds evaluations at several softmax windows
(``--window-size``) or contexts, the last bucket's perplexity against that window or context, one line a
model and knobs, into ``<folder>/longppl-by-window.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_table import KNOBS, RESULTS, kib, longppl_folder_curves, longppl_runs  # noqa: E402
from result_names import device_slug  # noqa: E402


def _save(fig: plt.Figure, ax: plt.Axes, path: Path, legend_size: int) -> Path:
    """Every plot's ending: grid, legend, tight layout, written to ``path`` and closed; returns ``path``."""
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot(reference: Path, names: list[str] | None, out: Path) -> Path:
    """Each named run's ppl / reference ppl by bucket (all runs within 2x of the reference at the first
    bucket past its context when ``names`` is None); returns the PNG's path."""
    ref, runs = longppl_runs(reference)
    past = [i for i, a in enumerate(ref["bucket_start"]) if a >= ref["context"]]
    if not past:
        raise SystemExit(f"{reference.name}: no bucket starts past the reference's {ref['context']}-token context")
    ratio = {(name, stem): [p / r for p, r in zip(ppl, ref["ppl"])] for name, stem, ppl in runs}
    if names is None:
        chosen = [key for key, v in ratio.items() if v[past[0]] < 2 and key[0] != "teacher"]
    else:
        chosen = [key for key in ratio if key[0] in names]
        missing = set(names) - {name for name, _ in chosen}
        if missing:
            raise SystemExit(f"no long-ppl curve for run(s) {', '.join(sorted(missing))} in {RESULTS}/passkey-*.json")
    mids = [(a + b) / 2 for a, b in zip(ref["bucket_start"], ref["bucket_end"])]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, stem in chosen:
        ax.plot([mids[i] for i in past], [ratio[(name, stem)][i] for i in past], "o-", label=f"{name} ({stem})")
    ax.axhline(1.0, color="black", lw=0.8, ls="--", label=f"reference: {ref['model']}, {ref['context']}-token context")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("token position (held-out Gutenberg books; bucket middle)")
    ax.set_ylabel("run perplexity / reference perplexity")
    ax.set_title(f"Long-document perplexity over a fixed-context reference ({reference.name})", fontsize=9)
    out.mkdir(parents=True, exist_ok=True)
    return _save(fig, ax, out / f"longppl-vs-reference-{device_slug(ref['device'])}.png", legend_size=7)


def plot_folder(folder: Path) -> Path:
    """Every curve of a longppl folder by position (bucket middles), references dashed; returns the PNG's path."""
    curves, _, device = longppl_folder_curves(folder)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    references = [label for label, c in curves.items() if c.get("context")]  # by context (longppl_folder_curves)
    for i, label in enumerate(references):
        c = curves[label]
        mids = [(a + b) / 2 for a, b in zip(c["bucket_start"], c["bucket_end"])]
        ax.plot(mids, c["ppl"], ls="--", color=str(0.2 + 0.5 * i / max(1, len(references) - 1)), lw=1,
                label=f"{label} ({kib(c['context'])}-token context)")
    students = [label for label in curves if label not in references and label != "teacher"]
    colors = dict(zip(students, plt.cm.tab20.colors * (1 + len(students) // 20)))  # distinct up to 20 curves
    for label, c in curves.items():
        if label in references:
            continue
        mids = [(a + b) / 2 for a, b in zip(c["bucket_start"], c["bucket_end"])]
        ax.plot(mids, c["ppl"], "o-", lw=2 if label == "teacher" else 1.2, color=colors.get(label, "black"), label=label)
    first = next(iter(curves.values()))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel(f"token position ({first.get('data', 'long-docs@eval')}; bucket middle)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"Long-document perplexity by position, {device} ({folder.name}: {first['windows']} windows of "
                 f"{kib(first['seq_len'])})", fontsize=9)
    return _save(fig, ax, folder / "longppl.png", legend_size=6)


def plot_by_window(folder: Path) -> Path | None:
    """The last bucket's perplexity against the softmax window each Lizard evaluation recorded (one line a model
    and knobs) and against the context of each fixed-context teacher reference, the whole-context teacher as a
    line across; None when no two points share a line. Returns the PNG's path."""
    curves, models, device = longppl_folder_curves(folder)
    lines: dict[str, dict[int, float]] = {}
    for label, c in curves.items():
        m = models[label]
        if c.get("context"):
            name = "teacher, fixed context"
        elif m.get("window_size"):
            knobs = " / ".join(f"{m.get(key, 1.0):g}" for key, *_ in KNOBS)
            name = f"{Path(m.get('source') or label).name} at {knobs}"
        else:
            continue
        lines.setdefault(name, {})[c.get("context") or m["window_size"]] = c["ppl"][-1]
    lines = {name: dict(sorted(points.items())) for name, points in lines.items() if len(points) > 1}
    if not lines:
        return None
    last = next(iter(curves.values()))
    bucket = f"{kib(last['bucket_start'][-1])}-{kib(last['bucket_end'][-1])}"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, points in lines.items():
        ref = name.startswith("teacher")
        ax.plot(list(points), list(points.values()), "s--" if ref else "o-", color="grey" if ref else None, label=name)
    if "teacher" in curves:
        ax.axhline(curves["teacher"]["ppl"][-1], color="black", lw=1, label="teacher, whole context")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("softmax window (Lizard) or context (teacher reference), tokens")
    ax.set_ylabel(f"perplexity at positions {bucket}")
    ax.set_title(f"What a wider window buys, {device} ({folder.name}: {last['windows']} windows of "
                 f"{kib(last['seq_len'])}; knobs: decay / write / read)", fontsize=9)
    return _save(fig, ax, folder / "longppl-by-window.png", legend_size=7)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, default=None,
                   help="the reference's eval.json (default: the first benchmarks/results/longppl-reference-*.json)")
    p.add_argument("--runs", default=None, help="comma-separated run names (default: every run within 2x of the reference)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--folder", type=Path, default=None,
                   help="draw this folder of `lizardlm eval --tasks longppl` results instead (into FOLDER/longppl.png)")
    args = p.parse_args()
    if args.folder is not None:
        if not any(args.folder.glob("*-eval.json")):
            raise SystemExit(f"{args.folder}: no <label>-eval.json of `lizardlm eval --tasks longppl` in it")
        print(plot_folder(args.folder))
        if by_window := plot_by_window(args.folder):
            print(by_window)
        return
    reference = args.reference or next(iter(sorted(RESULTS.glob("longppl-reference-*.json"))), None)
    if reference is None or not reference.is_file():
        raise SystemExit(f"no reference: run `lizardlm eval --tasks longppl --longppl-context N` and save its eval.json "
                         f"as {RESULTS}/longppl-reference-<device>.json, or pass --reference")
    print(plot(reference, args.runs.split(",") if args.runs else None, args.out))


if __name__ == "__main__":
    main()
