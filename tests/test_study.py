"""benchmarks/study.py and study_rows.py: the rows and their commands, the scores kept from eval.json,
the discriminative tasks, and the README study table built from a synthetic study JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import study  # noqa: E402
import study_rows  # noqa: E402


def test_rows_cover_the_issue_and_their_commands(tmp_path):
    rows = study_rows.study_rows(30)
    assert len([r for r in rows.values() if r.group == "grid"]) == 12
    for name in ("teacher", "teacher-lora", "lizard-paper", "lizard", "lolcats", "paper-no-gate", "paper-no-sink",
                 "paper-no-window", "paper-no-stage1", "gate-scalar", "gate-mamba2", "gate-pooled_key", "grid-w32-m2",
                 "grid-w256-m6", "hybrid-even-25", "hybrid-auto-50"):
        assert name in rows, name
    assert rows["hybrid-auto-25"].flags[-1] == "auto:8" and rows["hybrid-even-50"].flags[-1] == "even:15"
    args = study.parse_args(["--stage1-tokens", "4096", "--stage2-tokens", "2048", "--grid-stage1-tokens", "512",
                             "--grid-stage2-tokens", "256", "--linearize-flags", "--seq-len 256"])
    cmd = lambda name: study.linearize_command(args, rows[name], tmp_path / name)  # noqa: E731
    value = lambda c, flag: c[c.index(flag) + 1]  # noqa: E731
    assert value(cmd("paper-no-stage1"), "--stage1-tokens") == "0" and value(cmd("lizard"), "--stage1-tokens") == "4096"
    assert value(cmd("teacher-lora"), "--stage1-tokens") == "4096"  # same data as every row; ignored by the baseline
    assert value(cmd("teacher-lora"), "--baseline") == "teacher-lora" and value(cmd("lizard"), "--preset") == "paper"
    assert value(cmd("grid-w64-m6"), "--stage2-tokens") == "256" and value(cmd("grid-w64-m6"), "--window-size") == "64"
    assert value(cmd("lizard"), "--seq-len") == "256" and "--resume" not in cmd("lizard")
    (tmp_path / "lizard").mkdir()
    (tmp_path / "lizard" / "run.json").write_text("{}")
    assert "--resume" in cmd("lizard")  # a run cut by the deadline continues
    ev = study.eval_command(args, "runs/x", "mmlu", tmp_path / "e", None)
    assert value(ev, "--tasks") == "mmlu" and "--limit" not in ev
    args = study.parse_args(["--limit", "500", "--mmlu-limit", "20"])
    assert [limit for _, _, limit in study.row_evals(args, full=False)] == [500, 20, 500]
    full = study.row_evals(args, full=True)
    assert full[-1] == ("full", study_rows.FULL_GROUP, None) and len(full) == 4
    assert value(study.eval_command(args, "runs/x", "mmlu", tmp_path, 20), "--limit") == "20"
    assert "--limit" not in study.eval_command(args, "runs/x", study_rows.FULL_GROUP, tmp_path, None)
    assert study_rows.select_rows(rows, "reference,grid-w32-m2")[-1].name == "grid-w32-m2"
    assert len(study_rows.select_rows(rows, "hybrids")) == 6
    assert rows["hybrid-lizard-auto-50"].flags == ("--mode", "lizard", "--softmax-layers", "auto:15")
    assert [r.flags[1] for r in study_rows.select_rows(rows, "ours")] == ["no_gate", "no_meta", "lizard"]
    with pytest.raises(ValueError, match="unknown study row"):
        study_rows.select_rows(rows, "lizard,nope")


def _eval_json(scores: dict, stderr: float = 0.01) -> dict:
    """An eval.json like `lizardlm eval` writes, one model column."""
    tasks = {}
    for task, metric in study_rows.MC_TASKS.items():
        if task in scores:
            tasks[task] = {"model": {"status": "ok", "metrics": {metric: scores[task], f"{metric}_stderr": stderr}}}
    tasks["passkey"] = {"model": {"status": "ok", "metrics": {"acc @ 1024": 1.0, "acc @ 2048": 0.5}}}
    tasks["mqar"] = {"model": {"status": "ok", "metrics": {"acc (mean)": 0.4}}}
    curve = {"bucket_start": [0, 512], "bucket_end": [512, 1024], "nll": [2.0, 3.0]}
    tasks["longppl"] = {"model": {"status": "ok", "metrics": {}, "curve": curve}}
    tasks["ruler"] = {"model": {"status": "skipped (out of memory)"}}
    return {"tasks": tasks}


def test_row_scores_and_discriminative_tasks():
    teacher = study_rows.row_scores([_eval_json({"piqa": 0.65, "arc_easy": 0.52, "arc_challenge": 0.27, "hellaswag": 0.41,
                                                 "winogrande": 0.51, "mmlu": 0.248})])
    assert teacher["piqa"] == 0.65 and teacher["stderr"]["mmlu"] == 0.01 and teacher["passkey"] == 0.75
    assert teacher["passkey_by_length"] == {"1024": 1.0, "2048": 0.5} and teacher["mqar"] == 0.4
    assert teacher["longppl"] == pytest.approx(math.exp((511 * 2.0 + 512 * 3.0) / 1023))
    assert "ruler" not in teacher and teacher["status"]["ruler"] == "skipped (out of memory)"
    # above chance by more than 3 stderr (0.03): PIQA, ARC-e, HellaSwag; not ARC-c (0.02), WinoGrande, MMLU
    assert study_rows.discriminative(teacher) == ["piqa", "arc_easy", "hellaswag"]


def test_readme_study_table_from_a_synthetic_json(tmp_path):
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scores = {"teacher": (0.60, 0.50), "teacher-lora": (0.64, 0.56), "lizard": (0.48, 0.40), "hybrid-auto-25": (0.6, 0.5)}
    rows = {}
    for name, (piqa, arc) in scores.items():
        r = study_rows.row_scores([_eval_json({"piqa": piqa, "arc_easy": arc, "mmlu": 0.25})])
        r.update(status="done", flags="" if name == "teacher" else f"--mode {name}", kv_cache_bytes_32k=3 * 2**20)
        if name != "teacher":
            r.update(tokens=2 * 2**20, train_seconds=90.0, softmax_layers=[3, 7])
        rows[name] = r
    rows["lolcats"] = {"status": "linearize exit 124 (124: deadline); see the log"}
    budget = dict(teacher="smollm2-135m", preset="paper", seed=0, stage1_tokens=2**20, stage2_tokens=2**20,
                  grid_stage1_tokens=2**18, grid_stage2_tokens=2**18, limit=None, passkey_lengths="1024,2048",
                  longppl_len=8192)
    path = tmp_path / "study-test.json"
    path.write_text(json.dumps({"device": "test", "budget": budget, "rows": rows, "kv_context": 32768,
                                "discriminative": study_rows.discriminative(rows["teacher"])}))
    table = module.study(path)
    lines = {line.split(" | ")[0].removeprefix("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "PIQA* | ARC-e* | ARC-c |" in lines["row"] and "MMLU |" in lines["row"]  # MMLU 0.25: at chance
    assert "lolcats" not in lines  # unfinished rows stay out
    cells = lines["lizard"].split(" | ")
    # mean* of lizard 0.44, teacher 0.55, teacher-lora 0.60
    assert cells[1] == "48.0 (1.0)" and cells[7] == "44.0" and cells[8] == "80%" and cells[9] == "73%"
    assert lines["teacher"].split(" | ")[8:10] == ["100%", "92%"]
    assert cells[-3] == "3.0" and cells[-2] == "2.0" and cells[-1] == "1.5 |"
    assert "`hybrid-auto-25` = `--mode hybrid-auto-25` (softmax layers [3, 7])" in table


def test_slots_serve_the_lowest_priority_first():
    import threading
    import time

    slots, order = study.Slots(1), []

    def take(priority):
        with slots.hold(priority):
            order.append(priority)

    with slots.hold((0, 0)):  # the slot is busy while three wait
        threads = [threading.Thread(target=take, args=(p,)) for p in ((True, 1), (False, 5), (True, 0))]
        for t in threads:
            t.start()
        while len(slots.waiting) < len(threads):  # all three queued, however slow the host
            time.sleep(0.01)
    for t in threads:
        t.join()
    assert order == [(False, 5), (True, 0), (True, 1)]  # evaluations (False) before trainings


def test_a_row_with_whole_set_scores_runs_four_evaluations_and_keeps_both(tmp_path, monkeypatch):
    from transformers import LlamaConfig

    args = study.parse_args(["--runs", str(tmp_path), "--limit", "500", "--mmlu-limit", "20", "--device", "cpu"])
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    rows = study_rows.study_rows(2)
    ran = []

    def fake_gpu(cmd, row):  # an evaluation writes its eval.json: 0.60 on the subsets, 0.64 on the whole sets
        out, limit = Path(cmd[cmd.index("--out") + 1]), cmd[cmd.index("--limit") + 1] if "--limit" in cmd else None
        ran.append((out.name, limit))
        out.mkdir(parents=True)
        score = 0.60 if limit else 0.64
        (out / "eval.json").write_text(json.dumps(_eval_json({t: score for t in cmd[cmd.index("--tasks") + 1].split(",")})))
        return 0, 1.0

    full = study.Study(args, config, tmp_path / "log", list(rows), full_sets={"teacher"})
    monkeypatch.setattr(full, "gpu", fake_gpu)
    record = full.row(rows["teacher"])
    assert record["status"] == "done" and sorted(ran) == [("full", None), ("group0", "500"), ("group1", "20"),
                                                          ("group2", "500")]
    assert record["piqa"] == 0.60 and record["full"]["piqa"] == 0.64 and record["full"]["stderr"]["piqa"] == 0.01
    assert "mmlu" not in record["full"] and "passkey" in record
    assert full.row(rows["teacher"]) == record and len(ran) == 4  # kept: nothing runs again

    ran.clear()
    subset = study.Study(args, config, tmp_path / "log", list(rows), full_sets=set())
    monkeypatch.setattr(subset, "gpu", fake_gpu)
    record = subset.row(study_rows.Row("teacher-2", "reference", budget="none"))
    assert sorted(d for d, _ in ran) == ["group0", "group1", "group2"] and "full" not in record


def test_readme_study_tables_whole_sets_first_then_the_subset_rows(tmp_path):
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = {}
    for name, sub, whole in (("teacher", 0.60, 0.50), ("teacher-lora", 0.62, 0.55), ("lizard", 0.40, 0.45),
                             ("grid-w32-m2", 0.30, None)):
        r = study_rows.row_scores([_eval_json({"piqa": sub, "arc_easy": sub, "mmlu": 0.25})])
        r.update(status="done", flags="" if name == "teacher" else f"--mode {name}", kv_cache_bytes_32k=2**20)
        if whole is not None:
            r["full"] = study_rows.full_scores(_eval_json({"piqa": whole, "arc_easy": whole}, stderr=0.005))
        rows[name] = r
    budget = dict(teacher="t", preset="paper", seed=0, stage1_tokens=2**20, stage2_tokens=2**20, grid_stage1_tokens=2**18,
                  grid_stage2_tokens=2**18, limit=500, mmlu_limit=20, passkey_lengths="1024", longppl_len=8192)
    path = tmp_path / "study-test.json"
    path.write_text(json.dumps({"device": "test", "budget": budget, "rows": rows, "kv_context": 32768,
                                "discriminative": ["piqa", "arc_easy"]}))
    table = module.study(path)
    whole_part, subset_part = table.split("Rows without whole-set scores")
    line = lambda part, name: next(x for x in part.splitlines() if x.startswith(f"| {name} |")).split(" | ")  # noqa: E731
    assert line(whole_part, "lizard")[1] == "45.0 (0.5)" and line(whole_part, "lizard")[8:10] == ["90%", "82%"]
    assert line(whole_part, "lizard")[6] == "25.0 (1.0)"  # MMLU from its subset run
    assert "| grid-w32-m2 |" not in whole_part
    assert line(subset_part, "teacher")[1] == "60.0 (1.0)" and line(subset_part, "grid-w32-m2")[8:10] == ["50%", "48%"]
    assert "| lizard |" not in subset_part
