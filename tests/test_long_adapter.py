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
VO, QKVO = ["v_proj", "o_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]


def small(combine: str, rank: int = 3, targets: list[str] = VO) -> LizardConfig:
    return LizardConfig(combine=combine, window_size=W, num_meta_tokens=2, feature_dim=8, chunk_size=8, long_adapter=rank,
                        long_adapter_targets=targets)


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


@pytest.mark.parametrize("targets", [VO, QKVO], ids=["vo", "qkvo"])
@pytest.mark.parametrize("combine", FORMS)
def test_long_adapters_start_at_zero_and_leave_short_prompts_alone(combine, targets):
    """At init the model gives the logits of one without them, bit for bit (their state-dict entries the only
    new ones, one per target); trained (moved off zero), the first ``w`` positions keep those logits exactly and
    the later ones change."""
    torch.manual_seed(0)
    teacher = TEACHERS["llama"]().eval()
    ids = torch.randint(0, 97, (2, 19))
    models = [lizardlm.convert(copy.deepcopy(teacher), small(combine, r, targets)) for r in (0, 3)]
    missing, unexpected = models[1].load_state_dict(models[0].state_dict(), strict=False)
    assert not unexpected and {n.split(".")[-2] for n in missing} == {f"long_{t[0]}" for t in targets}
    layer = models[1].model.layers[0].self_attn
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        adapter, proj = getattr(layer, f"long_{name[0]}"), getattr(layer, name)
        assert (adapter is not None) == (name in targets)
        if adapter is not None:
            assert adapter.A.shape == (3, proj.in_features) and adapter.B.shape == (proj.out_features, 3)
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


@pytest.mark.parametrize("targets", [VO, QKVO], ids=["vo", "qkvo"])
@pytest.mark.parametrize("combine", FORMS)
def test_a_model_with_long_adapters_decodes_like_its_forward_trains_them_and_saves_them(combine, targets, tmp_path):
    """Token by token and prefill + steps give the full forward's logits (the cache's count is the position);
    the loss reaches every adapter (Lizard parameters); save / load keeps them."""
    model, layer, _, ids, full = captured_forward(small(combine, targets=targets))
    step, _ = decode_token_by_token(model, ids)
    torch.testing.assert_close(step, full, rtol=1e-9, atol=1e-9)
    prefilled, _ = decode_token_by_token(model, ids, prefill=4)  # the prefill inside the window, then across it
    torch.testing.assert_close(prefilled, full, rtol=1e-9, atol=1e-9)
    loss = model(ids, labels=ids).loss
    params = [p for t in targets for p in (getattr(layer, f"long_{t[0]}").A, getattr(layer, f"long_{t[0]}").B)]
    assert len(params) == 2 * len(targets)
    assert all(float(g.abs().max()) > 0 for g in torch.autograd.grad(loss, params))
    assert {id(p) for p in params} <= {id(p) for p in layer.lizard_parameters()}
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).double()
    assert loaded.lizard_config.long_adapter == 3 and loaded.lizard_config.long_adapter_targets == targets
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, use_cache=False).logits, full, rtol=0, atol=0)


@pytest.mark.parametrize("combine", FORMS)
def test_left_padded_rows_count_their_positions_from_their_first_real_token(combine):
    assert_padded_rows_score_as_alone(lizard_model("llama", small(combine, targets=QKVO)))


def test_the_query_and_key_adapters_act_from_the_window_on():
    """With q/k targeted, the op's queries and keys change at ``p >= w`` only when those adapters move."""
    model, layer, seen, ids, _ = captured_forward(small("shared", targets=QKVO))
    plain = {}
    layer.capture = lambda _, inputs: plain.update(inputs)
    with torch.no_grad():
        layer.long_q.B.zero_()
        layer.long_k.B.zero_()
        model(ids, use_cache=False)
    layer.capture = None
    for name in ("q", "k", "fq", "fk"):
        torch.testing.assert_close(seen[name][:, :, :W], plain[name][:, :, :W], rtol=0, atol=0)
        assert not torch.allclose(seen[name][:, :, W:], plain[name][:, :, W:])


def test_with_a_memory_handed_in_every_token_is_far():
    """State passing: a row that continues a document (a memory handed in) runs the adapters from its first token."""
    model = lizard_model("llama", small("shared"))
    layer = model.model.layers[0].self_attn
    assert not layer._far(9, torch.device("cpu"), None, None)[0, :W].any()
    layer.handoff = StateHandoff(initial=torch.zeros(1))
    assert layer._far(9, torch.device("cpu"), None, None).all()
    layer.handoff = None


@pytest.mark.parametrize("targets", [VO, QKVO], ids=["vo", "qkvo"])
def test_attention_transfer_targets_the_teachers_attention_without_the_adapters(targets):
    """Stage 1's target is the teacher's own attention output: the adapters change the student's side only."""
    torch.manual_seed(0)
    teacher = TEACHERS["llama"]().eval().double()
    ids = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        expected = teacher(ids).logits
        student = lizard_model("llama", small("shared", targets=targets)).double()
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
    given = parser.parse_args(["--long-adapter", "4", "--long-adapter-targets", "o_proj,k_proj,q_proj,v_proj"])
    assert lizard_config_from_args(given).long_adapter_targets == QKVO  # in the layer's order
    assert LizardConfig().long_adapter_targets == VO
    with pytest.raises(ValueError, match="long_adapter_targets must name some of"):
        LizardConfig(long_adapter=2, long_adapter_targets=["gate_proj"])
    with pytest.raises(ValueError, match="long_adapter_targets must name some of"):
        LizardConfig(long_adapter=2, long_adapter_targets=[])


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
