"""The teacher-lora baseline run, hybrid layer selection (even:K, auto:K) and the KV-cache bytes helper."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import DynamicCache, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention

import lizardlm
from lizardlm import LizardCache, LizardConfig
from lizardlm.cache import CACHE_KWARG
from lizardlm.cli import main as cli_main
from lizardlm.layers import LizardAttention
from lizardlm.train import RunDir, TrainSettings, linearize
from lizardlm.train.hybrid import even_layers, kv_cache_bytes, parse_select, worst_layers
from lizardlm.train.loop import MetricsLog
from test_model import TEACHERS, lizard_model

LIZARD = {"window_size": 8, "feature_dim": 8, "num_meta_tokens": 2, "chunk_size": 8}


def settings(teacher_dir, data_file, **kw) -> TrainSettings:
    base = dict(teacher=str(teacher_dir), data=str(data_file), seq_len=32, batch_size=4, stage1_tokens=32 * 4 * 6,
                stage2_tokens=32 * 4 * 5, val_tokens=32 * 8, stage1_lr=2e-2, stage2_lr=3e-3, device="cpu", lizard=LIZARD)
    return TrainSettings(**{**base, **kw})


def test_teacher_lora_runs_stage_2_alone_and_loads_and_evaluates(tmp_path, teacher_dir, data_file, tiny_llama):
    out, ref = tmp_path / "teacher-lora", tmp_path / "lizard"
    rc = cli_main(["linearize", "--teacher", str(teacher_dir), "--data", str(data_file), "--out", str(out),
                   "--seq-len", "32", "--batch-size", "4", "--stage1-tokens", str(32 * 4 * 6), "--stage2-tokens",
                   str(32 * 4 * 5), "--val-tokens", "256", "--stage2-lr", "3e-3", "--device", "cpu",
                   "--baseline", "teacher-lora"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == "teacher-lora" and summary["mode"] == "teacher-lora"
    assert summary["stage1_val_loss"] is None and summary["student_val_loss"] < summary["teacher_val_loss"]
    assert summary["softmax_layers"] == [0, 1]
    assert not (out / "lizard.safetensors").exists() and not (out / "config.json").exists()
    logged = MetricsLog(RunDir(out))
    assert logged.read("stage1") == [] and len(logged.read("stage2")) == 5
    # the same stage 2 as a linearization with these settings: steps, LR schedule, LoRA targets
    linearize(settings(teacher_dir, data_file), ref)
    lr = lambda run: [row["lr"] for row in MetricsLog(RunDir(run)).read("stage2")]  # noqa: E731
    assert lr(out) == lr(ref)
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert adapter["base_model_name_or_path"] == str(teacher_dir.resolve())

    model = lizardlm.load(out)
    assert type(model) is LlamaForCausalLM  # the teacher, its LoRA merged
    ids = torch.randint(0, 500, (1, 20))
    with torch.no_grad():
        tuned, plain = model(ids).logits, tiny_llama(ids).logits
    assert not torch.allclose(tuned, plain, atol=1e-4)
    rc = cli_main(["eval", "--model", str(out), "--tasks", "wikitext2_valid", "--limit", "1", "--window", "64",
                   "--no-plots", "--no-progress", "--out", str(tmp_path / "eval")])
    assert rc == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert next(iter(result["tasks"]["wikitext2_valid"].values()))["status"] == "ok"


def test_auto_select_reverts_the_worst_layers_after_stage_1(tmp_path, teacher_dir, data_file):
    out = tmp_path / "run"
    summary = linearize(settings(teacher_dir, data_file, softmax_select="auto:1"), out)
    mse = summary["stage1_val_mse_per_layer"]
    worst = [max(range(2), key=mse.__getitem__)]
    assert summary["softmax_layers"] == worst
    assert json.loads((out / "run.json").read_text())["results"]["softmax_layers"] == worst
    saved = load_file(out / "lizard.safetensors")
    assert saved and not [n for n in saved if n.startswith(f"model.layers.{worst[0]}.")]  # its Lizard params dropped
    model = lizardlm.load(out)
    assert model.config.lizard["softmax_layers"] == worst
    assert isinstance(model.model.layers[worst[0]].self_attn, LlamaAttention)
    assert isinstance(model.model.layers[1 - worst[0]].self_attn, LizardAttention)


def test_even_select_is_fixed_before_conversion(tmp_path, teacher_dir, data_file):
    summary = linearize(settings(teacher_dir, data_file, softmax_select="even:1"), tmp_path / "run")
    assert summary["softmax_layers"] == [1] and len(summary["stage1_val_mse_per_layer"]) == 1
    assert lizardlm.load(tmp_path / "run").config.lizard["softmax_layers"] == [1]


def test_selection_helpers_and_their_errors():
    assert even_layers(30, 8) == [1, 5, 9, 13, 16, 20, 24, 28]
    assert even_layers(30, 15) == list(range(1, 30, 2))
    assert worst_layers([0.1, 0.9, 0.5, 0.7], [0, 2, 3, 5], 2) == [2, 5]
    assert parse_select("auto:3") == ("auto", 3)
    for bad in ("auto:0", "best:2", "even:x"):
        with pytest.raises(ValueError, match="even:K or auto:K"):
            parse_select(bad)
    with pytest.raises(ValueError, match="cannot keep 4 of 4"):
        even_layers(4, 4)
    with pytest.raises(ValueError, match="given twice"):
        TrainSettings(softmax_select="even:2", lizard={"softmax_layers": [0]})
    with pytest.raises(ValueError, match="unknown baseline"):
        TrainSettings(baseline="teacher")


@pytest.mark.parametrize("config", [
    LizardConfig(window_size=8, num_meta_tokens=2, feature_dim=8),
    LizardConfig(window_size=8, num_meta_tokens=2, feature_dim=8, softmax_layers=[1]),
    LizardConfig(mode="paper", window_size=8, feature_dim=8),
    LizardConfig(mode="paper_no_window", feature_dim=8, softmax_layers=[0, 2]),
], ids=["shared", "shared-hybrid", "sum", "no-window-hybrid"])
def test_kv_cache_bytes_is_what_the_cache_holds(config):
    model = lizard_model("llama", config)
    for context in (5, 30):
        cache = LizardCache.for_model(model)
        with torch.no_grad():
            model(torch.randint(0, 97, (1, context)), **{CACHE_KWARG: cache}, use_cache=True)
        assert kv_cache_bytes(model.config, config, context, value_bytes=4) == cache.nbytes(), context
    teacher, cache = TEACHERS["llama"]().eval(), DynamicCache()
    with torch.no_grad():
        teacher(torch.randint(0, 97, (1, 30)), **{CACHE_KWARG: cache}, use_cache=True)
    assert kv_cache_bytes(teacher.config, None, 30, value_bytes=4) == lizardlm.cache.cache_nbytes(cache)


def test_cli_softmax_layers_forms(tmp_path, teacher_dir, capsys):
    for bad in ("auto:0", "top:2"):
        with pytest.raises(SystemExit):
            cli_main(["linearize", "--teacher", str(teacher_dir), "--out", str(tmp_path / "x"), "--softmax-layers", bad])
    assert "even:K or auto:K" in capsys.readouterr().err
    rc = cli_main(["generate", "--model", str(teacher_dir), "--convert", "--softmax-layers", "auto:1", "--prompt", "a"])
    assert rc == 2 and "resolved by `lizardlm linearize`" in capsys.readouterr().err
