"""Every mode and gate design through the model on CUDA: the Triton path (``backend="triton"``)
gives the torch path's logits and parameter gradients. Skipped without CUDA."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

import lizardlm  # noqa: E402
from lizardlm import LizardConfig  # noqa: E402

CONFIG = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=101, max_position_embeddings=4096, attn_implementation="sdpa")
SETTINGS = [dict(mode=m) for m in ("lizard", "lolcats", "paper", "paper_no_gate", "paper_no_sink", "paper_no_window")]
SETTINGS += [dict(mode="paper", gate=g) for g in ("scalar", "mamba2", "pooled_key")]
SETTINGS += [dict(mode=m, write_gate="head") for m in ("lizard", "paper")] + [dict(mode="lizard", read_gate="head")]
SETTINGS += [dict(mode=m, value_map="head") for m in ("lizard", "paper")]
SETTINGS += [dict(mode=m, short_conv=4) for m in ("lizard", "paper")]
SETTINGS += [dict(mode=m, long_adapter=4) for m in ("lizard", "paper")]
SETTINGS += [dict(mode="lizard", long_adapter=4, long_adapter_targets="q_proj,k_proj,v_proj,o_proj".split(","))]


def run(settings: dict, backend: str):
    torch.manual_seed(0)
    m = lizardlm.convert(LlamaForCausalLM(LlamaConfig(**CONFIG)),
                         LizardConfig(**settings, window_size=16, num_meta_tokens=2, feature_dim=32, backend=backend))
    with torch.no_grad():
        for n, p in m.named_parameters():  # move the new parameters away from their init
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    m = m.to("cuda")
    ids = torch.randint(1, 101, (2, 150), generator=torch.Generator().manual_seed(1)).cuda()
    out = m(ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def chunked_prefill(settings: dict, backend: str, chunks=(40, 3, 57, 2, 49)) -> torch.Tensor:
    """Logits of a chunked prefill through the cache (the window is 16: chunks shorter and longer than
    it; single tokens would take the decoding step), on the given backend."""
    from lizardlm.cache import CACHE_KWARG, LizardCache

    torch.manual_seed(0)
    m = lizardlm.convert(LlamaForCausalLM(LlamaConfig(**CONFIG)),
                         LizardConfig(**settings, window_size=16, num_meta_tokens=2, feature_dim=32, backend=backend))
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    m = m.to("cuda").eval()
    ids = torch.randint(1, 101, (2, sum(chunks)), generator=torch.Generator().manual_seed(1)).cuda()
    cache, out, start = LizardCache.for_model(m), [], 0
    with torch.no_grad():
        for n in chunks:
            out.append(m(ids[:, start:start + n], use_cache=True, **{CACHE_KWARG: cache}).logits)
            start += n
        full = m(ids).logits
    torch.testing.assert_close(torch.cat(out, dim=1), full, rtol=2e-4, atol=2e-4)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_chunked_prefill_on_the_triton_path_matches_torch(settings):
    """A prefill going on runs the Triton kernels from the cached state (its window tokens before the
    chunk) and gives the torch path's logits, and the full forward's."""
    torch.testing.assert_close(chunked_prefill(settings, "triton"), chunked_prefill(settings, "torch"),
                               rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_triton_path_matches_torch_path(settings):
    logits_t, grads_t = run(settings, "torch")
    logits_k, grads_k = run(settings, "triton")
    torch.testing.assert_close(logits_k, logits_t, rtol=2e-4, atol=2e-4)
    assert grads_t and grads_t.keys() == grads_k.keys()
    for n in grads_t:
        err = (grads_k[n] - grads_t[n]).norm() / grads_t[n].norm().clamp_min(1e-12)
        assert err <= 1e-3, (n, err.item())


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_left_padded_batch_on_the_triton_path_gives_every_row_its_own_logits(settings):
    """Prompts of different lengths padded on the left, prefilled in two calls through the cache on the
    Triton kernels (padding masked in the window kernel, its features zeroed): every row's real positions
    get the logits of the row alone."""
    from lizardlm.cache import CACHE_KWARG, LizardCache

    torch.manual_seed(0)
    m = lizardlm.convert(LlamaForCausalLM(LlamaConfig(**CONFIG)),
                         LizardConfig(**settings, window_size=16, num_meta_tokens=2, feature_dim=32, backend="triton"))
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    m = m.to("cuda").eval()
    gen = torch.Generator().manual_seed(1)
    lengths = [150, 131, 40, 97]
    prompts = [torch.randint(1, 101, (n,), generator=gen).cuda() for n in lengths]
    ids = torch.stack([torch.cat([torch.zeros(150 - len(p), dtype=torch.long, device="cuda"), p]) for p in prompts])
    mask = (ids != 0).long()
    cache = LizardCache.for_model(m)
    with torch.no_grad():
        head = m(ids[:, :70], attention_mask=mask[:, :70], use_cache=True, **{CACHE_KWARG: cache}).logits
        rest = m(ids[:, 70:], attention_mask=mask, use_cache=True, **{CACHE_KWARG: cache}).logits
        logits = torch.cat([head, rest], dim=1)
        for row, prompt in enumerate(prompts):
            alone = m(prompt[None]).logits[0]
            torch.testing.assert_close(logits[row, -len(prompt):], alone, rtol=2e-4, atol=2e-4)
