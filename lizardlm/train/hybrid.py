"""Hybrid models: which layers keep the teacher's softmax attention, and what their KV cache costs.

``softmax_select`` specs: ``even:K`` = K evenly spaced layers (the centres of K equal slices of the
stack, ``floor((i + 1/2) L / K)``), fixed before conversion; ``auto:K`` = the K layers whose
attention-transfer validation MSE is highest after stage 1 (the pass that measures it anyway),
which then revert to softmax before stage 2 (``LizardModelMixin.revert_to_softmax``).
"""

from __future__ import annotations

from torch import nn

from lizardlm.config import LizardConfig
from lizardlm.layers import LizardAttention

SELECTIONS = ("even", "auto")


def parse_select(spec: str) -> tuple[str, int]:
    """``"auto:4"`` -> ``("auto", 4)``; ValueError with the accepted forms otherwise."""
    kind, _, count = str(spec).partition(":")
    if kind not in SELECTIONS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"softmax layers {spec!r}: expected a list like 0,15, or even:K or auto:K with K >= 1")
    return kind, int(count)


def even_layers(num_layers: int, count: int) -> list[int]:
    """``count`` evenly spaced layers of ``num_layers``: ``floor((i + 1/2) L / K)`` for i < K."""
    if not 1 <= count < num_layers:
        raise ValueError(f"cannot keep {count} of {num_layers} layers as softmax: give 1 to {num_layers - 1}")
    return [int((i + 0.5) * num_layers / count) for i in range(count)]


def worst_layers(mse: list[float], layers: list[int], count: int) -> list[int]:
    """The ``count`` entries of ``layers`` whose transfer ``mse`` is highest, sorted by layer."""
    if not 1 <= count < len(layers):
        raise ValueError(f"cannot keep {count} of {len(layers)} Lizard layers as softmax: give 1 to {len(layers) - 1}")
    ranked = sorted(zip(mse, layers), reverse=True)
    return sorted(layer for _, layer in ranked[:count])


def lizard_layer_ids(model: nn.Module) -> list[int]:
    """Layer indices of the Lizard attentions, in the order of :func:`~lizardlm.train.linearize.transfer_mse`."""
    return [m.layer_idx for m in model.modules() if isinstance(m, LizardAttention)]


def kv_cache_bytes(config, lizard: LizardConfig | None, context: int, value_bytes: int = 2) -> int:
    """Bytes of one sequence's generation cache after ``context`` tokens.

    Softmax layers (every layer when ``lizard`` is None, else ``lizard.softmax_layers``):
    ``2 T Hk D value_bytes``. Lizard layers, constant once the window is full: the gated state
    ``H x 2F x (D + 1)`` and, in the shared form, the window's log-gates ``H x w`` (float32, the ops'
    accumulation dtype), plus the window's keys and values ``2 Hk w D`` and, in the shared form, its key
    features ``Hk w 2F`` (model dtype); ``w = min(T, window)``, a one-token window when it is 0.
    """
    heads, kv_heads, layers = config.num_attention_heads, config.num_key_value_heads, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    softmax = 2 * context * kv_heads * head_dim * value_bytes
    if lizard is None:
        return layers * softmax
    w = min(context, lizard.window_size or 1)
    phi = 2 * lizard.feature_dim
    state = heads * phi * (head_dim + 1) * 4 + 2 * kv_heads * w * head_dim * value_bytes
    if lizard.combine == "shared":
        state += heads * w * 4 + kv_heads * w * phi * value_bytes
    kept = len(lizard.softmax_layers)
    return kept * softmax + (layers - kept) * state
