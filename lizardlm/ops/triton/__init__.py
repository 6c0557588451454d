"""Triton (CUDA) path of the Lizard attention op. Importing this package needs ``triton``."""

from lizardlm.ops.triton.lizard import LizardAttentionFunction, lizard_attention_cuda
from lizardlm.ops.triton.step import lizard_step_cuda

__all__ = ["LizardAttentionFunction", "lizard_attention_cuda", "lizard_step_cuda"]
