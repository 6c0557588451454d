"""``lizardlm tune`` and :func:`lizardlm.eval.knobs.tune_knobs`: every setting of the grid scored as
:func:`~lizardlm.eval.passkey.passkey_eval` scores it alone, the choice the best of them, the model's own
knobs left as they were, one-line refusals."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import tiny_llama, tiny_tokenizer  # noqa: E402

import lizardlm  # noqa: E402
from lizardlm.eval.knobs import close_to, mean_acc_se, tune_knobs  # noqa: E402
from lizardlm.eval.passkey import passkey_eval  # noqa: E402


def gated_model(write_gate: str = "head"):
    """A converted tiny Llama whose write gates and query feature maps are random (at conversion the gates
    write 1 whatever the contrast), with knobs of its own that the search must leave as they were."""
    tok = tiny_tokenizer()
    model = lizardlm.convert(tiny_llama(len(tok), seed=1), lizardlm.LizardConfig(window_size=16, write_gate=write_gate))
    torch.manual_seed(2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.feature_map_q.weight.normal_(0, 2)
            if layer.self_attn.write_gate is not None:
                layer.self_attn.write_gate.proj.weight.normal_(0, 0.5)
                layer.self_attn.write_gate.proj.bias.normal_()
    model.set_decay_scale(0.8)
    model.set_read_sharpness(1.25)
    if write_gate != "none":
        model.set_write_contrast(1.5)
    return model.eval(), tok


def test_each_setting_scores_what_passkey_eval_gives_it_alone_and_the_best_wins():
    model, tok = gated_model()
    settings = dict(trials=3, seed=5, depths=3, batch_size=2, progress=False)
    search = tune_knobs(model, tok, (160, 224), decay_scales=(1.0, 0.25), write_contrasts=(1.0, 3.0),
                        read_sharpnesses=(1.0, 2.0), **settings)
    cfg = model.lizard_config
    assert (cfg.decay_scale, cfg.write_contrast, cfg.read_sharpness) == (0.8, 1.5, 1.25)  # restored
    assert search["trained"] == {"decay_scale": 0.8, "write_contrast": 1.5, "read_sharpness": 1.25}
    assert [(r["decay_scale"], r["write_contrast"], r["read_sharpness"]) for r in search["grid"]] == [
        (1, 1, 1), (1, 1, 2), (1, 3, 1), (1, 3, 2), (0.25, 1, 1), (0.25, 1, 2), (0.25, 3, 1), (0.25, 3, 2)]
    nlls = set()
    for row in search["grid"]:
        model.set_decay_scale(row["decay_scale"])
        model.set_write_contrast(row["write_contrast"])
        model.set_read_sharpness(row["read_sharpness"])
        alone = {str(rec["length"]): rec for rec in passkey_eval(model, tok, lengths=(160, 224), **settings)["lengths"]}
        assert row["acc"] == {L: rec["acc"] for L, rec in alone.items()}
        assert row["answer_nll"] == {L: rec["answer_nll"] for L, rec in alone.items()}
        assert row["mean_nll"] == pytest.approx(sum(rec["answer_nll"] for rec in alone.values()) / 2)
        nlls.add(row["mean_nll"])
    assert len(nlls) == 8  # every knob changes what the model says
    best = max(search["grid"], key=lambda r: (r["mean_acc"], -r["mean_nll"]))
    assert search["best"] == {k: best[k] for k in ("decay_scale", "write_contrast", "read_sharpness", "mean_acc", "mean_nll",
                                                   "mean_acc_se")} | {"close": close_to(best, search["grid"])}
    assert all(row["n"] == {"160": 3, "224": 3} for row in search["grid"])
    assert search["passkey"] == {"trials": 3, "seed": 5, "depths": 3, "batch_size": 2}


def test_the_standard_error_keeps_the_uncertainty_of_a_perfect_score_on_few_trials():
    """Agresti-Coull per length, averaged over lengths: 20 of 20 is 22 / 24, not certainty; its error
    shrinks with the trials; a length that did not run (n 0) is a coin's."""
    assert mean_acc_se({"1024": 1.0}, {"1024": 20}) == pytest.approx(((22 / 24) * (2 / 24) / 24) ** 0.5)
    assert mean_acc_se({"1024": 1.0}, {"1024": 100}) < mean_acc_se({"1024": 1.0}, {"1024": 20})
    two = mean_acc_se({"a": 0.5, "b": 0.0}, {"a": 10, "b": 0})
    assert two == pytest.approx(((7 / 14) * (7 / 14) / 14 + 0.5 * 0.5 / 4) ** 0.5 / 2)


def test_the_settings_within_noise_of_the_best_are_named():
    """A setting is close when the best's lead is under two standard errors of the difference."""
    grid = [{"decay_scale": s, "write_contrast": 1.0, "read_sharpness": 1.0, "mean_acc": m, "mean_acc_se": se}
            for s, m, se in ((1.0, 0.95, 0.03), (0.5, 0.90, 0.03), (0.25, 0.80, 0.03), (0.125, 0.86, 0.04))]
    # leads 0.05 < 2 * 0.0424 (close), 0.15 > 0.085 (not), 0.09 < 2 * 0.05 (close)
    assert close_to(grid[0], grid) == [{"decay_scale": s, "write_contrast": 1.0, "read_sharpness": 1.0} for s in (0.5, 0.125)]
    assert close_to(grid[2], grid[2:3]) == []


def test_a_length_that_did_not_run_scores_nothing():
    """A length skipped by the time budget counts as 0 with no NLL, so no setting's mean has one; the
    choice then falls to the setting nearest the model as trained among equal accuracies."""
    model, tok = gated_model()
    search = tune_knobs(model, tok, (160, 320), decay_scales=(0.25, 1.0), write_contrasts=(1.0,), read_sharpnesses=(2.0, 1.0),
                        trials=2, seed=0, batch_size=1, progress=False, time_budget_s=1e-9)
    for row in search["grid"]:
        assert row["answer_nll"]["320"] is None and row["acc"]["320"] == 0 and row["mean_nll"] is None
    if len({row["mean_acc"] for row in search["grid"]}) == 1:
        assert [search["best"][k] for k in ("decay_scale", "write_contrast", "read_sharpness")] == [1.0, 1.0, 1.0]


def test_refusals_change_nothing():
    model, tok = gated_model("none")
    with pytest.raises(ValueError, match="no write gate, so its write contrast stays 1"):
        tune_knobs(model, tok, (160,), write_contrasts=(1.0, 2.0), trials=1, progress=False)
    search = tune_knobs(model, tok, (160,), decay_scales=(1.0,), trials=1, progress=False)  # default contrasts: 1 alone
    assert [(r["write_contrast"], r["read_sharpness"]) for r in search["grid"]] == [(1.0, 1.0), (1.0, 2.0)]
    for bad in ({"decay_scales": ()}, {"decay_scales": (0.0,)}, {"read_sharpnesses": ()}, {"read_sharpnesses": (-1.0,)}):
        with pytest.raises(ValueError):
            tune_knobs(model, tok, (160,), trials=1, progress=False, **bad)
    assert (model.lizard_config.decay_scale, model.lizard_config.read_sharpness) == (0.8, 1.25)
    lolcats = lizardlm.convert(tiny_llama(len(tok), seed=1), lizardlm.LizardConfig(mode="lolcats", window_size=16))
    with pytest.raises(ValueError, match="no decay gate, so its decay scale changes nothing"):
        tune_knobs(lolcats, tok, (160,), decay_scales=(0.5,), trials=1, progress=False)
    search = tune_knobs(lolcats, tok, (160,), trials=1, progress=False)  # neither gate: the read sharpness alone
    assert [tuple(r[k] for k in ("decay_scale", "write_contrast", "read_sharpness")) for r in search["grid"]] == [
        (1.0, 1.0, 1.0), (1.0, 1.0, 2.0)]
    ungated = lizardlm.convert(tiny_llama(len(tok), seed=1), lizardlm.LizardConfig(gate="none", write_gate="head",
                                                                                   window_size=16))
    with pytest.raises(ValueError, match="no decay gate, so its decay scale changes nothing"):
        tune_knobs(ungated, tok, (160,), decay_scales=(1.0, 0.5), trials=1, progress=False)
    search = tune_knobs(ungated, tok, (160,), write_contrasts=(1.0,), trials=1, progress=False)  # default scales: 1
    assert [r["decay_scale"] for r in search["grid"]] == [1.0, 1.0]  # at read sharpness 1 and 2


def saved_gated_model(tmp_path: Path):
    """:func:`gated_model` saved with its tokenizer under ``tmp_path / "model"``: ``(model, tok, model_dir,
    its config.json text)``, the text to show that tune left the saved model as it was."""
    model, tok = gated_model()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model, tok, model_dir, (model_dir / "config.json").read_text()


def test_cli_writes_the_grid_and_the_choice_and_leaves_the_model_alone(tmp_path, capsys):
    from lizardlm.cli import main

    model, tok, model_dir, saved = saved_gated_model(tmp_path)
    out = tmp_path / "out"
    assert main(["tune", "--model", str(model_dir), "--lengths", "160,192", "--decay-scales", "1,0.5", "--write-contrasts",
                 "1,2", "--read-sharpnesses", "1,3", "--trials", "2", "--depths", "2", "--out", str(out), "--no-progress"]) == 0
    search = json.loads((out / "knobs.json").read_text())
    assert len(search["grid"]) == 8 and search["lengths"] == [160, 192] and search["passkey"]["seed"] == 1
    assert {r["read_sharpness"] for r in search["grid"]} == {1, 3}
    assert (out / "knobs.png").stat().st_size > 0
    best = search["best"]
    printed = capsys.readouterr().out
    assert (f"chosen: --decay-scale {best['decay_scale']:g} --write-contrast {best['write_contrast']:g} "
            f"--read-sharpness {best['read_sharpness']:g}") in printed
    assert ("| decay scale | write contrast | read sharpness | passkey @ 160 | passkey @ 192 | mean ± se | answer NLL |"
            in printed)
    assert f"{best['mean_acc']:.2f} ± {best['mean_acc_se']:.2f} at 160,192 tokens" in printed
    close = len(best["close"])  # two trials a length leave every setting within noise of the best
    assert close == 7 and f"{close} of the other 7 settings score within two standard errors of it" in printed
    assert search["refined"] is None and "refined:" not in printed
    assert main(["tune", "--model", str(model_dir), "--lengths", "160", "--decay-scales", "1,0.5", "--write-contrasts", "1",
                 "--read-sharpnesses", "1", "--trials", "1", "--refine", "2", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    refined = json.loads((tmp_path / "r" / "knobs.json").read_text())["refined"]
    assert (refined["trials"], refined["seed"], len(refined["settings"])) == (2, 2, 2)
    assert "refined: 2 settings (the first choice and those within noise of it) scored 2 more prompts a length (seed 2)" in capsys.readouterr().out
    assert (model_dir / "config.json").read_text() == saved


def test_cli_saves_a_copy_at_the_chosen_knobs_that_loads_and_runs_at_them(tmp_path, capsys):
    """``--save DIR``: a saved model whose config holds the choice and whose outputs are the tuned model's
    at those knobs; the model read stays as it was, and an occupied directory is refused before any work."""
    from lizardlm.cli import main
    from lizardlm.loading import load_with_tokenizer

    model, tok, model_dir, saved = saved_gated_model(tmp_path)
    tuned_dir = tmp_path / "tuned"
    assert main(["tune", "--model", str(model_dir), "--lengths", "160", "--decay-scales", "0.5,0.25", "--write-contrasts",
                 "2,3", "--read-sharpnesses", "2", "--trials", "2", "--depths", "2", "--out", str(tmp_path / "out"),
                 "--save", str(tuned_dir),
                 "--no-progress"]) == 0
    best = json.loads((tmp_path / "out" / "knobs.json").read_text())["best"]
    assert (model_dir / "config.json").read_text() == saved
    tuned, tuned_tok = load_with_tokenizer(tuned_dir)
    assert tuned_tok is not None
    knobs = ("decay_scale", "write_contrast", "read_sharpness")
    assert [getattr(tuned.lizard_config, k) for k in knobs] == [best[k] for k in knobs] and best["read_sharpness"] == 2
    model.set_decay_scale(best["decay_scale"])
    model.set_write_contrast(best["write_contrast"])
    model.set_read_sharpness(best["read_sharpness"])
    ids = torch.randint(0, len(tok), (1, 200), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(tuned(ids).logits, model(ids).logits)
    capsys.readouterr()
    rc = main(["tune", "--model", str(model_dir), "--lengths", "160", "--trials", "1", "--save", str(tuned_dir), "--no-progress"])
    assert rc == 2 and "exists and is not an empty directory" in capsys.readouterr().err
    rc = main(["tune", "--model", str(model_dir), "--lengths", "160", "--trials", "1", "--out", str(tmp_path / "o2"),
               "--save", str(tmp_path / "o2"), "--no-progress"])
    assert rc == 2 and "a directory of its own, not --out's" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["not-lizard", "no-dir", "contrast-without-gate", "bad-scale", "bad-sharpness",
                                  "lolcats-scale"])
def test_cli_refuses_in_one_line(case, tmp_path, capsys):
    from lizardlm.cli import main

    tok = tiny_tokenizer()
    model_dir = tmp_path / "m"
    if case == "not-lizard":
        tiny_llama(len(tok)).save_pretrained(model_dir)
    elif case != "no-dir":
        mode = "lolcats" if case == "lolcats-scale" else "lizard"
        lizardlm.convert(tiny_llama(len(tok)), lizardlm.LizardConfig(mode=mode, window_size=16)).save_pretrained(model_dir)
    if model_dir.is_dir():
        tok.save_pretrained(model_dir)
    extra = {"contrast-without-gate": ["--write-contrasts", "2"], "bad-scale": ["--decay-scales", "1,-1"],
             "bad-sharpness": ["--read-sharpnesses", "0"], "lolcats-scale": ["--decay-scales", "0.5"]}.get(case, [])
    with pytest.raises(SystemExit) if case.startswith("bad-") else contextlib.nullcontext():
        rc = main(["tune", "--model", str(model_dir), "--lengths", "160", "--trials", "1", "--no-progress", *extra])
        assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    says = {"not-lizard": "is not a Lizard model: it has no inference knobs", "no-dir": "no such directory",
            "contrast-without-gate": "no write gate, so its write contrast stays 1",
            "bad-scale": "expected a number > 0", "bad-sharpness": "expected a number > 0",
            "lolcats-scale": "no decay gate, so its decay scale changes nothing"}[case]
    assert says in err


def test_sizes_read_k_as_1024():
    from lizardlm.cli.common import sizes

    assert sizes("16k,32768, 4K") == (16384, 32768, 4096)


def test_refine_scores_the_settings_within_noise_again_and_chooses_on_both_rounds(monkeypatch):
    """``refine``: the best and the settings close to it, and only those, score more prompts of ``seed + 1``;
    each length's scores are pooled by trial counts and the choice is made again on the pooled means. The
    passkey scores here are set by the knobs and the seed (a stand-in for ``passkey_eval``)."""
    import lizardlm.eval.knobs as knobs_mod

    model, tok = gated_model()
    first = {(1.0, 1.0): 0.9, (1.0, 3.0): 0.85, (0.25, 1.0): 0.5, (0.25, 3.0): 0.1}  # 20 prompts of seed 1
    again = {(1.0, 1.0): 0.7, (1.0, 3.0): 0.95}  # 80 of seed 2: the runner-up was the better setting
    calls = []

    def fake_eval(model, tokenizer, lengths, trials, seed, **_):
        key = (model.lizard_config.decay_scale, model.lizard_config.write_contrast)
        calls.append((key, trials, seed))
        acc = (first if seed == 1 else again)[key]
        return {"lengths": [{"length": L, "n": trials, "acc": acc, "first_digit_acc": acc, "answer_nll": 1 - acc}
                            for L in lengths]}

    monkeypatch.setattr(knobs_mod, "passkey_eval", fake_eval)
    search = tune_knobs(model, tok, (160,), decay_scales=(1.0, 0.25), write_contrasts=(1.0, 3.0), read_sharpnesses=(1.0,),
                        refine=80, trials=20, seed=1)
    assert calls[4:] == [((1.0, 1.0), 80, 2), ((1.0, 3.0), 80, 2)]  # 0.5 and 0.1 are outside the noise of 0.9
    assert search["refined"] == {"trials": 80, "seed": 2, "settings": [
        {"decay_scale": 1.0, "write_contrast": 1.0, "read_sharpness": 1.0},
        {"decay_scale": 1.0, "write_contrast": 3.0, "read_sharpness": 1.0}]}
    rows = {(r["decay_scale"], r["write_contrast"]): r for r in search["grid"]}
    assert rows[(1.0, 1.0)]["acc"]["160"] == pytest.approx((0.9 * 20 + 0.7 * 80) / 100)
    assert rows[(1.0, 3.0)]["answer_nll"]["160"] == pytest.approx((0.15 * 20 + 0.05 * 80) / 100)
    assert rows[(1.0, 3.0)]["n"] == {"160": 100} and rows[(0.25, 1.0)]["n"] == {"160": 20}
    assert rows[(0.25, 1.0)]["acc"] == {"160": 0.5}  # untouched
    assert rows[(1.0, 3.0)]["mean_acc_se"] == pytest.approx(mean_acc_se({"160": 0.93}, {"160": 100}))
    assert (search["best"]["decay_scale"], search["best"]["write_contrast"]) == (1.0, 3.0)
    assert search["best"]["mean_acc"] == pytest.approx(0.93)
    calls.clear()  # nothing within noise: no second round
    first.update({(1.0, 3.0): 0.2})
    search = tune_knobs(model, tok, (160,), decay_scales=(1.0, 0.25), write_contrasts=(1.0, 3.0), read_sharpnesses=(1.0,),
                        refine=80, trials=20, seed=1)
    assert len(calls) == 4 and search["refined"] is None and search["best"]["close"] == []
