"""Modules that make up a Lizard attention layer; each composes ops from :mod:`lizardlm.ops`."""

from lizardlm.layers.attention import LizardAttention, attention_transfer
from lizardlm.layers.feature_map import HedgehogFeatureMap
from lizardlm.layers.gate import DecayGate, StrengthGate

__all__ = ["DecayGate", "HedgehogFeatureMap", "LizardAttention", "StrengthGate", "attention_transfer"]
