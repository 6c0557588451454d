"""CUDA-graph decoding replays the eager step exactly. Skipped without CUDA."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

import lizardlm  # noqa: E402
from lizardlm import LizardCache, LizardConfig, graph_decode  # noqa: E402

CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=101, max_position_embeddings=4096, attn_implementation="sdpa")


def model(dtype=torch.float32, mode="lizard", **lizard):
    torch.manual_seed(0)
    m = lizardlm.convert(LlamaForCausalLM(LlamaConfig(**CONFIG)),
                         LizardConfig(mode=mode, window_size=8, num_meta_tokens=2, feature_dim=16, **lizard))
    with torch.no_grad():
        for p in m.parameters():  # move the new parameters away from their init
            p.add_(0.02 * torch.randn_like(p))
    return m.to("cuda", dtype).eval()


@pytest.mark.parametrize("extra", [{}, {"value_map": "head"}, {"short_conv": 4}, {"long_adapter": 4}],
                         ids=["plain", "value_map", "short_conv", "long_adapter"])
@pytest.mark.parametrize("mode", ["lizard", "paper"])
@pytest.mark.parametrize("batch", [1, 3])
@torch.no_grad()
def test_replayed_logits_match_eager_steps(batch, mode, extra):
    """Every step of the replayed graph gives the eager step's logits (the value map, and the short
    convolutions whose last inputs the decoder keeps in static buffers, and the long adapters, which read the
    position from the decoder's static positions, included)."""
    m = model(mode=mode, **extra)
    tokens = torch.randint(1, 101, (batch, 60), device="cuda")
    eager, graphed = LizardCache.for_model(m), LizardCache.for_model(m)
    m(tokens[:, :12], past_key_values=eager, use_cache=True)
    m(tokens[:, :12], past_key_values=graphed, use_cache=True)
    decoder = graph_decode.CudaGraphDecoder(m, graphed)
    for t in range(12, 60):
        want = m(tokens[:, t:t + 1], past_key_values=eager, use_cache=True).logits[:, -1]
        got = decoder.step(tokens[:, t:t + 1])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert graphed.get_seq_length() == eager.get_seq_length() == 60


@pytest.mark.parametrize("mode", ["lizard", "paper"])
@torch.no_grad()
def test_a_left_padded_batch_replays_each_rows_eager_steps(mode):
    """Prompts of 20, 5 and 13 tokens padded on the left: eager steps until the padding has left every
    window, then the recorded step (each row at its own position) gives the eager steps' logits, and
    ``generate`` with the mask gives every row the tokens it gets alone."""
    m = model(mode=mode)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 101, (n,), generator=gen).cuda() for n in (20, 5, 13)]
    ids = torch.stack([torch.cat([torch.zeros(20 - len(p), dtype=torch.long, device="cuda"), p]) for p in prompts])
    mask = (ids != 0).long()
    tokens = torch.randint(1, 101, (3, 40), generator=gen).cuda()
    eager, graphed = LizardCache.for_model(m), LizardCache.for_model(m)
    for cache in (eager, graphed):
        m(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        for t in range(3):  # row 2 has 5 real tokens: 3 of the window's 8 are padding until then
            m(tokens[:, t:t + 1], past_key_values=cache, use_cache=True)
    assert not graphed.padding_in_window()
    decoder = graph_decode.CudaGraphDecoder(m, graphed)
    for t in range(3, 40):
        want = m(tokens[:, t:t + 1], past_key_values=eager, use_cache=True).logits[:, -1]
        torch.testing.assert_close(decoder.step(tokens[:, t:t + 1]), want, rtol=1e-4, atol=1e-4)
    out = graph_decode.generate(m, ids, 20, attention_mask=mask)
    for row, prompt in enumerate(prompts):
        alone = graph_decode.generate(m, prompt[None], 20)
        assert (out[row, 20:] == alone[0, len(prompt):]).float().mean() > 0.9, row


@torch.no_grad()
def test_a_decoder_refuses_a_cache_advanced_without_it():
    m = model()
    cache = LizardCache.for_model(m)
    m(torch.randint(1, 101, (1, 12), device="cuda"), past_key_values=cache, use_cache=True)
    decoder = graph_decode.CudaGraphDecoder(m, cache)
    decoder.step(torch.ones(1, 1, dtype=torch.long, device="cuda"))
    m(torch.ones(1, 1, dtype=torch.long, device="cuda"), past_key_values=cache, use_cache=True)  # eager step
    with pytest.raises(lizardlm.errors.LizardError, match="advanced outside this decoder"):
        decoder.step(torch.ones(1, 1, dtype=torch.long, device="cuda"))


@torch.no_grad()
def test_generate_fills_the_window_eagerly_then_replays():
    m = model(torch.bfloat16)
    prompt = torch.randint(1, 101, (2, 3), device="cuda")  # shorter than the window
    out = graph_decode.generate(m, prompt, 40)
    ref = [prompt]
    cache = LizardCache.for_model(m)
    logits = m(prompt, past_key_values=cache, use_cache=True).logits[:, -1]
    for _ in range(40):
        ref.append(logits.argmax(-1, keepdim=True))
        logits = m(ref[-1], past_key_values=cache, use_cache=True).logits[:, -1]
    ref = torch.cat(ref, 1)
    assert out.shape == (2, 43) and torch.equal(out[:, :3], prompt)
    assert (out == ref).float().mean() > 0.9  # bf16: a near-tie may flip one argmax, and what follows it


@pytest.mark.parametrize("sampling", [[], ["--temperature", "0.8"]])
def test_cli_generates_with_cuda_graph(tmp_path, tiny_llama, tiny_tokenizer, capsys, sampling):
    from lizardlm.cli import main as cli_main

    m = lizardlm.convert(tiny_llama, LizardConfig(window_size=8, num_meta_tokens=2, feature_dim=16))
    m.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    code = cli_main(["generate", "--model", str(tmp_path / "m"), "--prompt", "hello there", "--raw", "--device", "cuda",
                     "--cuda-graph", "--max-new-tokens", "24", *sampling])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "replayed as one CUDA graph" in err


def test_cli_generates_a_prompts_file_with_cuda_graph(tmp_path, tiny_llama, tiny_tokenizer, capsys):
    """``--prompts`` with ``--cuda-graph``: left-padded batches decoded by replays give the eager batches'
    completions (greedy, float32)."""
    import json

    from lizardlm.cli import main as cli_main

    m = lizardlm.convert(tiny_llama, LizardConfig(window_size=8, num_meta_tokens=2, feature_dim=16))
    m.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    (tmp_path / "p.txt").write_text("hello there\nA\nonce upon a time in a land far away\nnumbers 1 2 3\n")
    rows = {}
    for name, extra in (("eager", []), ("graph", ["--cuda-graph"])):
        code = cli_main(["generate", "--model", str(tmp_path / "m"), "--prompts", str(tmp_path / "p.txt"), "--raw",
                         "--device", "cuda", "--max-new-tokens", "16", "--batch-size", "3", "--out",
                         str(tmp_path / f"{name}.jsonl"), *extra])
        assert code == 0, capsys.readouterr().err
        rows[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().split("\n") if line]
    assert "replayed as one CUDA graph" in capsys.readouterr().err
    assert [r["completion"] for r in rows["graph"]] == [r["completion"] for r in rows["eager"]]
