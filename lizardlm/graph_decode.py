"""Decoding with one whole token step of a Lizard model recorded as a CUDA graph.

Once a Lizard model's sliding windows are full, every layer's state has a fixed shape (gated
``F x (V+1)`` state plus the last ``w`` keys, values, features and log-gates), so the step --
feature maps, gates, window attention, state update, MLPs, logits -- can be recorded once and
replayed: one graph launch per token instead of tens of small kernel launches per layer from
Python, which is what bounds a small model's decoding on most hosts. The states live in static
buffers that each replay updates in place; the replay reads the token and its position from static
inputs and writes the last position's logits to a static output.

    decoder = CudaGraphDecoder(model, cache)           # after a prefill of >= window tokens
    logits = decoder.step(next_token)                  # (B, vocab), valid until the next step

:func:`generate` wraps prefill, the eager steps needed to fill the window, capture and sampling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lizardlm.cache import LizardCache, LizardCacheLayer
from lizardlm.errors import LizardError
from lizardlm.models import is_lizard_model
from lizardlm.ops import LizardState


class CudaGraphDecoder:
    """A recorded one-token decoding step of a pure-Lizard model on CUDA, bound to ``cache``.

    ``cache`` must hold every layer's state with a full window (``cache.get_seq_length() >=
    window_size`` after the prefill); the decoder then owns the state tensors. Batch size is that of
    the cache. A left-padded batch's padding must have left every window; the decoder then takes the
    padding over from the cache (each row's position counts from its first real token).
    """

    def __init__(self, model, cache: LizardCache) -> None:
        _check_graphable(model, cache)
        self.model, self.cache = model, cache
        first = cache.layers[0].state
        batch, device = first.kv_state.shape[0], first.kv_state.device
        self.padding = torch.zeros(batch, 1, dtype=torch.long, device=device)
        if cache.padding is not None:  # no window holds padding any more: only the positions need it
            self.padding.copy_(cache.padding.view(batch, 1))
            cache.padding = None
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.cache_position = torch.zeros(1, dtype=torch.long, device=device)
        self.buffers = [_clone(_buffers(layer)) for layer in cache.layers]  # each layer's state and convolution tails
        for layer, static in zip(cache.layers, self.buffers):
            _bind(layer, static)
        self.graph = torch.cuda.CUDAGraph()
        self.logits = self._capture()

    def _forward(self) -> torch.Tensor:
        """The eager step on the static buffers: forward, then the new states copied into them."""
        out = self.model(self.ids, position_ids=self.positions, cache_position=self.cache_position,
                         past_key_values=self.cache, use_cache=True)
        for layer, static in zip(self.cache.layers, self.buffers):
            _copy(static, _buffers(layer))
            _bind(layer, static)
        return out.logits[:, -1]

    @torch.no_grad()
    def _capture(self) -> torch.Tensor:
        saved = [_clone(static) for static in self.buffers]
        seen = [layer.seen for layer in self.cache.layers]
        self._set_inputs(self.ids)  # the current position; the token does not matter
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy initialisations, allocator pools
            for _ in range(2):
                self._forward()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(self.graph):
            logits = self._forward()
        for static, snapshot, layer, n in zip(self.buffers, saved, self.cache.layers, seen):  # undo the warm-up
            _copy(static, snapshot)
            layer.seen = n
        return logits

    def _set_inputs(self, tokens: torch.Tensor) -> None:
        position = self.cache.get_seq_length()
        self.ids.copy_(tokens.view(self.ids.shape))
        self.positions.copy_(position - self.padding)  # each row counts from its first real token
        self.cache_position.fill_(position)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` (B, 1) at the next position; return the next-token logits (B, vocab).

        The returned tensor is the graph's static output: read or copy it before the next step."""
        if tokens.shape[0] != self.ids.shape[0]:
            raise LizardError(f"the decoder was captured for batch size {self.ids.shape[0]}, got {tokens.shape[0]}")
        if any(layer.state is not static[0] for layer, static in zip(self.cache.layers, self.buffers)):
            raise LizardError("the cache was advanced outside this decoder (an eager forward replaced its states): "
                              "build a new CudaGraphDecoder on it")
        self._set_inputs(tokens)
        self.graph.replay()
        for layer in self.cache.layers:
            layer.seen += 1
        return self.logits


Buffers = tuple[LizardState, tuple[torch.Tensor, ...] | None]  # a layer's state and its convolution tails (or None)


def _buffers(layer: LizardCacheLayer) -> Buffers:
    return layer.state, layer.conv_tails


def _bind(layer: LizardCacheLayer, buffers: Buffers) -> None:
    layer.state, layer.conv_tails = buffers


def _clone(buffers: Buffers) -> Buffers:
    state, tails = buffers
    return (state.map(lambda t: t.clone(memory_format=torch.contiguous_format)),
            None if tails is None else tuple(t.clone() for t in tails))


def _copy(dst: Buffers, src: Buffers) -> None:
    for d, s in zip(_tensors(dst), _tensors(src), strict=True):
        d.copy_(s)


def _tensors(buffers: Buffers) -> list[torch.Tensor]:
    state, tails = buffers
    return [*state.tensors(), *(tails or ())]


def check_model(model) -> None:
    """Refuse what cannot be recorded, before any work: a model that is not Lizard (convert it
    first: ``lizardlm linearize``, or ``--convert``), or a hybrid one (softmax layers keep a
    growing key/value cache)."""
    if not is_lizard_model(model):
        raise LizardError(f"CUDA-graph decoding needs a Lizard model, got {type(model).__name__} "
                          "(linearize it first, or pass --convert)")
    if model.config.lizard["softmax_layers"]:
        raise LizardError("CUDA-graph decoding needs every layer to be Lizard: softmax layers keep a growing "
                          "key/value cache (this model keeps some; decode it without --cuda-graph)")


def _check_graphable(model, cache: LizardCache) -> None:
    check_model(model)
    if any(not isinstance(layer, LizardCacheLayer) for layer in cache.layers):
        raise LizardError("CUDA-graph decoding needs every layer to be Lizard: this cache keeps softmax layers")
    states = [layer.state for layer in cache.layers]
    if any(s is None for s in states):
        raise LizardError("CUDA-graph decoding starts after a prefill: the cache is empty")
    window = model.config.lizard["window_size"]
    if any(s.keys.shape[2] < window for s in states):
        raise LizardError(f"CUDA-graph decoding needs full windows: {cache.get_seq_length()} tokens seen, "
                          f"window {window} (decode eagerly until then; `generate` does)")
    if cache.padding_in_window():
        raise LizardError("CUDA-graph decoding needs windows free of padding: a left-padded row's padding is still in "
                          "its window (decode eagerly until it has left; `generate` does)")
    if not states[0].kv_state.is_cuda:
        raise LizardError("CUDA-graph decoding needs the model and cache on a CUDA device")


Sampler = Callable[[torch.Tensor], torch.Tensor]


def greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1, keepdim=True)


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, sample: Sampler = greedy,
             on_token: Callable[[torch.Tensor], None] | None = None,
             eos_token_id: int | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``input_ids`` (B, T) followed by up to ``max_new_tokens`` tokens: prefill, eager steps until
    the windows are full (and free of a left-padded batch's padding, ``attention_mask``), then
    CUDA-graph replays. ``sample`` maps logits (B, vocab) to tokens (B, 1); ``on_token`` sees each
    new (B, 1) token; generation stops early once every row has produced ``eos_token_id``."""
    check_model(model)
    if not input_ids.is_cuda:
        raise LizardError("CUDA-graph generation needs the model and inputs on a CUDA device")
    cache = LizardCache.for_model(model)
    logits = model(input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True).logits[:, -1]
    window = model.config.lizard["window_size"]
    out, decoder = [input_ids], None
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for i in range(max_new_tokens):
        token = sample(logits)
        out.append(token)
        if on_token is not None:
            on_token(token)
        if eos_token_id is not None:
            done |= token.view(-1) == eos_token_id
        if i == max_new_tokens - 1 or (eos_token_id is not None and bool(done.all())):
            break
        if decoder is None and cache.get_seq_length() >= window and not cache.padding_in_window():
            decoder = CudaGraphDecoder(model, cache)
        if decoder is not None:
            logits = decoder.step(token)
        else:
            logits = model(token, past_key_values=cache, use_cache=True).logits[:, -1]
    return torch.cat(out, dim=1)
