"""How linearization was launched: one process for now."""

from __future__ import annotations

import os

from lizardlm.errors import LizardError


def check_single_process() -> None:
    """Refuse a multi-process launch (``torchrun --nproc-per-node 2``: ``WORLD_SIZE`` > 1), which would
    run the same job twice into one run directory. Data-parallel training replaces this check."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.strip() not in ("", "0", "1"):
        raise LizardError(
            f"lizardlm linearize runs in one process (WORLD_SIZE={world}, e.g. from torchrun): "
            "launch it once, without torchrun"
        )
