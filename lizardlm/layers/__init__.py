"""Modules that make up a Lizard attention layer; each composes ops from :mod:`lizardlm.ops`."""

from lizardlm.layers.attention import LizardAttention, attention_transfer
from lizardlm.layers.feature_map import HedgehogFeatureMap
from lizardlm.layers.gate import DecayGate, WriteGate

__all__ = ["DecayGate", "HedgehogFeatureMap", "LizardAttention", "WriteGate", "attention_transfer"]
