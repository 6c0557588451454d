"""Local lm-eval task definitions: scoring through lm-eval with stub LMs, absent and malformed data."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import DATA_DIR, expected_first_choice_acc, first_choice_lm, tiny_llama, tiny_tokenizer  # noqa: E402

from lizardlm.eval import run_harness  # noqa: E402
from lizardlm.eval.tasks import MC_TASKS, find_task_files, load_local_task_data  # noqa: E402

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def first_choice_results():
    return run_harness(first_choice_lm(), None, MC_TASKS, data_dir=DATA_DIR)


@pytest.mark.parametrize("task", MC_TASKS)
def test_first_choice_stub_gets_expected_accuracy(first_choice_results, task):
    expected = expected_first_choice_acc()[task]
    entry = first_choice_results[task]
    assert entry["status"] == "ok", entry
    assert entry["metrics"]["acc"] == pytest.approx(expected)
    if task in ("piqa", "arc_easy", "arc_challenge", "hellaswag"):
        # acc_norm divides by the choice length: the first choice's 0.0 still wins
        assert entry["metrics"]["acc_norm"] == pytest.approx(expected)
    else:
        assert "acc_norm" not in entry["metrics"]  # lm-eval reports only acc for these
    n_docs = sum(1 for _ in (DATA_DIR / task / ("validation.jsonl" if task in ("piqa", "hellaswag", "winogrande") else "test.jsonl")).open())
    assert entry["n"] == n_docs
    assert entry["path"].startswith(str(DATA_DIR))


def test_mmlu_is_five_shot_per_subject(first_choice_results):
    e = first_choice_results["mmlu"]
    assert e["num_fewshot"] == 5
    assert e["subjects"]["anatomy"]["acc"] == pytest.approx(2 / 6)
    assert e["subjects"]["astronomy"]["acc"] == pytest.approx(1 / 4)


def test_prompts_follow_lm_eval_formats():
    from lm_eval.api.model import LM

    seen: dict[str, list] = {}

    class Recorder(LM):
        def loglikelihood(self, requests, disable_tqdm=False):
            for r in requests:
                seen.setdefault(r.task_name, []).append(r.args)
            return [(-float(r.idx), False) for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError

    run_harness(Recorder(), None, ["piqa", "arc_easy", "hellaswag", "winogrande", "mmlu"], data_dir=DATA_DIR, limit=1)
    assert seen["piqa"][0] == ("Question: How do I do thing number 0?\nAnswer:", " Do it the first way 0.")
    assert seen["arc_easy"][1] == ("Question: Which statement number 0 is right?\nAnswer:", " option B of 0")
    # hellaswag preprocessing: " [title]" -> ". ", other brackets removed, ctx_b capitalized
    assert seen["hellaswag"][0] == ("Making tea: A person boils water. step 0. Then they", " pour it into a cup 0.")
    # winogrande: partial evaluation, the options fill the blank in the context
    assert seen["winogrande"][1] == ("The cup did not fit in the box 0 because the box", " was too big.")
    ctx, cont = seen["mmlu_anatomy"][0]
    assert ctx.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert ctx.count("Answer:") == 6 and ctx.endswith("\nD. anatomy answer z\nAnswer:") and cont == " A"


def test_absent_sets_are_reported_absent_with_the_path(tmp_path):
    res = run_harness(first_choice_lm(), None, MC_TASKS, data_dir=tmp_path)
    for task in MC_TASKS:
        e = res[task]
        assert e["status"] == "absent"
        assert "metrics" not in e
        assert e["path"].startswith(str(tmp_path / task))
        assert "absent" in e["reason"] and str(tmp_path) in e["reason"]


def test_partly_present_data(tmp_path):
    shutil.copytree(DATA_DIR / "piqa", tmp_path / "piqa")
    (tmp_path / "mmlu").mkdir()
    shutil.copy(DATA_DIR / "mmlu" / "test.jsonl", tmp_path / "mmlu" / "test.jsonl")  # no dev split
    res = run_harness(first_choice_lm(), None, ["piqa", "hellaswag", "mmlu"], data_dir=tmp_path)
    assert res["piqa"]["status"] == "ok" and res["piqa"]["metrics"]["acc"] == pytest.approx(0.4)
    assert res["hellaswag"]["status"] == "absent"
    assert res["mmlu"]["status"] == "absent" and res["mmlu"]["path"].endswith("dev.jsonl")


def test_task_path_override_and_aliases(tmp_path):
    f = tmp_path / "my_piqa.jsonl"
    shutil.copy(DATA_DIR / "piqa" / "validation.jsonl", f)
    (tmp_path / "ai2_arc" / "ARC-Easy").mkdir(parents=True)
    shutil.copy(DATA_DIR / "arc_easy" / "test.jsonl", tmp_path / "ai2_arc" / "ARC-Easy" / "test.jsonl")
    res = run_harness(first_choice_lm(), None, ["piqa", "arc_easy"], data_dir=tmp_path / "nothing",
                      data_paths={"piqa": str(f), "arc_easy": str(tmp_path / "ai2_arc" / "ARC-Easy")})
    assert res["piqa"]["metrics"]["acc"] == pytest.approx(0.4)
    assert res["arc_easy"]["metrics"]["acc"] == pytest.approx(0.375)
    assert find_task_files("arc_easy", tmp_path)["test"][0].parent.name == "ARC-Easy"


def test_mmlu_csv_release_layout(tmp_path):
    for split, rows in (("test", [("q1", "a", "b", "c", "d", "A"), ("q2", "a", "b", "c", "d", "C")]),
                        ("dev", [(f"d{i}", "a", "b", "c", "d", "B") for i in range(5)])):
        d = tmp_path / "mmlu" / split
        d.mkdir(parents=True)
        (d / f"college_physics_{split}.csv").write_text("".join(",".join(r) + "\n" for r in rows))
    data = load_local_task_data("mmlu", tmp_path)
    assert data["test"][1] == {"question": "q2", "choices": ["a", "b", "c", "d"], "answer": 2, "subject": "college_physics"}
    res = run_harness(first_choice_lm(), None, ["mmlu"], data_dir=tmp_path)
    assert res["mmlu"]["metrics"]["acc"] == pytest.approx(0.5)
    assert list(res["mmlu"]["subjects"]) == ["college_physics"]


def test_malformed_data_is_an_error_not_a_score(tmp_path):
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "validation.jsonl").write_text(json.dumps({"goal": "g", "sol1": "a", "label": 0}) + "\n")
    (tmp_path / "winogrande").mkdir()
    (tmp_path / "winogrande" / "validation.jsonl").write_text("{not json\n")
    res = run_harness(first_choice_lm(), None, ["piqa", "winogrande"], data_dir=tmp_path)
    assert res["piqa"]["status"] == "error" and "sol2" in res["piqa"]["reason"]
    assert res["winogrande"]["status"] == "error" and "line 1" in res["winogrande"]["reason"]


def test_hf_model_through_hflm_offline(hf_offline):
    """An already loaded transformers model is wrapped in lm-eval's HFLM; --limit passes through."""
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    res = run_harness(model, tok, ["piqa", "winogrande", "mmlu"], data_dir=DATA_DIR, limit=2, batch_size=2)
    for task in ("piqa", "winogrande"):
        assert res[task]["status"] == "ok" and res[task]["n"] == 2
        assert 0.0 <= res[task]["metrics"]["acc"] <= 1.0
    assert res["mmlu"]["n"] == 4  # 2 per subject
