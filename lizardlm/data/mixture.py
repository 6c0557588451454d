"""Weighted mixtures of data specs: ``mix:SPEC=WEIGHT,SPEC=WEIGHT,...``.

    mix:alpaca-cleaned=0.9,retrieval=0.1
    mix:alpaca-cleaned=9,retrieval:count=700:length=2048=1

Weights are shares of the packed tokens (normalised to sum to 1): each part is packed into its own
rows (so a ``retrieval`` document of ``length == seq_len`` stays one row) and gets
``ceil(share * tokens)`` train and validation tokens; the rows are then shuffled together with the
seed. A part with less data than its share keeps what it has (its own meta says ``shortfall``), so
the others' shares grow: the mixture then warns with the shares it trains on. ``meta["parts"]``
records each part's weight, share, trained share, spec and packing meta (``run.json`` keeps it).

In order (contiguous training in ``lanes`` slots, :func:`lizardlm.train.loop.batch_at`), each part
gets a whole number of the lanes by its share (:func:`lane_counts`) and packs
them as :func:`~lizardlm.data.packing.build_splits` does for one spec; every lane has the length
of the shortest part's, and the train rows are the parts' lanes one after another, not shuffled.
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


def lane_counts(shares: list[float], lanes: int) -> list[int]:
    """``lanes`` split by ``shares`` into whole numbers (largest remainders); a part left with none
    takes one from the part with most."""
    if lanes < len(shares):
        raise DataError(f"contiguous rows give each of the mixture's {len(shares)} parts a slot of the batch: "
                        f"batch-size must be at least {len(shares)}, got {lanes}")
    exact = [share * lanes for share in shares]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: lanes - sum(counts)]:
        counts[i] += 1
    for i, count in enumerate(counts):
        if count == 0:
            counts[max(range(len(counts)), key=counts.__getitem__)] -= 1
            counts[i] = 1
    return counts


def build_mixture(spec: str, tokenizer: Any, seq_len: int, train_tokens: int, val_tokens: int, seed: int = 0,
                  in_order: bool = False, lanes: int = 1, **kw: Any):
    """:class:`~lizardlm.data.packing.PackedSplits` of a mixture (see the module docstring)."""
    from lizardlm.data.packing import PackedSplits, build_splits

    entries = parse_mixture(spec)
    if any(name.startswith("mix:") for name, _ in entries):
        raise DataError(f"data spec {spec!r}: mixtures do not nest")
    counts = lane_counts([share for _, share in entries], lanes) if in_order else [0] * len(entries)
    asked_span = max(1, math.ceil(train_tokens / seq_len) // max(1, lanes))
    parts = []
    for (name, share), count in zip(entries, counts):
        part_train = count * asked_span * seq_len if in_order else math.ceil(share * train_tokens)
        split = build_splits(name, tokenizer, seq_len, part_train, math.ceil(share * val_tokens), seed,
                             in_order=in_order, lanes=max(1, count), **kw)
        parts.append((name, share, split))
    generator = torch.Generator().manual_seed(seed)
    if in_order:  # lanes of the same length: the shortest part's
        span = min(split.train.shape[0] // count for (_, _, split), count in zip(parts, counts))

        def lanes_of(name: str) -> torch.Tensor:  # each part's lanes cut to ``span`` rows, part after part
            return torch.cat([getattr(split, name).unflatten(0, (count, -1))[:, :span].flatten(0, 1)
                              for (_, _, split), count in zip(parts, counts)])

        train, follows, starts_document = (lanes_of(name) for name in ("train", "train_follows", "train_starts_document"))
        trained_rows = [count * span for count in counts]
    else:
        train = torch.cat([split.train for _, _, split in parts])
        train = train[torch.randperm(train.shape[0], generator=generator)]
        follows = starts_document = None
        trained_rows = [split.train.shape[0] for _, _, split in parts]
    val = torch.cat([split.val for _, _, split in parts])
    val = val[torch.randperm(val.shape[0], generator=generator)]
    meta = {
        "spec": spec,
        "seq_len": seq_len,
        "seed": seed,
        "parts": [
            {"spec": name, "share": share, "train_share": rows / train.shape[0], "meta": split.meta,
             **({"lanes": count} if in_order else {})}
            for (name, share, split), rows, count in zip(parts, trained_rows, counts)
        ],
        "train_tokens_requested": train_tokens,
        "val_tokens_requested": val_tokens,
        "train_rows": train.shape[0],
        "val_rows": val.shape[0],
        "train_tokens": train.numel(),
        "val_tokens": val.numel(),
        "shortfall": any(split.meta["shortfall"] for _, _, split in parts),
        "train_in_order": in_order,
    }
    if meta["shortfall"]:
        short = ", ".join(name for name, _, split in parts if split.meta["shortfall"])
        shares = ", ".join(f"{p['spec']} {p['train_share']:.1%} (asked {p['share']:.1%})" for p in meta["parts"])
        logger.warning("mixture %r: %s ran short, so it trains on these shares of its rows: %s", spec, short, shares)
    return PackedSplits(train=train, val=val, meta=meta, train_follows=follows, train_starts_document=starts_document)
