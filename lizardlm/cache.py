"""Generation cache of a Lizard model: constant size per Lizard layer.

A Lizard layer keeps a :class:`~lizardlm.ops.LizardState` (gated state + normaliser and the
last ``window_size`` keys/values) and, with ``short_conv`` c, the last ``c - 1`` inputs of its short
convolutions; layers left as softmax attention (hybrid models) keep the
usual growing key/value cache.
"""

from __future__ import annotations

import inspect

import torch
from transformers import LlamaModel
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from lizardlm.ops import LizardState

CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
"""What the installed ``transformers`` calls the cache argument of a model's forward: ``cache`` from
5.24 on (``past_key_values`` deprecated, then removed in 5.40), ``past_key_values`` before."""


def given_cache(past_key_values: Cache | None, cache: Cache | None) -> Cache | None:
    """The cache a forward was given under either name (callers and ``transformers`` versions differ)."""
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError("got two different caches (past_key_values and cache): pass one")
    return cache if cache is not None else past_key_values


class LizardCacheLayer(CacheLayerMixin):
    """Holds one Lizard layer's state, how many tokens it has seen and ``conv_tails`` (the last ``c - 1``
    queries and keys that entered its short convolutions, ``(B, H, c - 1, D)`` and ``(B, Hk, c - 1, D)``,
    or None)."""

    is_compileable = False
    is_sliding = False

    def __init__(self) -> None:
        super().__init__()
        self.state: LizardState | None = None
        self.conv_tails: tuple[torch.Tensor, torch.Tensor] | None = None
        self.seen = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise TypeError("a Lizard cache layer is updated through `advance`, not through key/value `update`")

    def advance(self, state: LizardState, num_tokens: int) -> None:
        """Replace the state after the layer processed ``num_tokens`` more tokens."""
        self.state = state
        self.seen += num_tokens
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int | torch.Tensor) -> tuple[int, int]:
        """Lizard layers read no attention mask: ask for the smallest one (queries x themselves),
        which transformers skips altogether for causal inputs without padding."""
        return (query_length.shape[0] if isinstance(query_length, torch.Tensor) else query_length), 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.state = None
        self.conv_tails = None
        self.seen = 0
        self.is_initialized = False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t.index_select(0, indices.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a Lizard state cannot be rolled back (assisted decoding is not supported)")

    def offload(self) -> None:
        self._map(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        pass

    def _map(self, fn) -> None:
        """``fn`` applied to every tensor the layer carries."""
        if self.state is not None:
            self.state = self.state.map(fn)
        if self.conv_tails is not None:
            self.conv_tails = tuple(fn(t) for t in self.conv_tails)

    def nbytes(self) -> int:
        tails = sum(t.numel() * t.element_size() for t in self.conv_tails or ())
        return tails + (0 if self.state is None else self.state.nbytes())


class LizardCache(Cache):
    """Cache for a Lizard model: :class:`LizardCacheLayer` per Lizard layer, ``DynamicLayer`` per
    softmax layer. ``nbytes()`` is constant in the context length when every layer is Lizard."""

    def __init__(self, num_layers: int, softmax_layers: list[int] | tuple[int, ...] = ()) -> None:
        layers = [DynamicLayer() if i in softmax_layers else LizardCacheLayer() for i in range(num_layers)]
        super().__init__(layers=layers)
        self.padding = None

    @property
    def padding(self) -> torch.Tensor | None:
        """``(B,)`` the padding tokens at the head of each row of a left-padded batch, or None."""
        return self._padding

    @padding.setter
    def padding(self, padding: torch.Tensor | None) -> None:
        self._padding = padding
        self._longest_padding = 0 if padding is None else int(padding.max())  # read once, not per layer and step

    def key_start(self, layer_idx: int) -> torch.Tensor | None:
        """Each row's padding tokens among the keys a Lizard layer's next call sees (its state's window,
        then the new tokens), or None where no row has any left there."""
        layer = self.layers[layer_idx]
        before = layer.seen - (0 if layer.state is None else layer.state.keys.shape[2])  # tokens out of the window
        if self._longest_padding <= before:
            return None
        return (self._padding - before).clamp(min=0)

    def padding_in_window(self) -> bool:
        """Whether some row's left padding is still among the window tokens a Lizard layer keeps."""
        return any(self.key_start(i) is not None for i, layer in enumerate(self.layers)
                   if isinstance(layer, LizardCacheLayer))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.padding is not None:
            self.padding = self.padding.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.padding is not None:
            self.padding = self.padding[indices.to(self.padding.device)]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.padding is not None:
            self.padding = self.padding[beam_idx.to(self.padding.device)]

    def reset(self) -> None:
        super().reset()
        self.padding = None

    @classmethod
    def for_model(cls, model) -> "LizardCache":
        """An empty cache shaped for ``model`` (a Lizard model or its config)."""
        config = getattr(model, "config", model)
        return cls(config.num_hidden_layers, config.lizard["softmax_layers"])

    def get_mask_sizes(self, query_length: int | torch.Tensor, layer_idx: int = 0) -> tuple[int, int]:
        """Mask sizes for the softmax layers (the only ones that read a mask), else a Lizard layer's.

        Without this, a 16K-token prefill after 1M cached tokens would build a 16K x 1M mask.
        """
        softmax = [layer for layer in self.layers if not isinstance(layer, LizardCacheLayer)]
        return (softmax[0] if softmax else self.layers[layer_idx]).get_mask_sizes(query_length)

    def nbytes(self) -> int:
        """Bytes held by every tensor in the cache."""
        return cache_nbytes(self)


def cache_nbytes(cache: Cache) -> int:
    """Bytes held by any ``transformers`` cache: Lizard states, or the keys and values of softmax
    layers (a teacher's ``DynamicCache`` as well as the hybrid layers of a :class:`LizardCache`)."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, LizardCacheLayer):
            total += layer.nbytes()
        elif getattr(layer, "keys", None) is not None and getattr(layer, "is_initialized", True):
            total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))
    return total
