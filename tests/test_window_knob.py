"""``set_window_size`` / ``--window-size``: a trained Lizard model run at another softmax window."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lizardlm import LizardConfig
from test_model import decode_token_by_token, lizard_model

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import tiny_llama, tiny_tokenizer  # noqa: E402


@pytest.mark.parametrize("mode, combine, long_adapter", [("lizard", "shared", 2), ("lizard", "sum", 0), ("lolcats", None, 0)])
def test_a_model_at_another_window_is_the_model_built_at_it(mode, combine, long_adapter, tmp_path):
    """After ``set_window_size(w)`` the logits are those of the same weights built with ``window_size=w``
    (the long adapter's start moving with it), differ from the trained window's, decode token by token like
    the full forward, and survive save/load."""
    config = LizardConfig(mode=mode, combine=combine, window_size=6, num_meta_tokens=2, feature_dim=8, chunk_size=8,
                          long_adapter=long_adapter)
    model = lizard_model("llama", config).double()
    ids = torch.randint(0, 97, (2, 31))
    with torch.no_grad():
        before = model(ids, use_cache=False).logits
        model.set_window_size(11)
        after = model(ids, use_cache=False).logits
    assert model.lizard_config.window_size == 11 and model.config.lizard["window_size"] == 11
    assert (after - before).abs().max() > 1e-3
    built = lizard_model("llama", LizardConfig(**{**config.to_dict(), "window_size": 11})).double()
    built.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(built(ids, use_cache=False).logits, after, rtol=0, atol=0)
    step, cache = decode_token_by_token(model, ids, prefill=7)
    torch.testing.assert_close(step, after, atol=1e-8, rtol=1e-8)
    assert cache.layers[0].state.keys.shape[2] == 11  # the cache keeps the new window's keys, no more
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.lizard_config.window_size == 11
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, use_cache=False).logits, after, rtol=0, atol=0)


def test_a_window_out_of_range_or_none_to_change_is_refused_changing_nothing():
    model = lizard_model("llama", LizardConfig(window_size=6, num_meta_tokens=2, feature_dim=8, chunk_size=8))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="window_size must be an integer >= 1"):
            model.set_window_size(bad)
    assert model.lizard_config.window_size == 6
    assert all(layer.self_attn.lizard.window_size == 6 for layer in model.model.layers)
    model.set_window_size(6)  # its own window: nothing to do
    no_window = lizard_model("llama", LizardConfig(mode="paper_no_window", feature_dim=8, chunk_size=8))
    with pytest.raises(ValueError, match="no window branch"):
        no_window.set_window_size(8)
    no_window.set_window_size(0)  # as it is


def test_cli_window_size_on_eval_and_generate(tmp_path, capsys):
    import lizardlm
    from lizardlm.cli import main

    tok = tiny_tokenizer()
    lizard_dir, model_dir = tmp_path / "lizard", tmp_path / "teacher"
    lizardlm.convert(tiny_llama(len(tok)), lizardlm.LizardConfig(window_size=16)).save_pretrained(lizard_dir)
    tiny_llama(len(tok)).save_pretrained(model_dir)
    for path in (lizard_dir, model_dir):
        tok.save_pretrained(path)
    argv = ["--tasks", "passkey", "--passkey-lengths", "128", "--passkey-trials", "1", "--no-progress", "--no-plots"]
    out = tmp_path / "a"
    assert main(["eval", "--model", str(lizard_dir), "--window-size", "48", "--out", str(out), *argv]) == 0
    assert json.loads((out / "eval.json").read_text())["models"]["model"]["window_size"] == 48
    assert json.loads((lizard_dir / "config.json").read_text())["lizard"]["window_size"] == 16  # the saved model untouched
    capsys.readouterr()
    assert main(["eval", "--model", str(lizard_dir), "--window-size", "32", "--out", str(out), "--resume", *argv]) == 2
    assert "--resume" in capsys.readouterr().err  # made at another window
    assert main(["eval", "--model", str(model_dir), "--window-size", "32", "--out", str(tmp_path / "b"), *argv]) == 2
    assert "is not a Lizard model (it has no window)" in capsys.readouterr().err.strip().splitlines()[-1]
    gen = ["generate", "--prompt", "Hello", "--max-new-tokens", "2", "--raw"]
    assert main([*gen, "--model", str(lizard_dir), "--window-size", "24"]) == 0
    assert main([*gen, "--model", str(lizard_dir), "--window-size", "0"]) == 2
    assert "window_size must be an integer >= 1" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main([*gen, "--model", str(model_dir), "--convert", "--window-size", "8"]) == 0  # the conversion's window
