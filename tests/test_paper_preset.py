"""The paper's recipe as a preset (``--preset paper``)."""

from __future__ import annotations

import pytest

from lizardlm.train.settings import PRESETS, TrainSettings, settings_from_preset


def test_paper_preset_is_the_papers_recipe():
    s = settings_from_preset("paper")
    assert (s.data, s.seq_len, s.batch_size) == ("alpaca-cleaned", 2048, 8)
    assert (s.stage1_tokens, s.stage2_tokens) == (20_000_000, 20_000_000)
    assert (s.stage1_lr, s.stage2_lr, s.warmup_fraction, s.adam_betas) == (1e-3, 5e-4, 0.1, [0.9, 0.99])
    assert (s.lora_rank, s.lora_alpha, s.lora_targets) == (8, 16.0, ["q_proj", "k_proj", "v_proj"])
    c = s.lizard_config()
    assert (c.mode, c.combine, c.window_size, c.feature_dim, c.num_meta_tokens) == ("paper", "sum", 128, 128, 4)


def test_flags_override_the_preset_and_its_layer():
    s = settings_from_preset("paper", stage1_tokens=1_000_000, lizard={"mode": "lizard", "window_size": 128})
    assert s.stage1_tokens == 1_000_000 and s.seq_len == 2048
    c = s.lizard_config()
    assert (c.mode, c.combine, c.window_size) == ("lizard", "shared", 128)  # our form on the paper's recipe
    assert settings_from_preset("paper", lizard={"window_size": 64}).lizard_config().mode == "paper"


def test_older_presets_keep_torch_adam_betas():
    assert "adam_betas" not in PRESETS["gpu"] and settings_from_preset("gpu").adam_betas == [0.9, 0.999]
    with pytest.raises(ValueError, match="adam-betas"):
        TrainSettings(adam_betas=[0.9, 1.5])


def test_long_context_preset_is_the_measured_mixr2k_recipe():
    """``--preset long-context`` trains exactly what the H200 run ``mixr2k`` recorded in its run.json
    (the best passkey so far), every setting that run wrote down, and the newer settings at their defaults."""
    import json
    from pathlib import Path

    recorded = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "retrieval-mix-nvidia-h200"
                           / "mixr2k-run.json").read_text())["settings"]
    preset = settings_from_preset("long-context")
    s = preset.to_dict()
    differ = {k: (s[k], v) for k, v in recorded.items() if k not in ("teacher", "device", "lizard") and s[k] != v}
    assert not differ, differ
    assert preset.lizard_config() == TrainSettings(lizard=recorded["lizard"]).lizard_config()
    newer = set(s) - set(recorded)
    assert newer and all(s[k] == TrainSettings().to_dict()[k] for k in newer), newer
