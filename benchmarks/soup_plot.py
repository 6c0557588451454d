"""The trade-off along a line of soups (``lizardlm soup A B --weights 100-W,W``): zero-shot mean and passkey
by the share W of run B, from a committed passkey result (``benchmarks/passkey_gpu.py``).

    python benchmarks/soup_plot.py benchmarks/results/passkey-contrast-nvidia-h100-80gb-hbm3.json \
        --ends mixr2k-12m,mixr2k-12m-replay5 --knobs decay0.0625@write4 --reference alpacar2k

Left: the five-task zero-shot mean of each soup and of the two ends, with the issue-19 goal (within 1 point
of ``--reference``, the recipe without retrieval data). Right: passkey exact match at the knobs (run
``NAME@<knobs>``, and at the knobs ``lizardlm tune`` chose where it ran), the worst of 2K-8K and of 16K-32K,
with the goals 0.95 and 0.90. Writes ``<out>/soup-<A>-<B>.png`` (``--out``: the result's folder
``retrieval-contrast-<device>/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_table import ZERO_SHOT, soup_parts, zero_shot_mean  # noqa: E402
from result_names import device_slug  # noqa: E402

NEAR, FAR = (2048, 4096, 8192), (16384, 32768)
"""The passkey lengths of the issue-19 goals: >= 0.95 at each of NEAR, >= 0.90 at each of FAR."""


def soup_share(run: dict, ends: tuple[str, str]) -> float | None:
    """The percent of ``ends[1]`` in a two-run soup of ``ends`` (its ``data``: ``soup:A=wa,B=wb``), else None."""
    if not run.get("data", "").startswith("soup:"):
        return None
    weights = {name: float(w) for name, w in soup_parts(run)}
    if set(weights) != set(ends):
        return None
    return 100 * weights[ends[1]] / sum(weights.values())


def worst(accuracy: dict | None, lengths: tuple[int, ...]) -> float | None:
    """The lowest passkey accuracy over ``lengths``, or None where any was not run."""
    if not isinstance(accuracy, dict) or any(str(n) not in accuracy for n in lengths):
        return None
    return min(accuracy[str(n)] for n in lengths)


def points(d: dict, ends: tuple[str, str], knobs: str) -> list[dict]:
    """One record per soup of ``ends`` and per end, by share of ``ends[1]``: zero-shot mean, the worst
    passkey of NEAR and FAR at ``knobs`` and at the tuned knobs where ``lizardlm tune`` ran."""
    shares = {ends[0]: 0.0, ends[1]: 100.0}
    shares.update({n: s for n, r in d["runs"].items() if "@" not in n and (s := soup_share(r, ends)) is not None})
    out = []
    for name, share in sorted(shares.items(), key=lambda item: item[1]):
        tuned = d.get("tuned", {}).get(name)  # passkey_gpu.add_tune's record: the label of the knobs chosen
        at = d["passkey"].get(f"{name}@{knobs}")
        at_tuned = d["passkey"].get(tuned["chosen"]) if tuned else None
        out.append({"run": name, "share": share, "zero_shot": zero_shot_mean(d.get("benchmarks", {}).get(name)),
                    "near": worst(at, NEAR), "far": worst(at, FAR),
                    "tuned_near": worst(at_tuned, NEAR), "tuned_far": worst(at_tuned, FAR)})
    return out


def plot(result: Path, ends: tuple[str, str], knobs: str, reference: str, out: Path | None) -> Path:
    """Draws the two panels; returns the PNG's path."""
    d = json.loads(result.read_text())
    missing = [n for n in (*ends, reference) if n not in d["runs"] and n not in d.get("benchmarks", {})]
    if missing:
        raise SystemExit(f"{result.name}: no run {', '.join(missing)}")
    rows = points(d, ends, knobs)
    if len(rows) < 3:
        raise SystemExit(f"{result.name}: no soup of {ends[0]} and {ends[1]} (a run with data soup:...)")
    ref = zero_shot_mean(d["benchmarks"].get(reference))
    if ref is None:
        raise SystemExit(f"{result.name}: {reference} has no score on every one of {', '.join(ZERO_SHOT)}")
    fig, (zs, pk) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)

    def line(ax, key: str, style: str, label: str) -> None:
        xy = [(r["share"], r[key]) for r in rows if r[key] is not None]
        if xy:
            ax.plot(*zip(*xy), style, label=label)

    line(zs, "zero_shot", "o-", "evaluated as trained")
    zs.axhline(ref - 1, color="black", ls="--", lw=0.8, label=f"goal: {reference} ({ref:.2f}) - 1")
    zs.set_ylabel("zero-shot mean of 5 (%)")
    line(pk, "near", "o-", f"worst of 2K-8K at {knobs}")
    line(pk, "far", "s-", f"worst of 16K-32K at {knobs}")
    line(pk, "tuned_near", "o:", "worst of 2K-8K at tune's knobs")
    line(pk, "tuned_far", "s:", "worst of 16K-32K at tune's knobs")
    pk.axhline(0.95, color="black", ls="--", lw=0.8, label="goal 2K-8K: 0.95")
    pk.axhline(0.90, color="grey", ls="--", lw=0.8, label="goal 16K-32K: 0.90")
    pk.set_ylabel("passkey exact match")
    for ax in (zs, pk):
        ax.set_xlabel(f"share of {ends[1]} (%; the rest {ends[0]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Soups of {ends[0]} and {ends[1]} ({d['device']}, {result.name})", fontsize=9)
    fig.tight_layout()
    folder = out or result.parent / f"retrieval-contrast-{device_slug(d['device'])}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"soup-{ends[0]}-{ends[1]}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("result", type=Path, help="a passkey result JSON (benchmarks/results/passkey-*.json)")
    p.add_argument("--ends", required=True, help="A,B: the two runs the soups average")
    p.add_argument("--knobs", default="decay0.0625@write4", help="the evaluation's knobs as in run names")
    p.add_argument("--reference", default="alpacar2k", help="the recipe without retrieval data (zero-shot goal)")
    p.add_argument("--out", type=Path, help="folder of the PNG (default: the result's retrieval-contrast folder)")
    args = p.parse_args(argv)
    ends = tuple(args.ends.split(","))
    if len(ends) != 2:
        p.error("--ends takes two run names, A,B")
    if not args.result.is_file():
        p.error(f"no file {args.result}")
    print(plot(args.result, ends, args.knobs, args.reference, args.out))


if __name__ == "__main__":
    main()
