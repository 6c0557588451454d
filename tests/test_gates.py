"""Every gate design (``LizardConfig.gate``): its initial decay, its equation, the same output in the
naive / chunked / recurrent op forms, and token-by-token decoding equal to the full forward."""

from __future__ import annotations

import argparse
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import lizardlm
from lizardlm import LizardConfig
from lizardlm.cli.common import add_lizard_arguments, lizard_config_from_args
from lizardlm.layers import LizardAttention
from lizardlm.layers.gate import GATES, DecayGate
from lizardlm.ops import lizard_attention_chunk, lizard_attention_naive, lizard_attention_recurrent
from test_model import TEACHERS, decode_token_by_token, lizard_model

FORMS = ("shared", "sum")


def small(gate: str, combine: str) -> LizardConfig:
    return LizardConfig(combine=combine, gate=gate, window_size=6, num_meta_tokens=2, feature_dim=8, chunk_size=8)


@pytest.mark.parametrize("kind", GATES)
def test_every_gate_starts_at_gate_init(kind):
    """Zero input (and zero keys): decay a0 exactly; random inputs: near a0 (pooled_key reads k: its decay
    moves by about 0.005 per unit of the pooled key, 0.15 a standard deviation here)."""
    torch.manual_seed(0)
    gate = DecayGate(kind, hidden_size=16, num_heads=6, num_kv_heads=2, temperature=16.0, init=0.995)
    heads = 1 if kind == "token" else 6
    g0 = gate(torch.zeros(2, 5, 16), torch.zeros(2, 2, 5, 4))
    assert g0.shape == (2, heads, 5)
    torch.testing.assert_close(g0.exp(), torch.full_like(g0, 0.995))
    g = gate(torch.randn(2, 5, 16), 0.3 * torch.randn(2, 2, 5, 4))
    assert bool((g <= 0).all()) and bool((g.exp() - 0.995).abs().max() < 4e-3)


def test_gate_equations():
    torch.manual_seed(0)
    x, k = torch.randn(1, 3, 8), torch.randn(1, 2, 3, 4)
    mamba = DecayGate("mamba2", 8, num_heads=4, num_kv_heads=2, temperature=16.0, init=0.99)
    with torch.no_grad():
        mamba.dt_proj.weight.normal_()
        mamba.A_log.normal_()
    want = -mamba.A_log.exp()[:, None] * F.softplus(x[0] @ mamba.dt_proj.weight.T + mamba.dt_bias).T
    torch.testing.assert_close(mamba(x, k)[0], want)
    pooled = DecayGate("pooled_key", 8, num_heads=4, num_kv_heads=2, temperature=16.0, init=0.99)
    b = pooled.key_bias.detach()
    assert math.isclose(torch.sigmoid(b[0]).item() ** (1 / 16), 0.99, rel_tol=1e-6)
    heads = k.mean(-1)[0][[0, 0, 1, 1]]  # query heads 0, 1 read key head 0; 2, 3 read key head 1
    torch.testing.assert_close(pooled(x, k)[0], F.logsigmoid(heads + b[:, None]) / 16)
    names = {n for n, _ in mamba.named_parameters()} | {n for n, _ in pooled.named_parameters()}
    assert names == {"dt_proj.weight", "dt_bias", "A_log", "key_bias"}


def test_unknown_gate_fails():
    with pytest.raises(ValueError, match="unknown gate"):
        LizardConfig(gate="lstm")


@pytest.mark.parametrize("combine", FORMS)
@pytest.mark.parametrize("kind", GATES)
def test_gate_gives_the_same_output_in_every_op_form(kind, combine):
    """The op inputs a layer with this gate produces: naive == chunked == recurrent (float64)."""
    model = lizard_model("llama", small(kind, combine)).double()
    layer = model.model.layers[1].self_attn
    seen = {}
    layer.capture = lambda _, inputs: seen.update(inputs)
    with torch.no_grad():
        model(torch.randint(0, 97, (2, 29)), use_cache=False)
    assert seen["g"] is not None and seen["g"].shape == (2, 6, 29)
    ref = lizard_attention_naive(**seen)
    chunk, _ = lizard_attention_chunk(**seen, chunk_size=8)
    rec, _ = lizard_attention_recurrent(**seen)
    torch.testing.assert_close(chunk, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(rec, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("combine", FORMS)
@pytest.mark.parametrize("kind", GATES)
def test_gate_decodes_like_the_full_forward(kind, combine):
    model = lizard_model("mistral", small(kind, combine))
    assert all(layer.gate.kind == kind for layer in model.modules() if isinstance(layer, LizardAttention))
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
    step, _ = decode_token_by_token(model, ids, prefill=7)
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", GATES)
def test_decay_scale_multiplies_every_designs_log_decay(kind):
    gate = DecayGate(kind, hidden_size=16, num_heads=6, num_kv_heads=2, temperature=16.0, init=0.99)
    with torch.no_grad():
        for p in gate.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, k = torch.randn(2, 5, 16), torch.randn(2, 2, 5, 4)
    plain = gate(x, k)
    gate.scale = 0.25
    torch.testing.assert_close(gate(x, k), 0.25 * plain, rtol=0, atol=0)


@pytest.mark.parametrize("combine", FORMS)
def test_a_models_decay_scale_is_a_config_it_saves_and_decodes_with(combine, tmp_path):
    """``set_decay_scale(s)`` on a loaded model = the same weights built with ``decay_scale=s``; it
    changes the logits, decodes token by token like the full forward, and survives save/load."""
    model = lizard_model("llama", small("scalar", combine))
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        before = model(ids, use_cache=False).logits
    model.set_decay_scale(0.25)
    with torch.no_grad():
        after = model(ids, use_cache=False).logits
    assert (after - before).abs().max() > 1e-3
    check_inference_knob(model, ids, after, "decay_scale", 0.25, tmp_path, tol=1e-4)


def check_inference_knob(model, ids, after, name: str, value: float, tmp_path, tol: float) -> None:
    """``model`` after ``set_<name>(value)`` gave ``after``: the same as its weights built with ``name=value``;
    token-by-token decoding agrees (to ``tol``); save/load keeps it; values <= 0 or infinite are refused and
    change nothing."""
    setter = getattr(model, "set_" + name)
    assert getattr(model.lizard_config, name) == value
    built = lizard_model("llama", LizardConfig(**{**model.lizard_config.to_dict(), name: value})).to(after.dtype)
    built.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(built(ids, use_cache=False).logits, after, rtol=0, atol=0)
    step, _ = decode_token_by_token(model, ids, prefill=7)
    torch.testing.assert_close(step, after, atol=tol, rtol=tol)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert getattr(loaded.lizard_config, name) == value
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, use_cache=False).logits, after, rtol=0, atol=0)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
            setter(bad)
    assert getattr(model.lizard_config, name) == value  # a refused value changes nothing


STRENGTHS = [("write_gate", "shared"), ("write_gate", "sum"), ("read_gate", "shared")]
"""Each strength gate with each form it works in (the read gate cancels in the sum form's N / Z)."""


@pytest.mark.parametrize("gate, combine", STRENGTHS)
def test_strength_gates_start_as_the_identity(gate, combine):
    """A write or read gate at init (s = 1) gives the same logits as none, bit for bit."""
    torch.manual_seed(0)
    teacher = TEACHERS["llama"]().eval()
    ids = torch.randint(0, 97, (2, 19))
    models = [lizardlm.convert(copy.deepcopy(teacher), LizardConfig(
        combine=combine, window_size=6, num_meta_tokens=2, feature_dim=8, chunk_size=8, **{gate: kind}))
        for kind in ("none", "head")]
    missing, unexpected = models[1].load_state_dict(models[0].state_dict(), strict=False)
    assert not unexpected and missing and all(f".{gate}." in name for name in missing)
    with torch.no_grad():
        logits = [m(ids, use_cache=False).logits for m in models]
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=0)


@pytest.mark.parametrize("gate", ["write_gate", "read_gate"])
def test_strength_gates_scale_what_each_token_writes_or_reads(gate):
    """s = 2 sigmoid(x W + b) per head scales phi(k) (write, key/value heads) or phi(q) (read, query
    heads, after the shared form's e^beta): the op sees fk * s or fq * s."""
    torch.manual_seed(0)
    config = (LizardConfig(mode="paper", write_gate="head", window_size=6, num_meta_tokens=2, feature_dim=8, chunk_size=8)
              if gate == "write_gate" else
              LizardConfig(read_gate="head", window_size=6, num_meta_tokens=2, feature_dim=8, chunk_size=8))
    model = lizard_model("llama", config).double()
    layer = model.model.layers[0].self_attn
    with torch.no_grad():
        layer.beta.normal_() if layer.beta is not None else None
    seen, hidden = {}, {}
    layer.capture = lambda _, inputs: seen.update(inputs)
    layer.register_forward_pre_hook(lambda _, args, kwargs: hidden.update(x=kwargs["hidden_states"]), with_kwargs=True)
    with torch.no_grad():
        model(torch.randint(0, 97, (2, 11)), use_cache=False)
        x = hidden["x"]
        B, T, _ = x.shape
        proj = getattr(layer, gate).proj
        s = 2 * torch.sigmoid(x @ proj.weight.T + proj.bias).transpose(1, 2)
        if gate == "write_gate":
            k = layer.k_proj(x).view(B, T, layer.num_kv_heads, layer.head_dim).transpose(1, 2)
            name, expected = "fk", layer.feature_map_k(k) * s[..., None]
        else:
            q = layer.q_proj(x).view(B, T, layer.num_heads, layer.head_dim).transpose(1, 2)
            name, expected = "fq", layer.feature_map_q(q) * layer.beta.exp()[:, None, None] * s[..., None]
    assert bool(((s > 0) & (s < 2)).all()) and float((s - 1).abs().max()) > 1e-3
    torch.testing.assert_close(seen[name], expected)


@pytest.mark.parametrize("combine", FORMS)
def test_write_contrast_sharpens_the_write_gate_and_is_a_config_it_saves(combine, tmp_path):
    """``set_write_contrast(c)``: the op sees ``phi(k) * 2 sigmoid(c (x W + b))`` (float64 reference); the
    same as the weights built with ``write_contrast=c``; decodes token by token like the full forward;
    survives save/load; refused without a write gate or out of range, changing nothing."""
    torch.manual_seed(0)
    config = LizardConfig(combine=combine, write_gate="head", window_size=6, num_meta_tokens=2, feature_dim=8, chunk_size=8)
    model = lizard_model("llama", config).double()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.write_gate.proj.weight.normal_(0, 0.3)
            layer.self_attn.write_gate.proj.bias.normal_()
    layer = model.model.layers[0].self_attn
    seen, hidden = {}, {}
    layer.capture = lambda _, inputs: seen.update(inputs)
    layer.register_forward_pre_hook(lambda _, args, kwargs: hidden.update(x=kwargs["hidden_states"]), with_kwargs=True)
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        before = model(ids, use_cache=False).logits
    model.set_write_contrast(3.0)
    assert model.lizard_config.write_contrast == 3.0
    with torch.no_grad():
        after = model(ids, use_cache=False).logits
        x = hidden["x"]
        B, T, _ = x.shape
        proj = layer.write_gate.proj
        s = 2 * torch.sigmoid(3.0 * (x @ proj.weight.T + proj.bias)).transpose(1, 2)
        k = layer.k_proj(x).view(B, T, layer.num_kv_heads, layer.head_dim).transpose(1, 2)
        torch.testing.assert_close(seen["fk"], layer.feature_map_k(k) * s[..., None])
    assert float(s.min()) < 0.1 and float(s.max()) > 1.9  # pushed out towards 0 and 2
    assert (after - before).abs().max() > 1e-3
    check_inference_knob(model, ids, after, "write_contrast", 3.0, tmp_path, tol=1e-5)  # the gates run in float32
    with pytest.raises(ValueError, match="write_contrast sharpens the write gate: it needs write_gate 'head'"):
        lizard_model("llama", small("scalar", combine)).set_write_contrast(2.0)


def test_decay_scale_needs_a_decay_gate():
    """A model whose linear branch does not decay (LoLCATs) refuses a decay scale, in the config and on a
    loaded model, and keeps its own; 1 (as trained) is accepted."""
    with pytest.raises(ValueError, match="decay_scale stretches the decay gate's half-lives"):
        LizardConfig(mode="lolcats", decay_scale=0.5)
    model = lizard_model("llama", LizardConfig(mode="lolcats", window_size=4, feature_dim=8, chunk_size=4))
    with pytest.raises(ValueError, match="it needs a gate other than 'none'"):
        model.set_decay_scale(0.5)
    assert model.lizard_config.decay_scale == 1.0
    model.set_decay_scale(1.0)


def captured_forward(config: LizardConfig):
    """A float64 Mistral-shaped model with ``config`` (Lizard parameters moved off their init) and one
    forward on random ids, layer 1's op inputs captured: ``(model, layer, inputs, ids, logits)``."""
    model = lizard_model("mistral", config).double()
    layer = model.model.layers[1].self_attn
    seen = {}
    layer.capture = lambda _, inputs: seen.update(inputs)
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
    layer.capture = None
    return model, layer, seen, ids, full


@pytest.mark.parametrize("gate, combine", STRENGTHS)
def test_strength_gates_agree_in_every_op_form_and_decode_like_the_forward(gate, combine):
    config = LizardConfig(combine=combine, window_size=6, num_meta_tokens=2, feature_dim=8, chunk_size=8,
                          **{gate: "head"})
    model, layer, seen, ids, full = captured_forward(config)
    ref = lizard_attention_naive(**seen)
    chunk, _ = lizard_attention_chunk(**seen, chunk_size=8)
    rec, _ = lizard_attention_recurrent(**seen)
    torch.testing.assert_close(chunk, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(rec, ref, rtol=1e-9, atol=1e-9)
    step, _ = decode_token_by_token(model, ids, prefill=7)
    torch.testing.assert_close(step, full, rtol=1e-6, atol=1e-6)  # the gates compute in float32
    grads = torch.autograd.grad(model(ids, labels=ids).loss, getattr(layer, gate).proj.weight)
    assert float(grads[0].abs().max()) > 0


def test_gate_flags_reach_the_config():
    parser = argparse.ArgumentParser()
    add_lizard_arguments(parser)
    config = lizard_config_from_args(parser.parse_args(["--mode", "paper", "--write-gate", "head", "--gate-init", "0.999"]))
    assert (config.write_gate, config.gate_init, config.gate) == ("head", 0.999, "token")
    assert lizard_config_from_args(parser.parse_args([])).write_gate == "none"
    config = lizard_config_from_args(parser.parse_args(["--read-gate", "head", "--write-gate", "head"]))
    assert (config.read_gate, config.write_gate, config.combine) == ("head", "head", "shared")
    with pytest.raises(ValueError, match="read_gate 'head' needs combine 'shared'"):
        LizardConfig(mode="paper", read_gate="head")
    for bad in ("1", "0", "nan"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--gate-init", bad])
