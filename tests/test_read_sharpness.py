"""``LizardConfig.read_sharpness``: the query feature map's logits times ``t``, as an inference knob."""

from __future__ import annotations

import pytest
import torch

from lizardlm import LizardConfig
from lizardlm.layers.feature_map import HedgehogFeatureMap
from test_gates import check_inference_knob
from test_model import lizard_model


@pytest.mark.parametrize("sharpness", [1.0, 2.0, 3.5])
def test_the_feature_map_softmaxes_scaled_logits(sharpness):
    torch.manual_seed(int(sharpness * 10))
    fm = HedgehogFeatureMap(3, 8, 6, sharpness).double()
    with torch.no_grad():
        fm.weight.normal_()
    u = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    logits = torch.einsum("bhtd,hdf->bhtf", u, fm.weight) * sharpness
    torch.testing.assert_close(fm(u), torch.cat([logits.softmax(-1), (-logits).softmax(-1)], -1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode, combine", [("lizard", "shared"), ("lizard", "sum"), ("lolcats", None)])
def test_read_sharpness_scales_what_the_op_reads_and_is_a_config_it_saves(mode, combine, tmp_path):
    """``set_read_sharpness(t)``: the op's query features are those of the query map's weights times ``t``
    at sharpness 1 (``(t u) W = u (t W)``), its key features unchanged; the same as the weights built with
    ``read_sharpness=t``; decodes token by token like the full forward; survives save/load; values out of
    range refused, changing nothing. Every mode has it, LoLCATs' (no gate) included."""
    torch.manual_seed(0)
    config = LizardConfig(mode=mode, combine=combine, window_size=6, num_meta_tokens=2, feature_dim=8, chunk_size=8)
    model = lizard_model("llama", config).double()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.feature_map_q.weight.normal_(0, 0.5)
    layer = model.model.layers[0].self_attn
    seen = []
    layer.capture = lambda _, inputs: seen.append({k: inputs[k].clone() for k in ("fq", "fk")})
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        before = model(ids, use_cache=False).logits
        model.set_read_sharpness(2.0)
        after = model(ids, use_cache=False).logits
        model.set_read_sharpness(1.0)
        layer.feature_map_q.weight.mul_(2)
        model(ids, use_cache=False)
        layer.feature_map_q.weight.div_(2)
    plain, sharp, doubled = seen
    torch.testing.assert_close(sharp["fq"], doubled["fq"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sharp["fk"], plain["fk"], rtol=0, atol=0)
    assert (sharp["fq"] - plain["fq"]).abs().max() > 1e-3
    assert (after - before).abs().max() > 1e-3
    layer.capture = None
    model.set_read_sharpness(2.0)
    check_inference_knob(model, ids, after, "read_sharpness", 2.0, tmp_path, tol=1e-8)
