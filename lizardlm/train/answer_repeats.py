"""Stage 2's extra weight on the answer targets that repeat the target before them
(:attr:`lizardlm.train.settings.TrainSettings.answer_repeat_weight`).

A passkey answer copies its key digit by digit, and a lookup that finds each digit from the one before
it slips where a digit is doubled: after the first 6 of ``53664`` its memory holds two next digits (6 and
4) and the later one wins (``5364``); measured on the nearest run of issue 19 (``benchmarks/NOTES.md``,
session 37), that slip is two misses in five, and a third of the 5-digit keys hold a doubled pair. With
weight ``w`` a row's loss (``--loss-average rows``) becomes::

    L_r = (sum_t c_rt l_rt) / n_r,   c_rt = w  if row r holds input-only tokens (an answer row) and its
                                               target t equals target t - 1 (both targets),
                                     c_rt = 1  otherwise,

with ``n_r`` the row's target count as before: a doubled digit's second copy counts ``w`` times and every
other target, and every text row, exactly as without the weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lizardlm.data.packing import IGNORE_INDEX


def answer_repeat_weights(targets: torch.Tensor, answer: torch.Tensor, weight: float) -> torch.Tensor:
    """``(rows, positions)`` float weights ``c`` of the targets ``(rows, positions)`` (``IGNORE_INDEX``
    where none): ``weight`` on each target of an ``answer`` row (``(rows,)`` bool) equal to the target
    before it, 1 elsewhere."""
    repeats = (targets[:, 1:] == targets[:, :-1]) & (targets[:, 1:] != IGNORE_INDEX)
    repeats = F.pad(repeats, (1, 0)) & answer[:, None]
    return 1 + (weight - 1) * repeats.float()
