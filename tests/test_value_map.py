"""The value map (``LizardConfig.value_map="head"``): the linear memory stores ``v W_h`` per key/value
head and the window reads ``v``. Exact math against float64 references, every op form, decoding, and
the model around it (identity at start, gradients, save/load, the CLI flag)."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch

import lizardlm
from lizardlm import LizardConfig
from lizardlm.cli.common import add_lizard_arguments, lizard_config_from_args
from lizardlm.layers import LizardAttention
from lizardlm.ops import lizard_attention_chunk, lizard_attention_naive, lizard_attention_recurrent
from kernel_check import NAMES, make_inputs
from lizardlm.ops.lizard import empty_state, lizard_attention_step, map_values
from test_gates import captured_forward
from test_model import TEACHERS, decode_token_by_token

FORMS = ("shared", "sum")


def inputs(combine: str, T: int, seed: int, B: int = 2, H: int = 4, Hk: int = 2, D: int = 8, V: int = 6, F: int = 5):
    """``(tensors, keyword arguments)`` of the op in float64 (:func:`kernel_check.make_inputs`): a gate, meta
    slots (shared) or sink logits and alpha (sum), and a random value map ``(Hk, V, V)``."""
    made = make_inputs(B, H, Hk, T, D, V, F, 3, True, seed, form="shared" if combine == "shared" else "paper",
                       value_map=True)
    made = {n: None if t is None else t.double() for n, t in made.items()}
    return {n: made[n] for n in NAMES[:6]}, {n: made[n] for n in NAMES[6:]} | {"combine": combine}


def test_map_values_maps_each_key_value_head_by_its_own_matrix():
    v = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    W = torch.randn(3, 4, 4, dtype=torch.float64)
    out = map_values(v, W)
    for h in range(3):
        torch.testing.assert_close(out[:, h], v[:, h] @ W[h], rtol=0, atol=1e-12)
    assert map_values(v, None) is v
    grouped = map_values(v.repeat_interleave(2, dim=1), W)  # heads expanded to query heads: each group's map
    torch.testing.assert_close(grouped, out.repeat_interleave(2, dim=1), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="not a multiple"):
        map_values(v[:, :2], W)


@pytest.mark.parametrize("combine", FORMS)
@pytest.mark.parametrize("T", [5, 13, 40])
def test_naive_chunk_and_recurrent_forms_agree_with_a_value_map(combine, T):
    """T below the window, a few windows, not a multiple of the chunk; GQA groups, batch 2; the gradient
    of the map included; the chunked form continued from its own state at a cut matches too."""
    x, kw = inputs(combine, T, seed=T)
    W = kw["value_map"].requires_grad_()
    x["v"].requires_grad_()
    common = dict(window=6, scale=8**-0.5, **kw)
    ref = lizard_attention_naive(**x, **common)
    chunk, state = lizard_attention_chunk(**x, **common, chunk_size=8)
    rec, rec_state = lizard_attention_recurrent(**x, **common)
    torch.testing.assert_close(chunk, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rec, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(state.tensors(), rec_state.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    dy = torch.randn_like(ref)
    grads = [torch.autograd.grad((y * dy).sum(), W, retain_graph=True, allow_unused=True, materialize_grads=True)[0]
             for y in (ref, chunk, rec)]
    assert (float(grads[0].abs().max()) > 0) == (combine == "sum" or T > 6)  # no token left the window: no use
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=1e-9, atol=1e-10)
    cut = T // 2
    first, mid = lizard_attention_chunk(**{n: t[:, :, :cut] for n, t in x.items()}, **common, chunk_size=8)
    rest, _ = lizard_attention_chunk(**{n: t[:, :, cut:] for n, t in x.items()}, **common, chunk_size=8, state=mid)
    torch.testing.assert_close(torch.cat([first, rest], dim=2), ref, rtol=1e-10, atol=1e-10)


def test_the_map_is_the_linear_branch_alone():
    """Sum form with alpha = 0: y = N / (Z + eps) over ``v W``, i.e. the op without a map on values ``v W``;
    shared form with every token inside the window: the map changes nothing (no token left it)."""
    x, kw = inputs("sum", 17, seed=1)
    kw["alpha"] = torch.zeros_like(kw["alpha"])
    W = kw.pop("value_map")
    mapped = lizard_attention_naive(**x, window=6, scale=0.3, value_map=W, **kw)
    plain = lizard_attention_naive(**{**x, "v": map_values(x["v"], W)}, window=6, scale=0.3, **kw)
    torch.testing.assert_close(mapped, plain, rtol=1e-12, atol=1e-12)
    x, kw = inputs("shared", 6, seed=2)
    W = kw.pop("value_map")
    torch.testing.assert_close(lizard_attention_naive(**x, window=6, scale=0.3, value_map=W, **kw),
                               lizard_attention_naive(**x, window=6, scale=0.3, **kw), rtol=0, atol=0)


@pytest.mark.parametrize("combine", FORMS)
def test_decoding_steps_from_an_empty_state_match_the_naive_op(combine):
    x, kw = inputs(combine, 15, seed=3)
    ref = lizard_attention_naive(**x, window=4, scale=0.5, **kw)
    state = empty_state(x["q"], x["k"], x["v"], x["fk"])
    for t in range(15):
        y, state = lizard_attention_step(**{n: u[:, :, t:t + 1] for n, u in x.items()}, window=4, scale=0.5,
                                         state=state, **kw)
        torch.testing.assert_close(y, ref[:, :, t:t + 1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("combine", FORMS)
def test_a_value_map_starts_at_identity_and_changes_nothing(combine):
    """At init the map is the identity: the same logits as no map, bit for bit; its state-dict entry is
    the only new one, shaped key/value heads x V x V."""
    torch.manual_seed(0)
    teacher = TEACHERS["llama"]().eval()
    ids = torch.randint(0, 97, (2, 19))
    models = [lizardlm.convert(copy.deepcopy(teacher), LizardConfig(
        combine=combine, window_size=6, num_meta_tokens=2, feature_dim=8, chunk_size=8, value_map=kind))
        for kind in ("none", "head")]
    missing, unexpected = models[1].load_state_dict(models[0].state_dict(), strict=False)
    assert not unexpected and missing and all(name.endswith(".value_map") for name in missing)
    layer = models[1].model.layers[0].self_attn
    assert layer.value_map.shape == (layer.num_kv_heads, layer.head_dim, layer.head_dim)
    with torch.no_grad():
        logits = [m(ids, use_cache=False).logits for m in models]
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=0)


@pytest.mark.parametrize("combine", FORMS)
def test_a_model_with_a_value_map_decodes_like_its_forward_trains_it_and_saves_it(combine, tmp_path):
    config = LizardConfig(combine=combine, window_size=6, num_meta_tokens=2, feature_dim=8, chunk_size=8,
                          value_map="head")
    model, layer, seen, ids, full = captured_forward(config)
    assert seen["value_map"] is layer.value_map
    torch.testing.assert_close(lizard_attention_chunk(**seen, chunk_size=8)[0], lizard_attention_naive(**seen),
                               rtol=1e-9, atol=1e-9)
    step, _ = decode_token_by_token(model, ids, prefill=7)
    torch.testing.assert_close(step, full, rtol=1e-6, atol=1e-6)
    grad = torch.autograd.grad(model(ids, labels=ids).loss, layer.value_map)[0]
    assert float(grad.abs().max()) > 0
    assert any(p is layer.value_map for p in layer.lizard_parameters())
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).double()
    assert loaded.lizard_config.value_map == "head"
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, use_cache=False).logits, full, rtol=0, atol=0)


def test_the_value_map_flag_reaches_the_config():
    parser = argparse.ArgumentParser()
    add_lizard_arguments(parser)
    assert lizard_config_from_args(parser.parse_args(["--value-map", "head"])).value_map == "head"
    assert lizard_config_from_args(parser.parse_args(["--mode", "paper"])).value_map == "none"
    assert LizardConfig.from_dict({k: v for k, v in LizardConfig().to_dict().items() if k != "value_map"}).value_map == "none"
    with pytest.raises(ValueError, match="unknown value_map 'full'"):
        LizardConfig(value_map="full")
    with pytest.raises(SystemExit):
        parser.parse_args(["--value-map", "full"])


def test_a_run_with_a_value_map_trains_it_on_the_answer_rows_and_loads(books, teacher_dir, tmp_path, capsys):
    """``linearize --value-map head --answer-rows lizard`` on retrieval documents (answers-only loss): the map
    leaves its identity start (a Lizard parameter: the answer rows train it) while LoRA's B stays at zero;
    the saved model loads with the config and the map it trained."""
    from safetensors.torch import load_file

    from lizardlm.cli import main as cli_main

    spec = f"retrieval:count=6:length=128:seed=1:keys=1:key-tokens=3:loss=answers:filler={books}"
    out = tmp_path / "run"
    argv = ["linearize", "--teacher", str(teacher_dir), "--data", spec, "--out", str(out), "--seq-len", "128",
            "--batch-size", "2", "--stage1-tokens", "256", "--stage2-tokens", "512", "--val-tokens", "256",
            "--device", "cpu", "--feature-dim", "8", "--window-size", "8", "--stage2-train-lizard",
            "--answer-rows", "lizard", "--value-map", "head"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    lizard = load_file(out / "lizard.safetensors")
    maps = {k: v for k, v in lizard.items() if k.endswith("value_map")}
    assert maps and all(v.shape[-1] == v.shape[-2] for v in maps.values())
    eye = torch.eye(next(iter(maps.values())).shape[-1])
    assert any(float((v.float() - eye).abs().max()) > 0 for v in maps.values())
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert all(v.abs().max() == 0 for k, v in adapter.items() if "lora_B" in k)
    model = lizardlm.load(out)
    assert model.lizard_config.value_map == "head"
    layer = next(m for m in model.modules() if isinstance(m, LizardAttention))
    name = next(k for k in maps if k.endswith(f"layers.{layer.layer_idx}.self_attn.value_map"))
    torch.testing.assert_close(layer.value_map.detach(), maps[name].float(), rtol=0, atol=0)
