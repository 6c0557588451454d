"""Paired differences between two models on the same benchmark questions: the arithmetic against
float64 references on fresh random scores, the per-question scores ``run_harness`` records, and
``lizardlm compare``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import DATA_DIR, first_choice_lm  # noqa: E402

from lizardlm.cli.app import main  # noqa: E402
from lizardlm.errors import LizardError  # noqa: E402
from lizardlm.eval.paired import (  # noqa: E402
    compare,
    item_scores,
    mcnemar_exact,
    mean_difference,
    paired_difference,
    task_difference,
)
from lizardlm.eval.report import markdown_table  # noqa: E402
from lizardlm.eval.tasks import MC_TASKS, REPORTED_METRIC, ZERO_SHOT  # noqa: E402


def _bits(x: np.ndarray) -> str:
    return "".join("1" if v else "0" for v in x)


@pytest.mark.parametrize("n", [2, 7, 1838])
def test_paired_difference_matches_float64_reference(n):
    rng = np.random.default_rng()
    a = rng.random(n) < rng.uniform(0.2, 0.8)
    b = np.where(rng.random(n) < 0.8, a, rng.random(n) < 0.5)  # correlated, as two models on one set are
    got = paired_difference(_bits(a), _bits(b))
    d = b.astype(np.float64) - a.astype(np.float64)
    assert got["diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert (got["a"], got["b"]) == (pytest.approx(a.mean(), abs=1e-12), pytest.approx(b.mean(), abs=1e-12))
    assert got["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(n), abs=1e-12)
    assert (got["a_only"], got["b_only"], got["n"]) == (int((a & ~b).sum()), int((~a & b).sum()), n)


def test_paired_difference_refuses_unequal_lengths():
    with pytest.raises(ValueError, match="different lengths"):
        paired_difference("0101", "011")


def test_mean_difference_adds_the_tasks_variances():
    rng = np.random.default_rng()
    rows = [{"a": rng.random(), "b": rng.random(), "diff": rng.normal(), "se": rng.random(), "paired": True}
            for _ in range(5)]
    got = mean_difference(rows)
    assert got["diff"] == pytest.approx(np.mean([r["diff"] for r in rows]))
    assert got["se"] == pytest.approx(math.sqrt(sum(r["se"] ** 2 for r in rows)) / 5)
    assert got["paired"] == 5


def test_item_scores_orders_by_document_and_refuses_non_binary():
    samples = [{"doc_id": 2, "doc_hash": "c", "acc": 1.0}, {"doc_id": 0, "doc_hash": "a", "acc": 0.0},
               {"doc_id": 1, "doc_hash": "b", "acc": 1.0}]
    items, digest = item_scores(samples, ["acc"])
    assert items == {"acc": "011"}
    _, other = item_scores([{**s, "doc_hash": s["doc_hash"] + "x"} for s in samples], ["acc"])
    assert other != digest  # other questions, another digest
    assert item_scores([{**samples[0], "acc": 0.5}], ["acc"]) is None


def _entry(metric: str, bits: str | None, digest: str = "d", stderr: float = 0.01) -> dict:
    e = {"status": "ok", "metrics": {metric: bits.count("1") / len(bits) if bits else 0.5, f"{metric}_stderr": stderr}}
    if bits is not None:
        e["items"], e["items_digest"] = {metric: bits}, digest
    return e


def test_unpaired_fallback_and_digest_mismatch():
    got = task_difference(_entry("acc", None, stderr=0.03), _entry("acc", "0110", stderr=0.04), "acc")
    assert got["paired"] is False and got["se"] == pytest.approx(0.05) and "the first" in got["why"]
    with pytest.raises(LizardError, match="different questions"):
        task_difference(_entry("acc", "0110", "x"), _entry("acc", "0111", "y"), "acc")


@pytest.fixture(scope="module")
def two_stub_results():
    """The first-choice stub and a second stub (the last choice) scored on the fixture sets."""
    from lm_eval.api.model import LM

    from lizardlm.eval import run_harness

    class LastChoiceLM(LM):
        def loglikelihood(self, requests, disable_tqdm=False):
            return [(float(r.idx), False) for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError

    return (run_harness(first_choice_lm(), None, MC_TASKS, data_dir=DATA_DIR),
            run_harness(LastChoiceLM(), None, MC_TASKS, data_dir=DATA_DIR))


def test_harness_records_items_that_average_to_the_metrics(two_stub_results):
    for res in two_stub_results:
        for task, e in res.items():
            for metric, bits in e["items"].items():
                assert len(bits) == e["n"]
                assert bits.count("1") / len(bits) == pytest.approx(e["metrics"][metric])
            assert set(e["items"]) == {m for m in e["metrics"] if not m.endswith("_stderr")}
    first, last = two_stub_results
    assert all(first[t]["items_digest"] == last[t]["items_digest"] for t in MC_TASKS)


def _as_eval(entries: dict, name: str = "model", reference: str | None = None) -> dict:
    return {"models": {name: {}}, "reference": reference or name,
            "tasks": {t: {name: e} for t, e in entries.items()}}


def test_compare_pairs_two_stub_results(two_stub_results):
    first, last = two_stub_results
    cmp = compare(_as_eval(first), "model", _as_eval(last), "model")
    assert set(cmp["tasks"]) == set(MC_TASKS)
    for t, r in cmp["tasks"].items():
        m = REPORTED_METRIC[t]
        a = np.array([c == "1" for c in first[t]["items"][m]], dtype=np.float64)
        b = np.array([c == "1" for c in last[t]["items"][m]], dtype=np.float64)
        assert r["paired"] and r["diff"] == pytest.approx((b - a).mean())
        assert r["se"] == pytest.approx((b - a).std(ddof=1) / math.sqrt(len(a)))
    assert cmp["mean_tasks"] == list(ZERO_SHOT)
    assert cmp["mean"]["diff"] == pytest.approx(np.mean([cmp["tasks"][t]["diff"] for t in ZERO_SHOT]))


def test_eval_report_lists_paired_differences(two_stub_results):
    first, last = two_stub_results
    results = {"models": {"teacher": {}, "student": {}}, "reference": "teacher",
               "tasks": {t: {"teacher": first[t], "student": last[t]} for t in MC_TASKS}}
    md = markdown_table(results)
    line = next(x for x in md.splitlines() if x.startswith("- `student` - `teacher`"))
    d = 100 * (last["piqa"]["metrics"]["acc"] - first["piqa"]["metrics"]["acc"])
    assert f"piqa {d:+.2f} ± " in line and "zero-shot mean" in line


def test_compare_cli(tmp_path, two_stub_results, capsys):
    first, last = two_stub_results
    a, b = tmp_path / "a", tmp_path / "b" / "eval"
    a.mkdir()
    b.mkdir(parents=True)
    (a / "eval.json").write_text(json.dumps(_as_eval(first, "student")))
    (b / "eval.json").write_text(json.dumps(_as_eval(last, "student")))
    out = tmp_path / "cmp.json"
    assert main(["compare", str(a / "eval.json"), str(b.parent), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| winogrande | acc |" in text and "B - A on the zero-shot mean" in text and "(paired se" in text
    saved = json.loads(out.read_text())
    assert saved["b"]["path"].endswith("eval.json") and set(saved["tasks"]) == set(MC_TASKS)
    # one result with a teacher and a student: the student against its teacher
    both = {"models": {"teacher": {}, "student": {}}, "reference": "teacher",
            "tasks": {t: {"teacher": first[t], "student": last[t]} for t in MC_TASKS}}
    (tmp_path / "both.json").write_text(json.dumps(both))
    assert main(["compare", str(tmp_path / "both.json"), "--tasks", "piqa,mmlu"]) == 0
    text = capsys.readouterr().out
    assert "A: teacher" in text and "B: student" in text and "| mmlu | acc |" in text and "arc_easy" not in text


def test_compare_cli_refusals(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lizardlm: error: no eval.json at") and "\n" not in err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["compare", str(tmp_path / "bad.json")]) == 2
    assert "not a readable eval.json" in capsys.readouterr().err
    three = {"models": {"teacher": {}, "x": {}, "y": {}}, "reference": "teacher", "tasks": {}}
    (tmp_path / "three.json").write_text(json.dumps(three))
    assert main(["compare", str(tmp_path / "three.json"), str(tmp_path / "three.json")]) == 2
    assert "--model-a" in capsys.readouterr().err
    (tmp_path / "one.json").write_text(json.dumps({"models": {"m": {}}, "reference": "m", "tasks": {}}))
    assert main(["compare", str(tmp_path / "one.json"), str(tmp_path / "one.json")]) == 2
    assert "share nothing to compare" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "one.json")]) == 2
    assert "give a second result B" in capsys.readouterr().err


def _passkey_entry(lengths: dict[int, list[tuple[str, float, bool]]]) -> dict:
    return {"status": "ok", "metrics": {}, "details": {"lengths": [
        {"length": n, "status": "ok", "trials": [{"key": k, "depth": d, "correct": c} for k, d, c in trials]}
        for n, trials in lengths.items()]}}


def test_passkey_pairs_trials_and_tests_them_with_mcnemar():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng()
    n = 100
    keys = [(str(rng.integers(10000, 99999)), round(i % 10 / 9, 4)) for i in range(n)]
    a, b = rng.random(n) < 0.85, rng.random(n) < 0.95
    other_keys = [(str(int(k) + 1), d) for k, d in keys]
    ea = _passkey_entry({2048: [(*k, x) for k, x in zip(keys, a)], 4096: [(*k, x) for k, x in zip(keys, a)]})
    eb = _passkey_entry({2048: [(*k, x) for k, x in zip(keys, b)], 4096: [(*k, x) for k, x in zip(other_keys, b)]})
    cmp = compare({"tasks": {"passkey": {"m": ea}}}, "m", {"tasks": {"passkey": {"m": eb}}}, "m")
    assert list(cmp["passkey"]) == ["2048"]  # 4096 drew other keys: not the same prompts, left out
    r = cmp["passkey"]["2048"]
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    assert (r["a_only"], r["b_only"], r["n"]) == (a_only, b_only, n) and r["diff"] == pytest.approx(b.mean() - a.mean())
    expected = stats.binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    assert r["p"] == pytest.approx(expected)
    assert mcnemar_exact(4, 14) == pytest.approx(stats.binomtest(4, 18, 0.5).pvalue)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    # nothing paired: a note, or an error where the passkey was asked for
    none = _passkey_entry({2048: [(*k, x) for k, x in zip(other_keys, b)]})
    with pytest.raises(LizardError, match="same prompts"):
        compare({"tasks": {"passkey": {"m": ea}}}, "m", {"tasks": {"passkey": {"m": none}}}, "m", ["passkey"])
    with pytest.raises(LizardError, match="share nothing"):
        compare({"tasks": {"passkey": {"m": ea}}}, "m", {"tasks": {"passkey": {"m": none}}}, "m")
