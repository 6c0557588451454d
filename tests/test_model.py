"""Converted tiny random Llama / Mistral / Qwen2 models: decoding, generation, cache, save/load."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import lizardlm
from lizardlm import LizardCache, LizardConfig
from lizardlm.cache import CACHE_KWARG
from lizardlm.errors import UnsupportedModelError
from lizardlm.layers import LizardAttention, attention_transfer

COMMON = dict(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=2,
    vocab_size=97,
    max_position_embeddings=4096,
    attn_implementation="sdpa",
)
TEACHERS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**COMMON, sliding_window=None)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON)),
}
SMALL = LizardConfig(window_size=8, num_meta_tokens=3, feature_dim=8, chunk_size=8)
PAPER_SMALL = LizardConfig(mode="paper", window_size=8, num_meta_tokens=3, feature_dim=8, chunk_size=8)
# every combination of the form flags (RoPE placement, gate, meta memory, combination)
FLAG_COMBOS = [
    LizardConfig(combine=c, rope=r, meta=m, gate=g, window_size=8, num_meta_tokens=2, feature_dim=8, chunk_size=8)
    for c in ("shared", "sum") for r in ("window", "none", "both") for m in ("kv", "sink") for g in ("scalar", "token", "none")
]


def lizard_model(arch: str, config: LizardConfig = SMALL, seed: int = 0):
    torch.manual_seed(seed)
    model = lizardlm.convert(TEACHERS[arch]().eval(), config)
    with torch.no_grad():  # move the new parameters away from their init so every part matters
        for layer in model.modules():
            if isinstance(layer, LizardAttention):
                for p in layer.lizard_parameters():
                    p.add_(0.1 * torch.randn_like(p))
    return model


def decode_token_by_token(model, ids: torch.Tensor, prefill: int = 0) -> tuple[torch.Tensor, LizardCache]:
    cache = LizardCache.for_model(model)
    logits = []
    with torch.no_grad():
        if prefill:
            logits.append(model(ids[:, :prefill], **{CACHE_KWARG: cache}, use_cache=True).logits)
        for t in range(prefill, ids.shape[1]):
            logits.append(model(ids[:, t : t + 1], **{CACHE_KWARG: cache}, use_cache=True).logits)
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("config", [SMALL, PAPER_SMALL], ids=["lizard", "paper"])
@pytest.mark.parametrize("arch", sorted(TEACHERS))
def test_cached_decoding_equals_full_sequence(arch, config):
    model = lizard_model(arch, config)
    ids = torch.randint(0, 97, (2, 41))  # 5x the window
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
    step, _ = decode_token_by_token(model, ids)
    assert torch.allclose(step, full, atol=1e-4, rtol=1e-4)
    prefilled, _ = decode_token_by_token(model, ids, prefill=13)
    assert torch.allclose(prefilled, full, atol=1e-4, rtol=1e-4)


def test_bfloat16_model_decodes_in_bfloat16():
    """Half-precision weights: prefill and single-token steps keep the model's dtype end to end."""
    model = lizard_model("llama").to(torch.bfloat16)
    ids = torch.randint(0, 97, (1, 30))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits.float()
    step, _ = decode_token_by_token(model, ids, prefill=20)
    assert step.dtype == torch.bfloat16
    assert (step.float() - full).abs().max() < 0.05 * full.abs().max()


def test_conversion_keeps_teacher_projections_and_types():
    teacher = TEACHERS["qwen2"]().eval()
    q_weight, q_bias = teacher.model.layers[1].self_attn.q_proj.weight, teacher.model.layers[1].self_attn.q_proj.bias
    model = lizardlm.convert(teacher, LizardConfig(softmax_layers=[0]))
    assert type(model).__name__ == "LizardQwen2ForCausalLM"
    attn = model.model.layers[1].self_attn
    assert isinstance(attn, LizardAttention)
    assert attn.q_proj.weight is q_weight and attn.q_proj.bias is q_bias  # shared, not copied
    assert not isinstance(model.model.layers[0].self_attn, LizardAttention)  # hybrid: kept softmax
    assert model.config.lizard["softmax_layers"] == [0]


@pytest.mark.parametrize("softmax_layers", [[], [1]])
def test_greedy_generate_equals_argmax_decoding(softmax_layers):
    model = lizard_model("llama", LizardConfig(window_size=8, num_meta_tokens=2, feature_dim=8, softmax_layers=softmax_layers))
    prompt = torch.randint(1, 97, (1, 6))  # 0 is the pad id
    out = model.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(30):
            ids = torch.cat([ids, model(ids, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, ids)


def test_generate_scores_only_the_prompts_last_position():
    """``generate`` asks for the last position's logits of the prompt (``logits_to_keep=1``), as it does
    of the teacher: full logits of a batch of long prompts are batch x length x vocabulary floats."""
    model = lizard_model("llama")
    widths = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: widths.append(args[0].shape[1]))
    model.generate(torch.randint(1, 97, (2, 9)), max_new_tokens=3, do_sample=False, pad_token_id=0)
    hook.remove()
    assert widths == [1, 1, 1]


def test_sampling_generate_runs_and_is_seeded():
    model = lizard_model("mistral")
    prompt = torch.randint(1, 97, (2, 5))  # 0 is the pad id
    torch.manual_seed(3)
    a = model.generate(prompt, max_new_tokens=20, do_sample=True, top_k=20, pad_token_id=0)
    torch.manual_seed(3)
    b = model.generate(prompt, max_new_tokens=20, do_sample=True, top_k=20, pad_token_id=0)
    assert a.shape == (2, 25) and torch.equal(a, b)


def test_cache_size_is_constant_in_context_length():
    model = lizard_model("llama")
    sizes = {}
    for length in (40, 4000):
        ids = torch.randint(0, 97, (1, length))
        cache = LizardCache.for_model(model)
        with torch.no_grad():
            model(ids, **{CACHE_KWARG: cache}, use_cache=True)
            model(ids[:, :1], **{CACHE_KWARG: cache}, use_cache=True)
        assert cache.get_seq_length() == length + 1
        assert cache.get_mask_sizes(7, 0) == (7, 0)  # no mask over the whole context is ever built
        sizes[length] = cache.nbytes()
    assert sizes[40] == sizes[4000] > 0


def test_hybrid_cache_grows_only_in_softmax_layers():
    model = lizard_model("llama", LizardConfig(window_size=8, feature_dim=8, softmax_layers=[2]))
    cache = LizardCache.for_model(model)
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 50)), **{CACHE_KWARG: cache}, use_cache=True)
    assert cache.layers[2].keys.shape[-2] == 50
    assert cache.layers[0].state.keys.shape[-2] == 8
    assert cache.get_mask_sizes(3, 0) == (53, 0)  # sized for the softmax layer, whatever layer asks
    softmax_bytes = 2 * 50 * 2 * 8 * 4  # keys and values: 50 positions x 2 KV heads x head dim 8, fp32
    lizard_bytes = sum(layer.state.nbytes() for i, layer in enumerate(cache.layers) if i != 2)
    assert cache.nbytes() == lizard_bytes + softmax_bytes


def test_cache_bytes_of_a_teachers_cache():
    """The one byte count of ``lizardlm.cache`` also measures a teacher's growing cache (benchmarks)."""
    from transformers import DynamicCache

    from lizardlm.cache import cache_nbytes

    teacher = TEACHERS["llama"]()
    cache = DynamicCache()
    assert cache_nbytes(cache) == 0
    with torch.no_grad():
        teacher(torch.randint(0, 97, (1, 30)), **{CACHE_KWARG: cache}, use_cache=True)
    assert cache_nbytes(cache) == 3 * 2 * 30 * 2 * 8 * 4  # layers x (k, v) x positions x KV heads x head dim x fp32


def test_save_load_round_trip_is_exact(tmp_path):
    model = lizard_model("qwen2")
    ids = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and list(tmp_path.glob("*.safetensors"))
    for loaded in (AutoModelForCausalLM.from_pretrained(tmp_path), type(model).from_pretrained(tmp_path)):
        assert type(loaded) is type(model)
        assert loaded.lizard_config == model.lizard_config
        with torch.no_grad():
            assert torch.equal(loaded(ids, use_cache=False).logits, ref)


def test_unsupported_model_fails_clearly_and_is_untouched():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    before = {k: v.clone() for k, v in gpt2.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match=r"GPT2LMHeadModel.*gpt2.*LlamaForCausalLM"):
        lizardlm.convert(gpt2)
    assert type(gpt2) is GPT2LMHeadModel
    assert all(torch.equal(before[k], v) for k, v in gpt2.state_dict().items())


def test_converting_twice_or_bad_layers_fails():
    model = lizard_model("llama")
    with pytest.raises(UnsupportedModelError, match="already a Lizard model"):
        lizardlm.convert(model)
    with pytest.raises(ValueError, match="out of range"):
        lizardlm.convert(TEACHERS["llama"](), LizardConfig(softmax_layers=[7]))


@pytest.mark.parametrize(
    "mode, gate, meta", [("lizard", True, True), ("lolcats", False, False), ("no_gate", False, True), ("no_meta", True, False)]
)
def test_mode_presets_build_the_right_parts(mode, gate, meta):
    model = lizardlm.convert(TEACHERS["llama"](), LizardConfig(mode=mode, num_meta_tokens=4))
    attn = model.model.layers[0].self_attn
    assert (attn.gate is not None) == gate
    assert (attn.meta_k is not None) == meta


@pytest.mark.parametrize("config", FLAG_COMBOS, ids=lambda c: f"{c.combine}-{c.rope}-{c.meta}-{c.gate}")
def test_every_flag_combination_decodes_like_its_forward(config, tmp_path):
    """Token-by-token decoding equals the full forward, the cache stays one size once the window is
    full, and a save/load round trip gives the same logits."""
    model = lizard_model("llama", config)
    ids = torch.randint(0, 97, (1, 21))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
    step, cache = decode_token_by_token(model, ids, prefill=5)
    assert torch.allclose(step, full, atol=1e-4, rtol=1e-4)
    size = cache.nbytes()
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 1)), **{CACHE_KWARG: cache}, use_cache=True)
    assert cache.nbytes() == size
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.allclose(lizardlm.load(tmp_path)(ids, use_cache=False).logits, full, atol=1e-6)


def test_paper_mode_builds_the_papers_layer():
    """mode='paper': no RoPE, sum of two normalised branches, sink logits, one gate per token,
    window 128 / feature dim 128 / 4 sinks, parameters named as the method describes."""
    config = LizardConfig(mode="paper")
    assert (config.combine, config.rope, config.meta, config.gate) == ("sum", "none", "sink", "token")
    assert (config.window_size, config.feature_dim, config.num_meta_tokens) == (128, 128, 4)
    assert LizardConfig(mode="paper", window_size=64).window_size == 64  # explicit values win
    attn = lizardlm.convert(TEACHERS["llama"](), config).model.layers[0].self_attn
    names = {n for n, _ in attn.named_parameters() if not n.split(".")[0].endswith("_proj")}
    assert names == {"feature_map_q.weight", "feature_map_k.weight", "gate.proj.weight", "gate.proj.bias",
                     "sink_logits", "alpha"}
    assert attn.sink_logits.shape == (6, 4) and attn.alpha.shape == (6,) and attn.gate.proj.out_features == 1
    assert torch.all(attn.alpha == config.alpha_init)
    no_gate, no_sink = LizardConfig(mode="paper_no_gate"), LizardConfig(mode="paper_no_sink")
    assert no_gate.gate == "none" and no_gate.combine == "sum"
    assert no_sink.num_meta_tokens == 0 and no_sink.rope == "none"


def test_configs_saved_before_the_paper_form_load_as_our_form():
    old = {"mode": "lizard", "window_size": 64, "num_meta_tokens": 4, "feature_dim": 64, "gate": "scalar",
           "gate_temperature": 16.0, "gate_init": 0.995, "linear_rope": True, "softmax_layers": [],
           "chunk_size": 64, "backend": "auto"}
    config = LizardConfig.from_dict(old)
    assert (config.combine, config.rope, config.meta) == ("shared", "both", "kv")
    assert LizardConfig.from_dict({**old, "linear_rope": False}).rope == "window"


def test_bad_config_values_fail():
    with pytest.raises(ValueError, match="unknown mode"):
        LizardConfig(mode="fast")
    with pytest.raises(ValueError, match="window_size"):
        LizardConfig(window_size=0)
    with pytest.raises(ValueError, match="gate_init"):
        LizardConfig(gate_init=1.0)
    with pytest.raises(ValueError, match="gate_temperature"):
        LizardConfig(gate_temperature=float("nan"))
    with pytest.raises(ValueError, match="window_size must be an integer"):
        LizardConfig(window_size=7.5)
    with pytest.raises(ValueError, match="unknown combine"):
        LizardConfig(combine="product")


def test_attention_transfer_passes_teacher_outputs_on():
    """In transfer mode the hidden states are the teacher's exactly, and each layer reports its MSE."""
    teacher = TEACHERS["llama"]().eval()
    ids = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        teacher_logits = teacher(ids).logits
    model = lizardlm.convert(teacher, SMALL)
    model.requires_grad_(False)
    for p in model.lizard_parameters():
        p.requires_grad_(True)
    with attention_transfer(model) as layers:
        out = model(ids, use_cache=False).logits
        losses = [layer.transfer_loss for layer in layers]
    assert torch.allclose(out, teacher_logits, atol=1e-5)
    assert len(losses) == 3 and all(loss.requires_grad and loss.item() > 0 for loss in losses)
    losses[0].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".layers.0.self_attn." in n and "_proj." not in n for n in grads)


def padded_batch(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Prompts of the given lengths, left-padded with token 0 to the longest: ids, mask, the prompts."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, 97, (n,), generator=gen) for n in lengths]
    width = max(lengths)
    ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
    mask = (torch.arange(width)[None, :] >= width - torch.tensor(lengths)[:, None]).long()
    return ids, mask, prompts


def assert_padded_rows_score_as_alone(model) -> torch.Tensor:
    """Prompts of 23, 20, 5 and 12 tokens padded on the left (padding shorter and longer than a window of 8),
    in one forward and in two cached calls (the first all padding for the 5-token prompt): every row's real
    positions get the row's own logits. Returns the padded ids."""
    ids, mask, prompts = padded_batch([23, 20, 5, 12])
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, use_cache=False).logits
        cache = LizardCache.for_model(model)
        head = model(ids[:, :10], attention_mask=mask[:, :10], **{CACHE_KWARG: cache}, use_cache=True).logits
        rest = model(ids[:, 10:], attention_mask=mask, **{CACHE_KWARG: cache}, use_cache=True).logits
        for row, prompt in enumerate(prompts):
            alone = model(prompt[None], use_cache=False).logits[0]
            torch.testing.assert_close(logits[row, -len(prompt):], alone, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(torch.cat([head, rest], dim=1)[row, -len(prompt):], alone, rtol=1e-4, atol=1e-5)
    return ids


@pytest.mark.parametrize("softmax_layers", [[], [1]], ids=["lizard", "hybrid"])
@pytest.mark.parametrize("config", [SMALL, PAPER_SMALL], ids=["lizard", "paper"])
def test_left_padded_batch_scores_every_row_as_alone(config, softmax_layers):
    """A forward over prompts of different lengths, padded on the left (padding shorter and longer than
    the window of 8): every row's real positions get the row's own logits; right padding is still fine,
    padding between real tokens is refused in one line."""
    model = lizard_model("llama", LizardConfig(**{**config.to_dict(), "softmax_layers": softmax_layers}))
    ids = assert_padded_rows_score_as_alone(model)
    with torch.no_grad():
        right = torch.ones_like(ids)
        right[0, 17:] = 0
        padded = model(ids, attention_mask=right, use_cache=False).logits
        plain = model(ids, use_cache=False).logits
    assert torch.allclose(padded[0, :17], plain[0, :17], atol=1e-6)
    gap = torch.ones_like(ids)
    gap[1, 5:7] = 0
    with pytest.raises(ValueError, match="between real tokens") as err:
        model(ids, attention_mask=gap, use_cache=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("softmax_layers", [[], [1]], ids=["lizard", "hybrid"])
@pytest.mark.parametrize("config", [SMALL, PAPER_SMALL], ids=["lizard", "paper"])
@pytest.mark.parametrize("arch", sorted(TEACHERS))
def test_left_padded_generation_gives_every_prompt_its_own_tokens(arch, config, softmax_layers):
    """``generate`` on a left-padded batch (greedy, and beam search, which reorders the cache; hybrid
    softmax layers read the mask): every row's new tokens are those of the prompt generated alone; a
    later call whose mask has other padding is refused."""
    model = lizard_model(arch, LizardConfig(**{**config.to_dict(), "softmax_layers": softmax_layers}))
    ids, mask, prompts = padded_batch([21, 6, 14])
    for kw in (dict(do_sample=False), dict(do_sample=False, num_beams=2)):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=6, pad_token_id=0, **kw)
        for row, prompt in enumerate(prompts):
            alone = model.generate(prompt[None], max_new_tokens=6, pad_token_id=0, **kw)
            assert torch.equal(out[row, ids.shape[1]:], alone[0, len(prompt):]), (kw, row)
    cache = LizardCache.for_model(model)
    with torch.no_grad():
        model(ids, attention_mask=mask, **{CACHE_KWARG: cache}, use_cache=True)
        other = torch.ones(ids.shape[0], ids.shape[1] + 1, dtype=torch.long)
        with pytest.raises(ValueError, match="differs"):
            model(ids[:, -1:], attention_mask=torch.cat([other[:, :1] * 0, other[:, 1:]], dim=1),
                  **{CACHE_KWARG: cache}, use_cache=True)
        with pytest.raises(ValueError, match="a left-padded batch needs the mask of every token so far") as err:
            model(ids[:, -1:], attention_mask=mask[:, :2], **{CACHE_KWARG: cache}, use_cache=True)
        assert "\n" not in str(err.value)


def test_cache_is_accepted_under_either_name():
    """transformers 5.24 renamed forward's ``past_key_values`` to ``cache``: both work, on any version."""
    model = lizard_model("llama")
    ids = torch.randint(0, 97, (1, 20))
    logits = {}
    for name in ("past_key_values", "cache"):
        cache = LizardCache.for_model(model)
        with torch.no_grad():
            model(ids[:, :-1], **{name: cache}, use_cache=True)
            logits[name] = model(ids[:, -1:], **{name: cache}, use_cache=True).logits
        assert cache.get_seq_length() == 20
    assert torch.equal(logits["past_key_values"], logits["cache"])
    with pytest.raises(ValueError, match="two different caches"):
        model(ids, past_key_values=LizardCache.for_model(model), cache=LizardCache.for_model(model))


def test_forward_without_tokens_fails_like_the_teacher():
    """A forward given neither ``input_ids`` nor ``inputs_embeds`` gets the base model's one-line refusal."""
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        lizard_model("llama")()
