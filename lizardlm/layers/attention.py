"""The Lizard attention layer that replaces a teacher's softmax self-attention."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from lizardlm.cache import LizardCache, given_cache
from lizardlm.config import LizardConfig
from lizardlm.layers.feature_map import HedgehogFeatureMap
from lizardlm.layers.gate import DecayGate, StrengthGate
from lizardlm.layers.long_adapter import LongAdapter
from lizardlm.layers.short_conv import ShortConvolution
from lizardlm.ops import linear_state, window_attention_chunk
from lizardlm.ops.lizard import drop_padding
from lizardlm.ops.dispatch import lizard_attention, lizard_step


def teacher_window(config, layer_idx: int) -> int | None:
    """The teacher's own sliding window for this layer (Mistral, Qwen2 sliding layers), if any."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return config.sliding_window if layer_types[layer_idx] == "sliding_attention" else None
    return getattr(config, "sliding_window", None)


@dataclass
class StateHandoff:
    """The linear memory a forward without a cache starts from and the one it leaves (stage 2's state
    passing, :mod:`lizardlm.train.state_passing`): ``initial`` ``(B, H, F, V + 1)`` or None (no
    history), a constant; ``final`` the memory after the last token, detached, set by the forward."""

    initial: torch.Tensor | None = None
    final: torch.Tensor | None = None


class LizardAttention(nn.Module):
    """Gated linear attention + sliding-window softmax with meta memory, on the teacher's q/k/v/o.

    Every form is configuration (:class:`~lizardlm.config.LizardConfig`). Parameters of its own (all
    small): ``feature_map_q`` (per head) / ``feature_map_k`` (per key/value head); ``gate`` (a
    :class:`~lizardlm.layers.gate.DecayGate` of the configured design); ``write_gate`` and
    ``read_gate`` (:class:`~lizardlm.layers.gate.StrengthGate` or None); ``value_map`` (key/value heads
    x V x V, the map on the values the linear memory stores, or None); ``short_conv_q`` / ``short_conv_k``
    (:class:`~lizardlm.layers.short_conv.ShortConvolution` on the linear branch's queries / keys, or None);
    ``long_q`` / ``long_k`` / ``long_v`` / ``long_o`` (:class:`~lizardlm.layers.long_adapter.LongAdapter` added
    to that projection on the tokens at least a window into their sequence, or None); meta memory,
    either ``meta_k``/``meta_v``/``meta_bias`` (``m`` key/value slots per head with a logit bias each)
    or ``sink_logits`` (heads x m); and ``beta`` (per-head log-scale of the linear branch, shared form)
    or ``alpha`` (per-head weight of the window branch, sum form; with ``window_size`` 0 it is a fixed
    zero buffer, so ``y = y_gla`` exactly). ``q_proj``/``k_proj``/``v_proj``/
    ``o_proj`` keep the teacher's names, shapes and biases, so teacher checkpoints load unchanged.

    ``capture`` (None by default) is called as ``capture(layer, inputs)`` with the exact inputs of the
    attention op on every forward (``q``, ``k``, ``v``, ``fq``, ``fk``, ``g`` and the op's keyword
    arguments); :mod:`lizardlm.eval.diagnostics` reads them. It changes nothing the layer computes.

    ``handoff`` (None by default, a :class:`StateHandoff` under stage 2's state passing): a forward
    without a cache starts from ``handoff.initial`` instead of an empty memory (the window starts
    empty) and stores the memory it leaves in ``handoff.final``.

    In *attention transfer* mode (see :func:`attention_transfer`) the layer also computes the
    teacher's softmax attention on the same input, stores ``mse(student, teacher)`` in
    ``self.transfer_loss`` and passes the teacher's output on, so every layer sees teacher inputs.
    No graph crosses layers, so ``d(sum_l loss_l)/d theta_l = d loss_l / d theta_l``: with
    ``transfer_backward`` the layer backpropagates its own loss at once and keeps it detached, and
    only one layer's intermediates are alive at a time.
    """

    def __init__(
        self, config, layer_idx: int, lizard: LizardConfig, projections: dict[str, nn.Linear] | None = None
    ) -> None:
        """``projections``: the teacher's ``q_proj``/``k_proj``/``v_proj``/``o_proj`` to share (not
        copy); new ones are created from ``config`` when None (e.g. before loading a checkpoint)."""
        super().__init__()
        self.layer_idx = layer_idx
        self.lizard = lizard
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.teacher_window = teacher_window(config, layer_idx)
        if projections is None:
            projections = self._new_projections(config)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, name, projections[name])
        factory = dict(device=self.q_proj.weight.device, dtype=self.q_proj.weight.dtype)

        self.feature_map_q = HedgehogFeatureMap(self.num_heads, self.head_dim, lizard.feature_dim,
                                                lizard.read_sharpness).to(**factory)
        self.feature_map_k = HedgehogFeatureMap(self.num_kv_heads, self.head_dim, lizard.feature_dim).to(**factory)
        self.gate = None if lizard.gate == "none" else DecayGate(
            lizard.gate, config.hidden_size, self.num_heads, self.num_kv_heads, lizard.gate_temperature,
            lizard.gate_init, lizard.decay_scale,
        ).to(**factory)
        self.write_gate = (StrengthGate(config.hidden_size, self.num_kv_heads, lizard.write_contrast).to(**factory)
                           if lizard.write_gate == "head" else None)
        self.read_gate = StrengthGate(config.hidden_size, self.num_heads).to(**factory) if lizard.read_gate == "head" else None
        self.value_map = (nn.Parameter(torch.empty(self.num_kv_heads, self.head_dim, self.head_dim, **factory))
                          if lizard.value_map == "head" else None)
        c = lizard.short_conv
        self.short_conv_q = ShortConvolution(self.num_heads, self.head_dim, c).to(**factory) if c else None
        self.short_conv_k = ShortConvolution(self.num_kv_heads, self.head_dim, c).to(**factory) if c else None
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            proj = getattr(self, name)
            r = lizard.long_adapter if name in lizard.long_adapter_targets else 0
            setattr(self, f"long_{name[0]}", LongAdapter(proj.in_features, proj.out_features, r, lizard.long_adapter_alpha)
                    .to(**factory) if r else None)
        m = lizard.num_meta_tokens
        kv_slots = bool(m) and lizard.meta == "kv"
        self.meta_k = nn.Parameter(torch.empty(self.num_heads, m, self.head_dim, **factory)) if kv_slots else None
        self.meta_v = nn.Parameter(torch.empty(self.num_heads, m, self.head_dim, **factory)) if kv_slots else None
        self.meta_bias = nn.Parameter(torch.empty(self.num_heads, m, **factory)) if kv_slots else None
        sinks = bool(m) and lizard.meta == "sink"
        self.sink_logits = nn.Parameter(torch.empty(self.num_heads, m, **factory)) if sinks else None
        shared = lizard.combine == "shared"
        self.beta = nn.Parameter(torch.empty(self.num_heads, **factory)) if shared else None
        if shared:
            self.alpha = None
        elif lizard.window_size:
            self.alpha = nn.Parameter(torch.empty(self.num_heads, **factory))
        else:  # no window branch: the op runs a one-token window weighted by a fixed alpha = 0
            self.register_buffer("alpha", torch.zeros(self.num_heads, **factory), persistent=False)
        self.attention_transfer = False
        self.transfer_backward = False
        self.transfer_loss: torch.Tensor | None = None
        self.capture: Callable[[LizardAttention, dict], None] | None = None
        self.handoff: StateHandoff | None = None
        self.reset_lizard_parameters()

    def _new_projections(self, config) -> dict[str, nn.Linear]:
        bias = getattr(config, "attention_bias", False)
        qkv_bias = bias or config.model_type.endswith("qwen2")  # Qwen2: biased q/k/v, unbiased o
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {
            "q_proj": nn.Linear(config.hidden_size, q_out, bias=qkv_bias),
            "k_proj": nn.Linear(config.hidden_size, kv_out, bias=qkv_bias),
            "v_proj": nn.Linear(config.hidden_size, kv_out, bias=qkv_bias),
            "o_proj": nn.Linear(q_out, config.hidden_size, bias=bias),
        }

    def lizard_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters attention transfer trains (everything but the teacher's projections)."""
        for name, param in self.named_parameters():
            if not name.split(".")[0].endswith("_proj"):
                yield param

    def reset_lizard_parameters(self) -> None:
        """Feature maps at identity, gate at ``gate_init``, meta keys small and random, meta values
        zero and meta logits 0 (slots start as attention sinks that add nothing), value map and short
        convolutions at identity, long adapters at zero, sink logits 0,
        linear-branch scale e^0 = 1 (shared form), alpha at ``alpha_init`` (sum form; 0 without a window)."""
        self.feature_map_q.reset_parameters()
        self.feature_map_k.reset_parameters()
        if self.gate is not None:
            self.gate.reset_parameters()
        for module in (self.write_gate, self.read_gate, self.short_conv_q, self.short_conv_k,
                       self.long_q, self.long_k, self.long_v, self.long_o):
            if module is not None:
                module.reset_parameters()
        with torch.no_grad():
            if self.beta is not None:
                self.beta.zero_()
            if self.alpha is not None:
                self.alpha.fill_(self.lizard.alpha_init if self.lizard.window_size else 0.0)
            if self.sink_logits is not None:
                self.sink_logits.zero_()
            if self.value_map is not None:
                self.value_map.copy_(torch.eye(self.head_dim).expand_as(self.value_map))
            if self.meta_k is not None:
                self.meta_k.normal_(0.0, 0.02)
                self.meta_v.zero_()
                self.meta_bias.zero_()

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        cache=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        B, T, _ = hidden_states.shape
        cache = given_cache(past_key_values, cache)
        cache_layer = cache.layers[self.layer_idx] if cache is not None else None
        far = self._far(T, hidden_states.device, kwargs.get("position_ids"), cache_layer) if self.lizard.long_adapter else None
        (q, q_teacher), (k, k_teacher), (v, v_teacher) = (self._project(name, hidden_states, far)
                                                          for name in ("q_proj", "k_proj", "v_proj"))
        adapted_qk = q is not q_teacher or k is not k_teacher
        q, k, v, q_teacher, k_teacher, v_teacher = (t.view(B, T, -1, self.head_dim).transpose(1, 2)
                                                    for t in (q, k, v, q_teacher, k_teacher, v_teacher))
        cos, sin = position_embeddings
        q_rope, k_rope = apply_rotary_pos_emb(q, k, cos, sin)
        rope = self.lizard.rope
        q_win, k_win = (q, k) if rope == "none" else (q_rope, k_rope)
        q_lin, k_lin = (q_rope, k_rope) if rope == "both" else (q, k)
        key_start = cache.key_start(self.layer_idx) if isinstance(cache, LizardCache) else None  # left padding
        if self.short_conv_q is not None:
            q_lin, k_lin = self._short_convs(q_lin, k_lin, cache_layer, key_start)
        fq = self.feature_map_q(q_lin)
        if self.beta is not None:
            fq = fq * self.beta.exp().to(q.dtype)[:, None, None]
        if self.read_gate is not None:
            fq = fq * self.read_gate(hidden_states).to(fq.dtype)[..., None]
        fk = self.feature_map_k(k_lin)
        if self.write_gate is not None:
            fk = fk * self.write_gate(hidden_states).to(fk.dtype)[..., None]
        g = self.gate(hidden_states, k).expand(B, self.num_heads, T) if self.gate is not None else None
        kw = dict(
            window=self.lizard.window_size or 1, scale=self.scaling, meta_k=self.meta_k, meta_v=self.meta_v,
            meta_bias=self.meta_bias if self.sink_logits is None else self.sink_logits,
            combine=self.lizard.combine, alpha=self.alpha, value_map=self.value_map, key_start=key_start,
        )
        if self.capture is not None:
            self.capture(self, dict(q=q_win, k=k_win, v=v, fq=fq, fk=fk, g=g, **kw))

        state = cache_layer.state if cache_layer is not None else None
        handoff = self.handoff if cache_layer is None else None
        if handoff is not None and handoff.initial is not None:
            state = linear_state(handoff.initial, q_win, k_win, v, fk)
        if state is not None and T == 1:
            y, new_state = lizard_step(q_win, k_win, v, fq, fk, g, state=state, backend=self.lizard.backend, **kw)
        else:  # Triton kernels on CUDA from any constant state (training, a prefill going on), torch otherwise
            y, new_state = lizard_attention(
                q_win, k_win, v, fq, fk, g, state=state, chunk_size=self.lizard.chunk_size,
                backend=self.lizard.backend, need_state=cache_layer is not None or handoff is not None, **kw,
            )
        if cache_layer is not None:
            cache_layer.advance(new_state, T)
        if handoff is not None:
            handoff.final = new_state.kv_state.detach()
        out, _ = self._project("o_proj", y.transpose(1, 2).reshape(B, T, -1), far)

        if not self.attention_transfer:
            return out, None
        with torch.no_grad():  # the teacher's attention on its own projections
            if adapted_qk:
                q_rope, k_rope = apply_rotary_pos_emb(q_teacher, k_teacher, cos, sin)
            target = self.o_proj(self._teacher_attention(q_rope, k_rope, v_teacher).transpose(1, 2).reshape(B, T, -1))
        loss = F.mse_loss(out.float(), target.float())
        if self.transfer_backward and loss.requires_grad:
            with torch.autocast(out.device.type, enabled=False):  # backward runs outside autocast
                loss.backward()
            loss = loss.detach()
        self.transfer_loss = loss
        return target, None

    def _project(self, name: str, x: torch.Tensor, far: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(student, teacher)``: projection ``name`` of ``x`` with its long adapter on the ``far`` tokens, and
        without (the same tensor where it has none)."""
        plain = getattr(self, name)(x)
        adapter = getattr(self, f"long_{name[0]}")
        return (plain if adapter is None or far is None else plain + adapter(x, far)), plain

    def _far(self, T: int, device: torch.device, position_ids: torch.Tensor | None, cache_layer) -> torch.Tensor:
        """``(B or 1, T)`` bool: the tokens the long adapters act on, those at position ``p >= w`` in their
        sequence. ``p``: the model's ``position_ids`` (under left padding each row counts from its first real
        token), else the tokens this layer's cache has seen plus ``0 .. T-1``; with a memory handed in (state
        passing) every token is far, as the memory holds the document before it."""
        if cache_layer is None and self.handoff is not None and self.handoff.initial is not None:
            return torch.ones(1, T, dtype=torch.bool, device=device)
        if position_ids is None:
            seen = cache_layer.seen if cache_layer is not None else 0
            position_ids = torch.arange(seen, seen + T, device=device)[None]
        return position_ids >= self.lizard.window_size

    def _short_convs(self, q: torch.Tensor, k: torch.Tensor, cache_layer, key_start: torch.Tensor | None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The linear branch's queries and keys through the short convolutions, going on from the cache's
        last inputs (zeros at a sequence's start, and in place of left padding: ``key_start`` counts from the
        window's keys the state holds), which it then updates."""
        held = cache_layer.state.keys.shape[2] if cache_layer is not None and cache_layer.state is not None else 0
        q, k = drop_padding(q, key_start, held), drop_padding(k, key_start, held)
        tails = cache_layer.conv_tails if cache_layer is not None else None
        q, q_tail = self.short_conv_q(q, tails[0] if tails is not None else None)
        k, k_tail = self.short_conv_k(k, tails[1] if tails is not None else None)
        if cache_layer is not None:
            cache_layer.conv_tails = (q_tail, k_tail)
        return q, k

    def _teacher_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The teacher's causal softmax attention (its own sliding window, if it has one)."""
        if self.teacher_window is not None and q.shape[2] > self.teacher_window:
            return window_attention_chunk(q, k, v, self.teacher_window, self.scaling, chunk_size=256)[0]
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling, enable_gqa=True)


@contextlib.contextmanager
def attention_transfer(model: nn.Module, backward: bool = False) -> Iterator[list[LizardAttention]]:
    """Put every Lizard layer of ``model`` in attention-transfer mode; yields the layers.

    ``backward``: each layer backpropagates its ``transfer_loss`` during the forward pass (gradients
    accumulate into ``.grad`` as ``loss.backward()`` on the sum would put them) and keeps it detached.
    """
    layers = [m for m in model.modules() if isinstance(m, LizardAttention)]
    for layer in layers:
        layer.attention_transfer = True
        layer.transfer_backward = backward
    try:
        yield layers
    finally:
        for layer in layers:
            layer.attention_transfer = False
            layer.transfer_backward = False
            layer.transfer_loss = None
