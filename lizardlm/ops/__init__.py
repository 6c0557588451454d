"""Operators. Each exists as a naive reference, a chunked parallel form and a recurrent form."""

from lizardlm.ops.gla import gla_chunk, gla_naive, gla_recurrent
from lizardlm.ops.lizard import (
    LizardState,
    empty_state,
    lizard_attention_chunk,
    lizard_attention_naive,
    lizard_attention_recurrent,
    lizard_attention_step,
    linear_state,
)
from lizardlm.ops.window import window_attention_chunk, window_attention_naive, window_attention_recurrent

__all__ = [
    "LizardState",
    "empty_state",
    "gla_chunk",
    "gla_naive",
    "gla_recurrent",
    "lizard_attention_chunk",
    "lizard_attention_naive",
    "lizard_attention_recurrent",
    "lizard_attention_step",
    "linear_state",
    "window_attention_chunk",
    "window_attention_naive",
    "window_attention_recurrent",
]
