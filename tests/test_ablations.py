"""The paper form's component ablations: no gate, no sink logits, no window (``paper_no_window``:
``y = N / (Z + eps)``, pure gated linear attention), and no stage 1 (``--stage1-tokens 0``)."""

from __future__ import annotations

import json

import pytest
import torch

from lizardlm import LizardConfig
from lizardlm.cli import main as cli_main
from lizardlm.ops import gla_naive
from lizardlm.ops.lizard import SUM_EPS
from lizardlm.ops.utils import expand_heads
from test_model import decode_token_by_token, lizard_model


def test_paper_ablation_modes_change_one_part_each():
    paper = LizardConfig(mode="paper")
    for mode, changed in (("paper_no_gate", {"gate": "none"}), ("paper_no_sink", {"num_meta_tokens": 0}),
                          ("paper_no_window", {"window_size": 0, "num_meta_tokens": 0})):
        config = LizardConfig(mode=mode).to_dict()
        diff = {k: v for k, v in config.items() if k != "mode" and v != paper.to_dict()[k]}
        assert diff == changed, mode


def test_no_window_is_pure_gated_linear_attention():
    """mode paper_no_window: the layer outputs o_proj(N / (Z + eps)) of the gated linear branch over all tokens,
    has no alpha or sink parameter, and decodes token by token like its forward."""
    config = LizardConfig(mode="paper_no_window", feature_dim=8, chunk_size=8)
    model = lizard_model("llama", config).double()
    layer = model.model.layers[0].self_attn
    assert layer.sink_logits is None and "alpha" not in dict(layer.named_parameters())
    seen, outs = {}, []
    layer.capture = lambda _, inputs: seen.update(inputs)
    layer.register_forward_hook(lambda _m, _i, out: outs.append(out[0]))
    with torch.no_grad():
        model(torch.randint(0, 97, (2, 19)), use_cache=False)
    H = seen["q"].shape[1]
    v1 = torch.cat([seen["v"], torch.ones_like(seen["v"][..., :1])], dim=-1)
    lin, _ = gla_naive(seen["fq"], expand_heads(seen["fk"], H), expand_heads(v1, H), seen["g"])
    y = lin[..., :-1] / (lin[..., -1:] + SUM_EPS)
    torch.testing.assert_close(outs[0], layer.o_proj(y.transpose(1, 2).reshape(2, 19, -1)), rtol=1e-9, atol=1e-9)
    ids = torch.randint(0, 97, (1, 17))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
    step, _ = decode_token_by_token(model, ids, prefill=4)
    torch.testing.assert_close(step, full, rtol=1e-7, atol=1e-7)


def test_window_zero_needs_the_sum_form_and_no_sinks():
    with pytest.raises(ValueError, match="window_size must be >= 1"):
        LizardConfig(window_size=0)  # our shared form normalises the window and the linear branch together
    with pytest.raises(ValueError, match="num_meta_tokens 0"):
        LizardConfig(mode="paper", window_size=0)


def test_cli_trains_without_stage_1_and_without_a_window(tmp_path, teacher_dir, data_file):
    """``--stage1-tokens 0`` (no attention transfer) and ``--mode paper_no_window`` run end to end."""
    out = tmp_path / "run"
    rc = cli_main(["linearize", "--teacher", str(teacher_dir), "--data", str(data_file), "--out", str(out),
                   "--seq-len", "32", "--batch-size", "4", "--stage1-tokens", "0", "--stage2-tokens", "256",
                   "--val-tokens", "128", "--device", "cpu", "--mode", "paper_no_window", "--feature-dim", "8"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "paper_no_window" and summary["stage1_seconds"] < 5
    assert summary["stage1_val_mse_per_layer"] == pytest.approx(summary["stage1_val_mse_init_per_layer"])
