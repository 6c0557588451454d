"""Long-document perplexity of the committed passkey runs over a fixed-context reference, by position.

The reference (``lizardlm eval --tasks longppl --longppl-context N``, e.g. the embedded teacher at 2K)
reads the same held-out book windows as every run, so the ratio cancels how hard each stretch of the
books is: a flat line is a student that keeps its quality as the context grows past the reference's.

    python benchmarks/longppl_plot.py --runs mixr2k-books,lizard,lolcats,mixr2k,alpaca-f256

Writes ``<out>/longppl-vs-reference-<reference device>.png``; the numbers are ``docs/results.md``'s table
of the same files (``readme_table.longppl_reference``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_table import RESULTS, longppl_runs  # noqa: E402
from result_names import device_slug  # noqa: E402


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
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"longppl-vs-reference-{device_slug(ref['device'])}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, default=None,
                   help="the reference's eval.json (default: the first benchmarks/results/longppl-reference-*.json)")
    p.add_argument("--runs", default=None, help="comma-separated run names (default: every run within 2x of the reference)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    reference = args.reference or next(iter(sorted(RESULTS.glob("longppl-reference-*.json"))), None)
    if reference is None or not reference.is_file():
        raise SystemExit(f"no reference: run `lizardlm eval --tasks longppl --longppl-context N` and save its eval.json "
                         f"as {RESULTS}/longppl-reference-<device>.json, or pass --reference")
    print(plot(reference, args.runs.split(",") if args.runs else None, args.out))


if __name__ == "__main__":
    main()
