"""CUDA-graph decoding: what it refuses, on any machine (the replay itself is checked in tests/gpu)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import lizardlm
from lizardlm import LizardCache, LizardConfig
from lizardlm.cache import CACHE_KWARG
from lizardlm.cli import main as cli_main
from lizardlm.errors import LizardError
from lizardlm import graph_decode
from lizardlm.graph_decode import CudaGraphDecoder

CONFIG = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
              vocab_size=97, max_position_embeddings=4096, attn_implementation="sdpa")


def model_and_cache(prompt_len: int, softmax_layers=()):
    torch.manual_seed(0)
    model = lizardlm.convert(LlamaForCausalLM(LlamaConfig(**CONFIG)),
                             LizardConfig(window_size=8, num_meta_tokens=2, feature_dim=8, softmax_layers=list(softmax_layers)))
    cache = LizardCache.for_model(model)
    if prompt_len:
        with torch.no_grad():
            model(torch.randint(1, 97, (1, prompt_len)), **{CACHE_KWARG: cache}, use_cache=True)
    return model.eval(), cache


@pytest.mark.parametrize("prompt_len, softmax_layers, message", [
    (0, (), "cache is empty"),
    (5, (), "full windows: 5 tokens seen, window 8"),
    (12, (1,), "every layer to be Lizard"),
    (12, (), "on a CUDA device"),
])
def test_decoder_refuses_what_it_cannot_record(prompt_len, softmax_layers, message):
    model, cache = model_and_cache(prompt_len, softmax_layers)
    with pytest.raises(LizardError, match=message):
        CudaGraphDecoder(model, cache)


def test_decoder_waits_for_padding_to_leave_the_windows():
    """A recorded step has no padding mask: a left-padded batch is recorded once no window holds padding
    (here, past that check, only the CPU tensors stop it)."""
    model, cache = model_and_cache(0)
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[1, :9] = 0  # row 1: 5 real tokens, so 3 of the window's 8 are padding
    with torch.no_grad():
        model(torch.randint(1, 97, (2, 14)), attention_mask=mask, **{CACHE_KWARG: cache}, use_cache=True)
        with pytest.raises(LizardError, match="padding is still in its window"):
            CudaGraphDecoder(model, cache)
        for _ in range(3):
            assert cache.padding_in_window()
            model(torch.randint(1, 97, (2, 1)), **{CACHE_KWARG: cache}, use_cache=True)
    assert not cache.padding_in_window()
    with pytest.raises(LizardError, match="on a CUDA device"):
        CudaGraphDecoder(model, cache)


def test_decoder_refuses_a_cache_with_softmax_layers_for_a_pure_lizard_model():
    model, _ = model_and_cache(0)
    with pytest.raises(LizardError, match="this cache keeps softmax layers"):
        CudaGraphDecoder(model, LizardCache(2, softmax_layers=[1]))


def test_decoder_refuses_a_softmax_model():
    teacher = LlamaForCausalLM(LlamaConfig(**CONFIG))
    with pytest.raises(LizardError, match="needs a Lizard model"):
        CudaGraphDecoder(teacher, LizardCache(2))


@pytest.mark.parametrize("softmax_layers, message", [((), "on a CUDA device"), ((1,), "every layer to be Lizard")])
def test_generate_refuses_before_any_work(softmax_layers, message):
    """Hybrid models and CPU inputs are refused up front, not after the prefill."""
    model, _ = model_and_cache(0, softmax_layers)
    with pytest.raises(LizardError, match=message):
        graph_decode.generate(model, torch.randint(1, 97, (1, 12)), 5)


def test_generate_refuses_a_softmax_model_with_the_way_out():
    teacher = LlamaForCausalLM(LlamaConfig(**CONFIG))
    with pytest.raises(LizardError, match="needs a Lizard model, got LlamaForCausalLM .linearize it first"):
        graph_decode.generate(teacher, torch.randint(1, 97, (1, 12)), 5)


def test_cli_refuses_cuda_graph_off_cuda_before_loading(capsys):
    code = cli_main(["generate", "--model", "/nonexistent/model", "--prompt", "hi", "--cuda-graph"])
    assert code != 0
    assert "--cuda-graph needs --device cuda" in capsys.readouterr().err
