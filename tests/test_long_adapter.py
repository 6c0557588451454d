"""The long adapter (``LizardConfig.long_adapter``): a low-rank delta on ``v_proj`` / ``o_proj`` that acts only on
tokens at position >= the window, against float64 references, and the model around it (zero at start, short
prompts untouched, decoding = forward, left padding, state passing, attention transfer's target, save/load, the
flag, a run)."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch

import lizardlm
from lizardlm import LizardConfig
from lizardlm.cli.common import add_lizard_arguments, lizard_config_from_args
from lizardlm.layers.attention import StateHandoff, attention_transfer
from lizardlm.layers.long_adapter import LongAdapter
from test_gates import captured_forward
from test_model import TEACHERS, assert_padded_rows_score_as_alone, decode_token_by_token, lizard_model

FORMS = ("shared", "sum")
W = 6


def small(combine: str, rank: int = 3) -> LizardConfig:
    return LizardConfig(combine=combine, window_size=W, num_meta_tokens=2, feature_dim=8, chunk_size=8, long_adapter=rank)


def test_the_delta_is_scaled_low_rank_and_gated_by_position():
    """``s [p >= start] x A^T B^T`` in float64, on fresh random weights; zero at init."""
    torch.manual_seed(1)
    adapter = LongAdapter(5, 7, 2, alpha=3.0).double()
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    far = torch.rand(2, 9) > 0.5
    assert float(adapter(x, far).detach().abs().max()) == 0.0
    with torch.no_grad():
        adapter.B.normal_()
    ref = torch.zeros(2, 9, 7, dtype=torch.float64)
    for b in range(2):
        for t in range(9):
            if far[b, t]:
                ref[b, t] = 1.5 * adapter.B @ (adapter.A @ x[b, t])
    torch.testing.assert_close(adapter(x, far), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(adapter(x, far[:1]), adapter(x, far[:1].expand(2, 9)), rtol=0, atol=0)


@pytest.mark.parametrize("combine", FORMS)
def test_long_adapters_start_at_zero_and_leave_short_prompts_alone(combine):
    """At init the model gives the logits of one without them, bit for bit (their state-dict entries the only
    new ones); trained (moved off zero), the first ``w`` positions keep those logits exactly and the later ones
    change."""
    torch.manual_seed(0)
    teacher = TEACHERS["llama"]().eval()
    ids = torch.randint(0, 97, (2, 19))
    models = [lizardlm.convert(copy.deepcopy(teacher), small(combine, r)) for r in (0, 3)]
    missing, unexpected = models[1].load_state_dict(models[0].state_dict(), strict=False)
    assert not unexpected and missing and all(n.split(".")[-2] in ("long_v", "long_o") for n in missing)
    layer = models[1].model.layers[0].self_attn
    hidden = layer.v_proj.in_features
    assert layer.long_v.A.shape == (3, hidden) and layer.long_v.B.shape == (layer.v_proj.out_features, 3)
    assert layer.long_o.A.shape == (3, layer.o_proj.in_features) and layer.long_o.B.shape == (hidden, 3)
    with torch.no_grad():
        logits = [m(ids, use_cache=False).logits for m in models]
        torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=0)
        for m in models[1].modules():
            if isinstance(m, LongAdapter):
                m.B.normal_()
        moved = models[1](ids, use_cache=False).logits
    torch.testing.assert_close(moved[:, :W], logits[0][:, :W], rtol=0, atol=0)
    assert (moved[:, W:] - logits[0][:, W:]).abs().amax(dim=-1).min() > 1e-4


@pytest.mark.parametrize("combine", FORMS)
def test_the_op_reads_the_adapted_values_beyond_the_window(combine):
    """The op's values are ``v_proj(x) + s x A^T B^T`` at ``p >= w`` and ``v_proj(x)`` before."""
    model, layer, seen, ids, _ = captured_forward(small(combine))
    x = []
    hook = layer.v_proj.register_forward_hook(lambda _, inputs, out: x.append((inputs[0], out)))
    with torch.no_grad():
        model(ids, use_cache=False)
    hook.remove()
    hidden, plain = x[0]
    B, T = ids.shape
    far = (torch.arange(T) >= W)[None].expand(B, T)
    ref = plain + layer.long_v.scaling * far[..., None] * (hidden @ layer.long_v.A.T @ layer.long_v.B.T)
    ref = ref.view(B, T, layer.num_kv_heads, layer.head_dim).transpose(1, 2)
    torch.testing.assert_close(seen["v"], ref, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(seen["v"][:, :, W:], plain.view(B, T, -1, layer.head_dim).transpose(1, 2)[:, :, W:])


@pytest.mark.parametrize("combine", FORMS)
def test_a_model_with_long_adapters_decodes_like_its_forward_trains_them_and_saves_them(combine, tmp_path):
    """Token by token and prefill + steps give the full forward's logits (the cache's count is the position);
    the loss reaches both adapters (Lizard parameters); save / load keeps them."""
    model, layer, _, ids, full = captured_forward(small(combine))
    step, _ = decode_token_by_token(model, ids)
    torch.testing.assert_close(step, full, rtol=1e-9, atol=1e-9)
    prefilled, _ = decode_token_by_token(model, ids, prefill=4)  # the prefill inside the window, then across it
    torch.testing.assert_close(prefilled, full, rtol=1e-9, atol=1e-9)
    loss = model(ids, labels=ids).loss
    params = [layer.long_v.A, layer.long_v.B, layer.long_o.A, layer.long_o.B]
    assert all(float(g.abs().max()) > 0 for g in torch.autograd.grad(loss, params))
    assert {id(p) for p in params} <= {id(p) for p in layer.lizard_parameters()}
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).double()
    assert loaded.lizard_config.long_adapter == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, use_cache=False).logits, full, rtol=0, atol=0)


@pytest.mark.parametrize("combine", FORMS)
def test_left_padded_rows_count_their_positions_from_their_first_real_token(combine):
    assert_padded_rows_score_as_alone(lizard_model("llama", small(combine)))


def test_with_a_memory_handed_in_every_token_is_far():
    """State passing: a row that continues a document (a memory handed in) runs the adapters from its first token."""
    model = lizard_model("llama", small("shared"))
    layer = model.model.layers[0].self_attn
    assert not layer._far(9, torch.device("cpu"), None, None)[0, :W].any()
    layer.handoff = StateHandoff(initial=torch.zeros(1))
    assert layer._far(9, torch.device("cpu"), None, None).all()
    layer.handoff = None


def test_attention_transfer_targets_the_teachers_attention_without_the_adapters():
    """Stage 1's target is the teacher's own attention output: the adapters change the student's side only."""
    torch.manual_seed(0)
    teacher = TEACHERS["llama"]().eval().double()
    ids = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        expected = teacher(ids).logits
        student = lizard_model("llama", small("shared")).double()
        with attention_transfer(student) as layers:
            passed = student(ids, use_cache=False).logits
            losses = [float(layer.transfer_loss) for layer in layers]
    torch.testing.assert_close(passed, expected, rtol=1e-9, atol=1e-9)
    assert all(loss > 0 for loss in losses)


def test_the_long_adapter_flag_reaches_the_config():
    parser = argparse.ArgumentParser()
    add_lizard_arguments(parser)
    assert lizard_config_from_args(parser.parse_args(["--long-adapter", "8"])).long_adapter == 8
    assert lizard_config_from_args(parser.parse_args(["--mode", "paper"])).long_adapter == 0
    assert LizardConfig.from_dict({k: v for k, v in LizardConfig().to_dict().items() if k != "long_adapter"}).long_adapter == 0
    with pytest.raises(ValueError, match="long_adapter must be >= 0"):
        LizardConfig(long_adapter=-1)
    with pytest.raises(ValueError, match="long_adapter_alpha"):
        LizardConfig(long_adapter=2, long_adapter_alpha=0.0)


def test_a_run_on_answer_rows_trains_the_long_adapter_and_not_the_lora(books, teacher_dir, tmp_path, capsys):
    """``linearize --long-adapter 2 --answer-rows lizard`` on retrieval rows alone: LoRA's B stays exactly zero,
    the long adapters' B move off zero, and the run loads with them."""
    from safetensors.torch import load_file

    from lizardlm.cli import main as cli_main
    from lizardlm.layers import LizardAttention

    out = tmp_path / "run"
    spec = f"retrieval:count=6:length=128:seed=1:keys=1:key-tokens=3:loss=answers:filler={books}"
    argv = ["linearize", "--teacher", str(teacher_dir), "--data", spec, "--out", str(out), "--seq-len", "128",
            "--batch-size", "2", "--stage1-tokens", "256", "--stage2-tokens", "512", "--val-tokens", "256",
            "--device", "cpu", "--feature-dim", "8", "--window-size", "8", "--stage2-train-lizard",
            "--answer-rows", "lizard", "--long-adapter", "2"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    lora_b = [v for k, v in load_file(out / "adapter" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and all(v.abs().max() == 0 for v in lora_b)
    saved = {k: v for k, v in load_file(out / "lizard.safetensors").items() if ".long_" in k}
    assert {k.rsplit(".", 2)[-2] for k in saved} == {"long_v", "long_o"}
    assert all(float(v.abs().max()) > 0 for k, v in saved.items() if k.endswith(".B"))
    model = lizardlm.load(out)
    assert model.lizard_config.long_adapter == 2
    layer = next(m for m in model.modules() if isinstance(m, LizardAttention))
    name = f"model.layers.{layer.layer_idx}.self_attn.long_o.B"
    torch.testing.assert_close(layer.long_o.B.detach(), saved[name].float(), rtol=0, atol=0)
