"""CUDA-graph decoding: what it refuses, and its static-buffer bookkeeping with a stand-in for the graph, on any
machine (the recorded replay itself is checked in tests/gpu)."""

from __future__ import annotations

from contextlib import nullcontext

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


class _EagerGraph:
    """Stands in for ``torch.cuda.CUDAGraph`` on CPU: a replay runs the decoder's eager step again, after checking
    what a recorded graph relies on: every layer still reads the decoder's static state and convolution tails,
    in the memory they had when the step was recorded; the logits land in the static output."""

    def bind(self, decoder: CudaGraphDecoder) -> None:
        self.decoder = decoder
        self.memory = self._memory()

    def _memory(self) -> list[int]:
        return [t.data_ptr() for static in self.decoder.buffers for t in graph_decode._tensors(static)]

    def replay(self) -> None:
        d = self.decoder
        for layer, (state, tails) in zip(d.cache.layers, d.buffers):
            assert layer.state is state and layer.conv_tails is tails
        assert self._memory() == self.memory
        seen = [layer.seen for layer in d.cache.layers]
        d.logits.copy_(d._forward())
        for layer, n in zip(d.cache.layers, seen):  # a recorded graph runs no Python: `step` counts the token
            layer.seen = n


@pytest.mark.parametrize("extra", [{}, {"short_conv": 3}], ids=["plain", "short_conv"])
@pytest.mark.parametrize("mode", ["lizard", "paper"])
@torch.no_grad()
def test_decoder_steps_through_its_static_buffers(monkeypatch, mode, extra):
    """With the graph played eagerly (``_EagerGraph``), every decoder step gives the eager cache's logits, its
    warm-up and capture leave the states as the prefill left them, and the states and convolution tails stay
    in the buffers the step was recorded on."""
    cuda = graph_decode.torch.cuda
    monkeypatch.setattr(graph_decode, "_check_graphable", lambda model, cache: None)  # CPU tensors
    monkeypatch.setattr(cuda, "CUDAGraph", _EagerGraph)
    monkeypatch.setattr(cuda, "graph", lambda graph: nullcontext())
    monkeypatch.setattr(cuda, "stream", lambda stream: nullcontext())
    monkeypatch.setattr(cuda, "Stream", lambda: type("S", (), {"wait_stream": lambda self, other: None})())
    monkeypatch.setattr(cuda, "current_stream", cuda.Stream)
    torch.manual_seed(0)
    m = lizardlm.convert(LlamaForCausalLM(LlamaConfig(**CONFIG)),
                         LizardConfig(mode=mode, window_size=8, num_meta_tokens=2, feature_dim=8, **extra)).double()
    for p in m.parameters():  # away from the identity / zero inits
        p.add_(0.02 * torch.randn_like(p))
    tokens = torch.randint(1, 97, (2, 30))
    eager, graphed = LizardCache.for_model(m), LizardCache.for_model(m)
    for cache in (eager, graphed):
        m(tokens[:, :12], **{CACHE_KWARG: cache}, use_cache=True)
    decoder = CudaGraphDecoder(m, graphed)
    decoder.graph.bind(decoder)
    assert (graphed.layers[0].conv_tails is not None) == bool(extra)
    for t in range(12, 30):
        want = m(tokens[:, t:t + 1], **{CACHE_KWARG: eager}, use_cache=True).logits[:, -1]
        torch.testing.assert_close(decoder.step(tokens[:, t:t + 1]), want, rtol=1e-10, atol=1e-10)
    assert graphed.get_seq_length() == eager.get_seq_length() == 30
