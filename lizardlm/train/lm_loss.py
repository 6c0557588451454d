"""Stage 2's per-token next-token loss with the LM head taken a chunk of positions at a time.

``nll[b, t] = CE(W h_{b,t}, y_{b,t+1})`` over the decoder's last hidden states ``h`` and the output
embedding ``W`` (``V x D``). Computed whole, the ``(rows, length, V)`` logits and their float32
cross-entropy buffers are the largest tensors of a small model's step (8 x 2K rows x 49,152
vocabulary: 1.6 GB of bf16 logits, and float32 copies, softmax and gradient besides; Llama-3's 128K
vocabulary multiplies that by 2.6). Here each chunk's logits are recomputed in the backward
(``torch.utils.checkpoint``), so only one chunk's exist at a time; the loss is the same sum.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lizardlm.data.packing import IGNORE_INDEX


def chunked_target_nll(model: Any, ids: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """``(B, T - 1)`` next-token NLL of ``ids`` ``(B, T)`` against ``targets`` ``(B, T - 1)`` (0 where
    ``IGNORE_INDEX``), in float32 or the model's wider dtype; ``model`` a Hugging Face causal LM (or a PEFT
    model around one)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    head = base.get_output_embeddings()

    def part_nll(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = head(h)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 up, float64 kept
        return F.cross_entropy(logits.transpose(1, 2), y, ignore_index=IGNORE_INDEX, reduction="none")

    parts = [checkpoint(part_nll, hidden[:, s:s + chunk], targets[:, s:s + chunk], use_reentrant=False,
                        preserve_rng_state=False)  # no randomness; and a CUDA graph may record it
             for s in range(0, hidden.shape[1], chunk)]
    return torch.cat(parts, dim=1)
