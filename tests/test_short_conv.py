"""The short convolution on the linear branch's queries and keys (``LizardConfig.short_conv``): exact math
against a float64 loop, and the model around it (identity at start, decoding = forward, left padding,
the cache, gradients, save/load, the CLI flag)."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch

import lizardlm
from lizardlm import LizardConfig
from lizardlm.cache import LizardCache
from lizardlm.cli.common import add_lizard_arguments, lizard_config_from_args
from lizardlm.layers.short_conv import ShortConvolution
from test_gates import captured_forward
from test_model import CACHE_KWARG, TEACHERS, assert_padded_rows_score_as_alone, decode_token_by_token, lizard_model

FORMS = ("shared", "sum")


def small(combine: str, **kw) -> LizardConfig:
    return LizardConfig(combine=combine, window_size=6, num_meta_tokens=2, feature_dim=8, chunk_size=8, short_conv=4, **kw)


@pytest.mark.parametrize("T", [1, 2, 9])
def test_the_convolution_is_the_causal_sum_over_the_last_c_inputs(T):
    """``x'_t = sum_{i<c} w_i x_{t-i}`` (zeros before the start) per head and channel, in float64; a
    sequence cut anywhere and continued from the tail gives the same outputs."""
    torch.manual_seed(T)
    conv = ShortConvolution(3, 5, 4).double()
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(2, 3, T, 5, dtype=torch.float64)
    ref = torch.zeros_like(x)
    for t in range(T):
        for i in range(4):
            if t - i >= 0:
                ref[:, :, t] += conv.weight[None, :, :, i] * x[:, :, t - i]
    out, tail = conv(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert tail.shape == (2, 3, 3, 5)
    torch.testing.assert_close(tail[:, :, 3 - min(T, 3):], x[:, :, T - min(T, 3):], rtol=0, atol=0)
    for cut in range(T + 1):
        first, mid = conv(x[:, :, :cut])
        rest, end = conv(x[:, :, cut:], mid)
        torch.testing.assert_close(torch.cat([first, rest], dim=2), ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(end, tail, rtol=0, atol=0)


@pytest.mark.parametrize("combine", FORMS)
def test_short_convolutions_start_at_identity_and_change_nothing(combine):
    """At init the model gives the logits of one without them, bit for bit; their state-dict entries are
    the only new ones."""
    torch.manual_seed(0)
    teacher = TEACHERS["llama"]().eval()
    ids = torch.randint(0, 97, (2, 19))
    models = [lizardlm.convert(copy.deepcopy(teacher), LizardConfig(**{**small(combine).to_dict(), "short_conv": c}))
              for c in (0, 4)]
    missing, unexpected = models[1].load_state_dict(models[0].state_dict(), strict=False)
    assert not unexpected and missing and all(n.endswith(("short_conv_q.weight", "short_conv_k.weight")) for n in missing)
    layer = models[1].model.layers[0].self_attn
    assert layer.short_conv_q.weight.shape == (layer.num_heads, layer.head_dim, 4)
    assert layer.short_conv_k.weight.shape == (layer.num_kv_heads, layer.head_dim, 4)
    with torch.no_grad():
        logits = [m(ids, use_cache=False).logits for m in models]
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=0)


@pytest.mark.parametrize("combine", FORMS)
def test_a_model_with_short_convolutions_decodes_like_its_forward_trains_them_and_saves_them(combine, tmp_path):
    """The op sees the convolved queries and keys (the window the raw ones); token-by-token decoding and a
    prefill then steps match the full forward; the cache keeps c - 1 queries and keys a layer."""
    model, layer, seen, ids, full = captured_forward(small(combine))
    assert seen["fq"].shape[2] == ids.shape[1]
    step, cache = decode_token_by_token(model, ids)
    torch.testing.assert_close(step, full, rtol=1e-9, atol=1e-9)
    prefilled, _ = decode_token_by_token(model, ids, prefill=7)
    torch.testing.assert_close(prefilled, full, rtol=1e-9, atol=1e-9)
    q_tail, k_tail = cache.layers[1].conv_tails
    assert q_tail.shape == (2, layer.num_heads, 3, layer.head_dim) and k_tail.shape == (2, layer.num_kv_heads, 3, layer.head_dim)
    loss = model(ids, labels=ids).loss
    grads = torch.autograd.grad(loss, [layer.short_conv_q.weight, layer.short_conv_k.weight])
    assert all(float(g.abs().max()) > 0 for g in grads)
    names = {id(p) for p in layer.lizard_parameters()}
    assert id(layer.short_conv_q.weight) in names and id(layer.short_conv_k.weight) in names
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).double()
    assert loaded.lizard_config.short_conv == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, use_cache=False).logits, full, rtol=0, atol=0)


def test_the_convolution_is_what_the_linear_branch_reads():
    """A layer's op gets ``phi_k(conv(k))`` as key features (rope "window": the unrotated keys) and the
    window the raw keys: set back to identity, the window's inputs stay and the features become ``phi_k(k)``."""
    model, layer, seen, ids, _ = captured_forward(small("shared"))
    projected = []
    hook = layer.k_proj.register_forward_hook(lambda _, __, out: projected.append(out))
    plain = {}
    layer.capture = lambda _, inputs: plain.update(inputs)
    with torch.no_grad():
        convolved = copy.deepcopy(layer.short_conv_k)
        layer.short_conv_q.reset_parameters()
        layer.short_conv_k.reset_parameters()
        model(ids, use_cache=False)
        k = projected[0].view(*ids.shape, layer.num_kv_heads, layer.head_dim).transpose(1, 2)
        torch.testing.assert_close(seen["fk"], layer.feature_map_k(convolved(k)[0]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(plain["fk"], layer.feature_map_k(k), rtol=1e-12, atol=1e-12)
    hook.remove()
    layer.capture = None
    assert not torch.allclose(seen["fk"], plain["fk"])
    for name in ("q", "k", "v"):
        torch.testing.assert_close(seen[name], plain[name], rtol=0, atol=0)


@pytest.mark.parametrize("combine", FORMS)
def test_left_padding_enters_the_convolutions_as_zeros(combine):
    """A left-padded batch, in one forward and in two cached calls: every row's real positions get the
    row's own logits (padding never reaches the first real tokens' convolved keys)."""
    assert_padded_rows_score_as_alone(lizard_model("llama", small(combine)))


def test_the_cache_carries_the_tails_through_batch_selection_and_counts_them():
    model = lizard_model("llama", small("shared"))
    ids = torch.randint(0, 97, (3, 12))
    cache = LizardCache.for_model(model)
    with torch.no_grad():
        model(ids, **{CACHE_KWARG: cache}, use_cache=True)
    layer = cache.layers[0]
    state_bytes = layer.state.nbytes()
    assert layer.nbytes() == state_bytes + sum(t.numel() * t.element_size() for t in layer.conv_tails)
    kept = [t[[2, 0]].clone() for t in layer.conv_tails]
    cache.batch_select_indices(torch.tensor([2, 0]))
    for t, k in zip(cache.layers[0].conv_tails, kept):
        torch.testing.assert_close(t, k, rtol=0, atol=0)
    cache.reset()
    assert cache.layers[0].conv_tails is None


def test_the_short_conv_flag_reaches_the_config():
    parser = argparse.ArgumentParser()
    add_lizard_arguments(parser)
    assert lizard_config_from_args(parser.parse_args(["--short-conv", "4"])).short_conv == 4
    assert lizard_config_from_args(parser.parse_args(["--mode", "paper"])).short_conv == 0
    assert LizardConfig.from_dict({k: v for k, v in LizardConfig().to_dict().items() if k != "short_conv"}).short_conv == 0
    with pytest.raises(ValueError, match="short_conv must be >= 0"):
        LizardConfig(short_conv=-1)


def test_a_run_with_short_convolutions_trains_them_and_loads(data_file, teacher_dir, tmp_path, capsys):
    """``linearize --short-conv 3``: stage 1 moves the convolutions off their identity start (Lizard
    parameters), and the run directory loads with the config and the weights it trained."""
    from safetensors.torch import load_file

    from lizardlm.cli import main as cli_main
    from lizardlm.layers import LizardAttention

    out = tmp_path / "run"
    argv = ["linearize", "--teacher", str(teacher_dir), "--data", str(data_file), "--out", str(out), "--seq-len", "64",
            "--batch-size", "2", "--stage1-tokens", "256", "--stage2-tokens", "128", "--val-tokens", "128",
            "--device", "cpu", "--feature-dim", "8", "--window-size", "8", "--short-conv", "3"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    saved = {k: v for k, v in load_file(out / "lizard.safetensors").items() if ".short_conv_" in k}
    assert saved and all(v.shape[-1] == 3 for v in saved.values())
    assert any(float(v[..., 1:].abs().max()) > 0 for v in saved.values())
    model = lizardlm.load(out)
    assert model.lizard_config.short_conv == 3
    layer = next(m for m in model.modules() if isinstance(m, LizardAttention))
    name = f"model.layers.{layer.layer_idx}.self_attn.short_conv_k.weight"
    torch.testing.assert_close(layer.short_conv_k.weight.detach(), saved[name].float(), rtol=0, atol=0)
