"""Weighted mixtures of data specs: ``mix:SPEC=WEIGHT,SPEC=WEIGHT,...``.

    mix:alpaca-cleaned=0.9,retrieval=0.1
    mix:alpaca-cleaned=9,retrieval:count=700:length=2048=1

Weights are shares of the packed tokens (normalised to sum to 1): each part is packed into its own
rows (so a ``retrieval`` document of ``length == seq_len`` stays one row) and gets
``ceil(share * tokens)`` train and validation tokens; the rows are then shuffled together with the
seed. A part with less data than its share keeps what it has (its own meta says ``shortfall``), so
the others' shares grow: the mixture then warns with the shares it trains on. ``meta["parts"]``
records each part's weight, share, trained share, spec and packing meta (``run.json`` keeps it).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from lizardlm.errors import DataError

logger = logging.getLogger(__name__)


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """``mix:SPEC=WEIGHT,...`` -> ``[(spec, share), ...]`` with shares summing to 1."""
    parts: list[tuple[str, float]] = []
    for entry in spec.removeprefix("mix:").split(","):
        name, sep, weight = entry.strip().rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = math.nan
        if not sep or not name or not value > 0 or math.isinf(value):
            raise DataError(f"data spec {spec!r}: expected mix:SPEC=WEIGHT,... with weights > 0, got {entry!r}")
        parts.append((name.strip(), value))
    if len({name for name, _ in parts}) != len(parts):
        raise DataError(f"data spec {spec!r} names a part twice")
    total = sum(weight for _, weight in parts)
    return [(name, weight / total) for name, weight in parts]


def build_mixture(spec: str, tokenizer: Any, seq_len: int, train_tokens: int, val_tokens: int, seed: int = 0, **kw: Any):
    """:class:`~lizardlm.data.packing.PackedSplits` of a mixture (see the module docstring)."""
    from lizardlm.data.packing import PackedSplits, build_splits

    parts = []
    for name, share in parse_mixture(spec):
        if name.startswith("mix:"):
            raise DataError(f"data spec {spec!r}: mixtures do not nest")
        split = build_splits(name, tokenizer, seq_len, math.ceil(share * train_tokens), math.ceil(share * val_tokens), seed, **kw)
        parts.append((name, share, split))
    generator = torch.Generator().manual_seed(seed)
    train = torch.cat([split.train for _, _, split in parts])
    val = torch.cat([split.val for _, _, split in parts])
    train = train[torch.randperm(train.shape[0], generator=generator)]
    val = val[torch.randperm(val.shape[0], generator=generator)]
    meta = {
        "spec": spec,
        "seq_len": seq_len,
        "seed": seed,
        "parts": [
            {"spec": name, "share": share, "train_share": split.train.shape[0] / train.shape[0], "meta": split.meta}
            for name, share, split in parts
        ],
        "train_tokens_requested": train_tokens,
        "val_tokens_requested": val_tokens,
        "train_rows": train.shape[0],
        "val_rows": val.shape[0],
        "train_tokens": train.numel(),
        "val_tokens": val.numel(),
        "shortfall": any(split.meta["shortfall"] for _, _, split in parts),
    }
    if meta["shortfall"]:
        short = ", ".join(name for name, _, split in parts if split.meta["shortfall"])
        shares = ", ".join(f"{p['spec']} {p['train_share']:.1%} (asked {p['share']:.1%})" for p in meta["parts"])
        logger.warning("mixture %r: %s ran short, so it trains on these shares of its rows: %s", spec, short, shares)
    return PackedSplits(train=train, val=val, meta=meta)
