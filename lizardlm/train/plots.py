"""Loss curves of a run as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_stage_losses(entries: list[dict], path: Path, title: str) -> None:
    """Training loss per step (log scale) from the stage's metrics entries."""
    if not entries:
        return
    steps = [e["step"] for e in entries]
    losses = [e["loss"] for e in entries]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
