"""benchmarks/read_sharpness_pilot.py: the sharpened query map is the Hedgehog map at scaled logits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from read_sharpness_pilot import SharpenedQuery  # noqa: E402

from lizardlm.layers.feature_map import HedgehogFeatureMap  # noqa: E402


@pytest.mark.parametrize("sharpness", [1.0, 2.0, 3.5])
def test_sharpened_query_scales_the_logits(sharpness):
    torch.manual_seed(int(sharpness * 10))
    fm = HedgehogFeatureMap(3, 8, 6).double()
    with torch.no_grad():
        fm.weight.normal_()
    u = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    logits = torch.einsum("bhtd,hdf->bhtf", u, fm.weight) * sharpness
    expected = torch.cat([logits.softmax(-1), (-logits).softmax(-1)], -1)
    got = SharpenedQuery(fm, sharpness)(u)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if sharpness != 1:
        assert (got - fm(u)).abs().max() > 1e-3  # not the plain map
