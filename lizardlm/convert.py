"""Turn a pretrained teacher into a Lizard model, in place."""

from __future__ import annotations

from transformers import PreTrainedModel

from lizardlm.config import LizardConfig
from lizardlm.errors import UnsupportedModelError
from lizardlm.models.modeling import Architecture, find_architecture, is_lizard_model, supported_names

# Teacher config entries that describe where the weights came from, not the model.
_DROPPED_CONFIG_KEYS = ("model_type", "architectures", "quantization_config", "transformers_version")


def check_convertible(model: PreTrainedModel, config: LizardConfig) -> Architecture:
    """The architecture of ``model`` if :func:`convert` can convert it with ``config``; raises otherwise."""
    if is_lizard_model(model):
        raise UnsupportedModelError(f"{type(model).__name__} is already a Lizard model")
    arch = find_architecture(model)
    if arch is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise UnsupportedModelError(
            f"cannot convert {type(model).__name__} (model_type {model_type!r}); "
            f"supported architectures: {supported_names()}"
        )
    num_layers = model.config.num_hidden_layers
    bad = [i for i in config.softmax_layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"softmax_layers {bad} out of range for a model with {num_layers} layers")
    return arch


def convert(model: PreTrainedModel, config: LizardConfig | None = None) -> PreTrainedModel:
    """Replace every self-attention of ``model`` (except ``config.softmax_layers``) by a
    :class:`~lizardlm.layers.LizardAttention` that shares the teacher's q/k/v/o projections.

    The model object is converted in place (no weight is copied) and returned; it becomes a
    ``Lizard<Arch>ForCausalLM`` whose config carries ``config`` under ``lizard``. Anything but a
    ``LlamaForCausalLM``, ``MistralForCausalLM`` or ``Qwen2ForCausalLM`` is refused before any change.
    """
    config = config or LizardConfig()
    arch = check_convertible(model, config)
    teacher_config = {k: v for k, v in model.config.to_dict().items() if k not in _DROPPED_CONFIG_KEYS}
    lizard_config = arch.config_class(**teacher_config, lizard=config.to_dict())
    lizard_config._attn_implementation = "sdpa"
    model.__class__ = arch.model_class
    model.config = model.model.config = lizard_config
    model._install_lizard_attention(config, reuse_projections=True)
    return model
