"""Hugging Face model classes of converted (Lizard) models.

For each supported teacher architecture ``X`` there is ``LizardXConfig`` (the teacher's config
plus a ``lizard`` dict holding a :class:`~lizardlm.config.LizardConfig`, ``model_type``
``lizard_x``) and ``LizardXForCausalLM`` (the teacher's class with Lizard attention in every
layer not listed in ``softmax_layers``). Both are registered with the ``Auto*`` classes when this
module is imported (any use of a Lizard model does), so ``AutoModelForCausalLM.from_pretrained(dir)``
loads them; a saved model also loads without it, through ``trust_remote_code``
(:mod:`lizardlm.models.modeling_lizard`).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from lizardlm.cache import CACHE_KWARG, LizardCache, given_cache
from lizardlm.config import LizardConfig
from lizardlm.errors import UnsupportedInputError
from lizardlm.layers import LizardAttention

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
REMOTE_CODE = Path(__file__).with_name("modeling_lizard.py")


class LizardModelMixin:
    """What every Lizard causal LM adds to its teacher class."""

    config: object
    teacher_attention_class: type  # the teacher's attention module (set per architecture)

    @property
    def lizard_config(self) -> LizardConfig:
        return LizardConfig.from_dict(self.config.lizard)

    def set_decay_scale(self, scale: float) -> None:
        """Multiply every layer's log-decays by ``scale`` from now on (``LizardConfig.decay_scale``,
        recorded in the config, so a saved model keeps it): ``scale < 1`` stretches every half-life by
        ``1 / scale`` for prompts longer than training; 1 is the model as trained. ValueError for a model
        without a decay gate (``gate='none'``, e.g. LoLCATs), whose linear branch does not decay."""
        for layer in self._record_knob("decay_scale", scale):
            if layer.gate is not None:
                layer.gate.scale = float(scale)

    def set_write_contrast(self, contrast: float) -> None:
        """Multiply every layer's write-gate logits by ``contrast`` from now on
        (``LizardConfig.write_contrast``, recorded in the config, so a saved model keeps it): ``contrast
        > 1`` widens the gap between what the tokens write, for prompts longer than training; 1 is the
        model as trained. ValueError for a model without a write gate."""
        for layer in self._record_knob("write_contrast", contrast):
            if layer.write_gate is not None:
                layer.write_gate.contrast = float(contrast)

    def set_read_sharpness(self, sharpness: float) -> None:
        """Multiply every layer's query feature-map logits by ``sharpness`` from now on
        (``LizardConfig.read_sharpness``, recorded in the config, so a saved model keeps it): ``sharpness
        > 1`` sharpens what each query reads from the linear memory; 1 is the model as trained."""
        for layer in self._record_knob("read_sharpness", sharpness):
            layer.feature_map_q.sharpness = float(sharpness)

    def set_window_size(self, window: int) -> None:
        """Run every layer's exact softmax window over the last ``window`` tokens from now on
        (``LizardConfig.window_size``, recorded in the config, so a saved model keeps it). A window wider than
        training reads more of the recent text exactly; the cache stays constant (``window`` keys and values a
        layer). In our form the tokens enter the linear memory as they leave the window, and the long adapter
        acts from position ``window`` on, so both move with it. ValueError for a model without a window branch
        (``window_size`` 0) or a window under 1."""
        if window == self.lizard_config.window_size:
            return
        if not self.lizard_config.window_size:
            raise ValueError("window_size: this model has no window branch (window_size 0)")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window_size must be an integer >= 1, got {window!r}")
        layers = self._record_knob("window_size", window)
        config = self.lizard_config  # the recorded one, shared by every layer
        for layer in layers:
            layer.lizard = config

    def _record_knob(self, name: str, value: float) -> list[LizardAttention]:
        """Record inference knob ``name`` = ``value`` in the config (ValueError, changing nothing, where
        :class:`LizardConfig` refuses it) and return the Lizard layers that are to run at it."""
        self.config.lizard = LizardConfig.from_dict({**self.config.lizard, name: value}).to_dict()
        return [m for m in self.modules() if isinstance(m, LizardAttention)]

    def lizard_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The parameters Lizard adds (feature maps, gates, meta memory, beta), with their names."""
        for prefix, module in self.named_modules():
            if isinstance(module, LizardAttention):
                ids = {id(p) for p in module.lizard_parameters()}
                for name, param in module.named_parameters():
                    if id(param) in ids:
                        yield f"{prefix}.{name}", param

    def lizard_parameters(self) -> Iterator[nn.Parameter]:
        for _, param in self.lizard_named_parameters():
            yield param

    def _install_lizard_attention(self, lizard: LizardConfig, reuse_projections: bool) -> None:
        for idx, layer in enumerate(self.model.layers):
            if idx in lizard.softmax_layers:
                continue
            teacher = layer.self_attn
            projections = {n: getattr(teacher, n) for n in PROJECTIONS} if reuse_projections else None
            layer.self_attn = LizardAttention(self.config, idx, lizard, projections)

    def revert_to_softmax(self, layers: list[int]) -> None:
        """Give ``layers`` back the teacher's softmax attention (sharing the q/k/v/o projections, the
        Lizard parameters dropped) and record them in ``config.lizard["softmax_layers"]``, so that the
        saved model rebuilds the same hybrid."""
        for idx in layers:
            decoder = self.model.layers[idx]
            lizard = decoder.self_attn
            if not isinstance(lizard, LizardAttention):
                raise ValueError(f"layer {idx} is not a Lizard layer")
            softmax = self.teacher_attention_class(self.config, idx)
            for name in PROJECTIONS:
                setattr(softmax, name, getattr(lizard, name))
            decoder.self_attn = softmax.to(lizard.q_proj.weight.device)
        self.config.lizard["softmax_layers"] = sorted({*self.config.lizard["softmax_layers"], *layers})

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, LizardAttention):  # after its children got the generic init
            module.reset_lizard_parameters()

    @property
    def is_gradient_checkpointing(self) -> bool:
        """transformers' deprecated name, which peft still reads: answered without its FutureWarning."""
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``; a lizardlm run directory gives the teacher with the trained
        Lizard parameters, the base its ``adapter/`` applies to (``AutoPeftModelForCausalLM`` loads it so)."""
        path = Path(str(pretrained_model_name_or_path))
        if (path / "run.json").is_file():
            from lizardlm.train.rundir import load_run

            dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
            return load_run(path, dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32, adapter=False)[0]
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """``PreTrainedModel.save_pretrained``, plus the remote code (:mod:`lizardlm.models.modeling_lizard`)
        and ``auto_map`` that let transformers load the directory with ``trust_remote_code=True``."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(save_directory, type(self))

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not create a DynamicCache: forward creates a LizardCache

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=None, cache=None,
                logits_to_keep: int | torch.Tensor = 0, **kwargs):
        """Like the teacher's forward; a :class:`LizardCache` is made only when ``use_cache=True`` is
        passed (``generate`` does): plain scoring calls keep the fast stateless (Triton) path. The
        cache may come as ``cache`` or ``past_key_values`` (the name changed in transformers 5.24).
        ``logits_to_keep`` is named in the signature, as the teacher's is, because ``generate`` looks
        for it there to score only the prompt's last position.

        ``attention_mask`` (B, cached + new tokens) may pad rows on the left (a batch of prompts of
        different lengths, as ``generate`` takes them) or on the right: each row's real tokens get what
        the row alone would. The cache keeps each row's left padding (a call without a cache makes one
        for that); softmax layers of a hybrid model read the mask itself."""
        cache = _checked_cache(given_cache(past_key_values, cache))
        padding = left_padding(attention_mask)
        use_cache = bool(use_cache) or cache is not None
        if cache is None and (use_cache or padding is not None):
            cache = LizardCache.for_model(self)
        new = input_ids if input_ids is not None else kwargs.get("inputs_embeds")  # None: the base model refuses it
        length = 0 if new is None else new.shape[1]  # the new tokens
        if padding is not None:
            _record_padding(cache, padding, attention_mask.shape[1], length)
        attention_mask = None  # Lizard layers read the padding from the cache; they are causal anyway
        if cache is not None and cache.padding is not None:
            seen = cache.get_seq_length()
            steps = torch.arange(seen, seen + length, device=cache.padding.device)
            if kwargs.get("position_ids") is None:  # each row counts from its first real token (meta slots
                kwargs["position_ids"] = (steps[None, :] - cache.padding[:, None]).clamp(min=0)  # have no position)
            if self.config.lizard["softmax_layers"]:  # softmax layers read the mask of every token so far
                attention_mask = (torch.arange(seen + length, device=steps.device)[None, :] >= cache.padding[:, None]).long()
        out = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=use_cache or padding is not None,
            logits_to_keep=logits_to_keep,
            **{CACHE_KWARG: cache},
            **kwargs,
        )
        if not use_cache:  # the cache only carried the padding
            out.past_key_values = None
        return out


def write_remote_code(directory: str | os.PathLike, model_class: type) -> None:
    """Copy the remote-code file into ``directory`` and name its classes in ``config.json``'s ``auto_map``."""
    directory = Path(directory)
    shutil.copyfile(REMOTE_CODE, directory / REMOTE_CODE.name)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    module = REMOTE_CODE.stem
    config["auto_map"] = {
        "AutoConfig": f"{module}.{model_class.config_class.__name__}",
        "AutoModelForCausalLM": f"{module}.{model_class.__name__}",
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _checked_cache(cache: object) -> LizardCache | None:
    """A Lizard model keeps constant-size states, not keys and values: any other cache is refused."""
    if cache is None or isinstance(cache, LizardCache):
        return cache
    raise UnsupportedInputError(
        f"a Lizard model cannot use a {type(cache).__name__}: pass lizardlm.LizardCache.for_model(model), or no cache"
    )


def left_padding(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Each row's padding tokens before its first real one, ``(B,)``, or None where no row starts with
    padding. Padding at the end of a row never affects earlier positions (Lizard layers are causal);
    padding between real tokens is refused."""
    if attention_mask is None or attention_mask.dim() != 2 or bool(attention_mask.all()):
        return None
    real = attention_mask != 0
    started = real.cumsum(-1) > 0
    ended = started & ~real
    if bool((ended.cumsum(-1).bool() & real).any()):
        raise UnsupportedInputError(
            "Lizard models take padding at the start or the end of a row, not between real tokens: "
            "drop the gaps (or run those rows one at a time)"
        )
    padding = (~started).sum(-1)
    return padding if bool(padding.any()) else None


def _record_padding(cache: LizardCache, padding: torch.Tensor, mask_length: int, new_tokens: int) -> None:
    """Keep a left-padded batch's ``padding`` in ``cache``. A later call's mask covers the cached tokens and
    the new ones (as ``generate`` passes it) and must agree with the padding kept so far, except for rows
    that were all padding until now (a chunked prefill whose first chunks hold none of a short prompt)."""
    seen = cache.get_seq_length()
    if mask_length != seen + new_tokens:
        raise UnsupportedInputError(
            f"the attention mask covers {mask_length} tokens, but the cache holds {seen} and {new_tokens} come now: "
            "a left-padded batch needs the mask of every token so far"
        )
    if seen:
        kept = torch.zeros_like(padding) if cache.padding is None else cache.padding.to(padding.device)
        if not bool(torch.where(kept < seen, padding == kept, padding >= kept).all()):
            raise UnsupportedInputError("the attention mask's left padding differs from the one this cache was filled with")
    cache.padding = padding


@dataclass(frozen=True)
class Architecture:
    """A supported teacher architecture and its Lizard counterparts."""

    model_type: str
    teacher_config: type
    teacher_model: type
    config_class: type
    model_class: type


def _make_architecture(model_type: str, teacher_config: type, teacher_model: type) -> Architecture:
    name = teacher_model.__name__.removesuffix("ForCausalLM")
    config_class = strict(
        type(
            f"Lizard{name}Config",
            (teacher_config,),
            {"model_type": f"lizard_{model_type}", "__annotations__": {"lizard": dict | None}, "lizard": None},
        )
    )

    def __init__(self, config) -> None:
        teacher_model.__init__(self, config)
        self._install_lizard_attention(LizardConfig.from_dict(config.lizard), reuse_projections=True)

    attention = getattr(importlib.import_module(teacher_model.__module__), f"{name}Attention")
    model_class = type(
        f"Lizard{name}ForCausalLM",
        (LizardModelMixin, teacher_model),
        {"config_class": config_class, "__init__": __init__, "__module__": __name__, "teacher_attention_class": attention},
    )
    config_class.__module__ = __name__
    return Architecture(model_type, teacher_config, teacher_model, config_class, model_class)


ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        _make_architecture("llama", LlamaConfig, LlamaForCausalLM),
        _make_architecture("mistral", MistralConfig, MistralForCausalLM),
        _make_architecture("qwen2", Qwen2Config, Qwen2ForCausalLM),
    )
}
globals().update({a.config_class.__name__: a.config_class for a in ARCHITECTURES.values()})
globals().update({a.model_class.__name__: a.model_class for a in ARCHITECTURES.values()})


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` know the Lizard model types."""
    for arch in ARCHITECTURES.values():
        AutoConfig.register(arch.config_class.model_type, arch.config_class, exist_ok=True)
        AutoModelForCausalLM.register(arch.config_class, arch.model_class, exist_ok=True)


register_auto_classes()


def is_lizard_model(model: object) -> bool:
    return isinstance(model, LizardModelMixin)


def supported_names() -> str:
    return ", ".join(a.teacher_model.__name__ for a in ARCHITECTURES.values())


def find_architecture(model: PreTrainedModel) -> Architecture | None:
    arch = ARCHITECTURES.get(getattr(model.config, "model_type", None))
    if arch is None or type(model) is not arch.teacher_model:
        return None
    return arch
