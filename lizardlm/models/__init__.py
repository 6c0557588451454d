"""Lizard causal LM classes for each supported teacher architecture."""

from lizardlm.models.modeling import (
    ARCHITECTURES,
    LizardModelMixin,
    find_architecture,
    is_lizard_model,
    register_auto_classes,
    supported_names,
)

__all__ = [
    "ARCHITECTURES",
    "LizardModelMixin",
    "find_architecture",
    "is_lizard_model",
    "register_auto_classes",
    "supported_names",
]
