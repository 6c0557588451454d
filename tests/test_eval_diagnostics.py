"""lizardlm.eval.diagnostics on a tiny random Llama converted in both forms: the measured pieces put the
op's output back together, shares and weights lie in range, and the gate statistics match a hand computation."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import tiny_llama, tiny_tokenizer  # noqa: E402

import lizardlm  # noqa: E402
from lizardlm.eval.diagnostics import (  # noqa: E402
    answer_steps,
    copy_weights,
    decay_stats,
    diagnostics_eval,
    linear_branch,
    needle_weights,
    summary_metrics,
    write_mass,
)
from lizardlm.eval.report import evaluate  # noqa: E402
from lizardlm.ops.lizard import SUM_EPS, lizard_attention_naive  # noqa: E402
from lizardlm.ops.window import window_attention_naive  # noqa: E402

FORMS = {"shared": {"mode": "lizard", "window_size": 16}, "sum": {"mode": "paper", "window_size": 16, "feature_dim": 16}}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _student(tok, form: str, perturb: bool = False):
    model = lizardlm.convert(tiny_llama(len(tok)), lizardlm.LizardConfig(**FORMS[form])).eval()
    if perturb:  # move every Lizard parameter off its initial value (data-dependent gates, alpha, beta, meta)
        torch.manual_seed(1)
        with torch.no_grad():
            for p in model.lizard_parameters():
                p.add_(0.3 * torch.randn_like(p))
    return model


def _captured(model, ids) -> dict:
    layer = next(m for m in model.modules() if hasattr(m, "capture"))
    seen = {}
    layer.capture = lambda _, inputs: seen.update(inputs)
    with torch.no_grad():
        model(ids, use_cache=False)
    layer.capture = None
    return seen


@pytest.mark.parametrize("form", FORMS)
def test_pieces_rebuild_the_op_output(tok, form):
    model = _student(tok, form, perturb=True)
    x = _captured(model, torch.randint(0, len(tok), (2, 70), generator=torch.Generator().manual_seed(0)))
    y = lizard_attention_naive(**x).double()
    shift = x["window"] if form == "shared" else 0
    N, Z = linear_branch(x["fq"], x["fk"], x["v"], x["g"], shift, chunk_size=8)
    o, _ = window_attention_naive(x["q"], x["k"], x["v"], x["window"], x["scale"], x["meta_k"], x["meta_v"], x["meta_bias"])
    o, N, Z = o.double(), N.double(), Z.double()
    if form == "shared":
        rebuilt = (o + N) / (1 + Z[..., None])
        assert torch.all(Z[..., :shift] == 0) and torch.all(Z[..., shift:] > 0)
    else:
        rebuilt = N / (Z[..., None] + SUM_EPS) + x["alpha"].double().view(1, -1, 1, 1) * o
    assert torch.allclose(rebuilt, y, atol=1e-5)


def test_needle_weight_matches_the_explicit_sum():
    g = torch.Generator().manual_seed(0)
    fq, fk = torch.rand(1, 2, 40, 6, generator=g), torch.rand(1, 1, 40, 6, generator=g)
    lg = -0.1 * torch.rand(1, 2, 40, generator=g)
    t, shift, span = 39, 8, (5, 9)
    w = needle_weights(fq, fk, lg, t, shift, [span])
    G = lg.double().cumsum(-1)
    a = [[math.exp(G[0, h, t] - G[0, h, j]) * float(fq[0, h, t].double() @ fk[0, 0, j].double()) for j in range(t - shift + 1)]
         for h in range(2)]
    expected = torch.tensor([[sum(r[span[0]:span[1]]) / sum(r) for r in a]], dtype=torch.float64)
    assert torch.allclose(w["weight"], expected)
    assert torch.allclose(w["weight_no_decay"], needle_weights(fq, fk, None, t, shift, [span])["weight"])


def test_copy_weights_match_the_explicit_sums():
    g = torch.Generator().manual_seed(3)
    fq, fk = torch.rand(1, 2, 40, 6, generator=g), torch.rand(1, 1, 40, 6, generator=g)
    lg = -0.1 * torch.rand(1, 2, 40, generator=g)
    shift, span, steps = 8, (5, 12), [(30, [6, 10]), (36, [7])]
    got = copy_weights(fq, fk, lg, shift, steps, span)
    G = lg.double().cumsum(-1)
    for s, (t, targets) in enumerate(steps):
        for h in range(2):
            a = [math.exp(G[0, h, t] - G[0, h, j]) * float(fq[0, h, t].double() @ fk[0, 0, j].double())
                 for j in range(t - shift + 1)]
            assert got["copy"][s, h].item() == pytest.approx(sum(a[j] for j in targets) / sum(a), rel=1e-12)
            assert got["needle"][s, h].item() == pytest.approx(sum(a[span[0]:span[1]]) / sum(a), rel=1e-12)


def test_answer_steps_point_each_digit_at_its_copies_in_the_needle():
    digit = {7, 8, 9}.__contains__  # token ids 7, 8, 9 are digits here
    needle = [1, 2, 7, 8, 9, 3, 4, 7, 8, 9, 5]  # the key (7 8 9) twice, as in the evaluation template
    answer = [7, 8, 9, 3]  # the key and its full stop
    steps = answer_steps(100, answer, needle, 40, digit)
    assert steps == [(99, [42, 47]), (100, [43, 48]), (101, [44, 49])]
    assert answer_steps(100, [7, 9, 3], needle, 40, digit) == []  # not in the needle: nothing to point at
    assert answer_steps(100, [3], needle, 40, digit) == []


def test_copy_weight_in_range_and_in_the_summary(tok):
    r = diagnostics_eval(_student(tok, "shared", perturb=True), tok, lengths=(160,), trials=2, depths=2, progress_bar=False)
    n = r["lengths"][0]["needle"]
    assert all(0 < c <= b <= 1 for c, b in zip(n["copy_weight"], n["best_head_copy_weight"]))
    assert all(0 < c < 1 and 0 < u < 1 for c, u in zip(n["copy_in_needle"], n["copy_uniform_in_needle"]))
    assert any("next digit" in k for k in summary_metrics(r))


def test_write_mass_matches_the_explicit_means():
    g = torch.Generator().manual_seed(0)
    fk = torch.rand(2, 3, 40, 6, generator=g)
    t, shift, spans = 39, 8, [(5, 9), (0, 2)]
    got = write_mass(fk, t, shift, spans)
    for b, (start, end) in enumerate(spans):
        mass = [float(fk[b, :, j].double().sum()) / 3 for j in range(t - shift + 1)]
        needle = sum(mass[start:end]) / (end - start)
        rest = (sum(mass) - sum(mass[start:end])) / (len(mass) - (end - start))
        assert got[b].item() == pytest.approx(needle / rest, rel=1e-12)


def test_write_mass_is_one_without_and_selective_with_a_write_gate(tok):
    """Hedgehog keys all carry L1 mass 2, so the needle writes as much as the filler; a write gate that
    scales tokens differently moves the ratio off 1."""
    plain = diagnostics_eval(_student(tok, "shared"), tok, lengths=(160,), trials=2, depths=2, progress_bar=False)
    assert plain["lengths"][0]["needle"]["write_mass"] == pytest.approx([1.0, 1.0], rel=1e-5)
    model = lizardlm.convert(tiny_llama(len(tok)), lizardlm.LizardConfig(**FORMS["shared"], write_gate="head")).eval()
    torch.manual_seed(2)
    with torch.no_grad():
        for layer in (m for m in model.modules() if hasattr(m, "write_gate")):
            for p in layer.write_gate.parameters():
                p.add_(torch.randn_like(p))
    gated = diagnostics_eval(model, tok, lengths=(160,), trials=2, depths=2, progress_bar=False)
    masses = gated["lengths"][0]["needle"]["write_mass"]
    assert all(m > 0 and abs(m - 1) > 1e-3 for m in masses)


def test_decay_formulas_by_hand(tok):
    a = 0.995  # the default gate: W = 0, so every token decays by exactly a
    stats = decay_stats(math.log(a), steps=(1024, 32768))
    assert stats["half_life"] == pytest.approx(138.28, abs=0.01)  # a ** 138.28 = 1/2
    assert stats["retained"]["1024"] == pytest.approx(a**1024) and stats["retained"]["32768"] == pytest.approx(a**32768)
    assert decay_stats(0.0)["half_life"] is None
    r = diagnostics_eval(_student(tok, "shared"), tok, lengths=(160,), trials=2, depths=2, progress_bar=False)
    gate = r["gate"]
    assert gate["mean_log_gate"] == pytest.approx([math.log(a)] * 2, rel=1e-5)
    assert gate["half_life"] == pytest.approx([138.28] * 2, abs=0.01)
    assert gate["longest_head_half_life"] == pytest.approx(gate["half_life"], rel=1e-5)
    assert gate["retained"]["1024"] == pytest.approx([a**1024] * 2, rel=1e-4)


@pytest.mark.parametrize("form", FORMS)
def test_values_in_range(tok, form):
    r = diagnostics_eval(_student(tok, form, perturb=True), tok, lengths=(160, 10), trials=3, depths=3, batch_size=2,
                         progress_bar=False)
    assert r["status"] == "ok" and r["form"] == form and r["layers"] == [0, 1]
    rec, short = r["lengths"]
    assert short["status"].startswith("skipped") and rec["n"] == 3
    assert rec["bucket_start"] == [0, 16, 32, 64, 128] and rec["bucket_end"] == [16, 32, 64, 128, 160]
    share = torch.tensor(rec["linear_share"])
    assert share.shape == (2, 5) and torch.all((share >= 0) & (share <= 1))
    if form == "shared":  # nothing has left the window in the first bucket
        assert torch.all(share[:, 0] == 0) and torch.all(share[:, 1:] > 0)
    needle = rec["needle"]
    assert 1 <= needle["trials"] <= 3  # the needle at depth 1 sits inside the window (shared form)
    for key in ("weight", "weight_no_decay", "best_head_weight", "uniform"):
        assert all(0 < v < 1 for v in needle[key])
    assert all(m > 0 for m in needle["write_mass"])
    assert all(b >= w for b, w in zip(needle["best_head_weight"], needle["weight"]))
    assert all(0 < h for h in r["gate"]["half_life"])


def test_eval_task_json_and_plot(tok, tmp_path):
    models = {"teacher": (tiny_llama(len(tok)), tok), "student": (_student(tok, "sum"), tok)}
    results = evaluate(models, ["diagnostics"], out_dir=tmp_path, diagnostics_lengths=(128,), diagnostics_trials=2,
                       batch_size="auto", progress=False)  # the CLI's default batch size
    per = results["tasks"]["diagnostics"]
    assert per["teacher"]["status"] == "skipped (not a Lizard model)"
    metrics = per["student"]["metrics"]
    assert 0 <= metrics["linear share @ 128 (last bucket)"] <= 1 and metrics["gate half-life (tokens)"] > 0
    assert metrics["needle write mass / filler @ 128"] > 0
    assert (tmp_path / "diagnostics_student.png").stat().st_size > 0
    assert "diagnostics" in (tmp_path / "eval.md").read_text()
