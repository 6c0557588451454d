"""benchmarks/passkey_gpu.py: the commands it runs and the JSON it assembles from a real eval.json (tiny
models in process; the end-to-end --quick run takes minutes on a shared 2-core CPU, too long for CI)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
import passkey_gpu  # noqa: E402
from eval_stubs import tiny_llama, tiny_tokenizer  # noqa: E402

import lizardlm  # noqa: E402
from lizardlm.eval.report import evaluate  # noqa: E402
from lizardlm.eval.ruler import ruler_eval  # noqa: E402


def test_commands(tmp_path):
    args = passkey_gpu.parse_args(["--out", str(tmp_path), "--quick", "--gradient-checkpointing", "--with-teacher",
                                   "--flags", "--window-size 16", "--passkey-trials", "3"])
    lin = passkey_gpu.linearize_command(args, tmp_path / "run")
    assert "--preset" not in lin and lin[-3:] == ["--gradient-checkpointing", "--window-size", "16"]
    assert lin[lin.index("--data") + 1] == "mix:alpaca-cleaned=0.8,retrieval=0.2" and args.name == "lizard"
    ev = passkey_gpu.eval_command(args, tmp_path / "run")
    assert ev[ev.index("--tasks") + 1] == "passkey,passkey_train,ruler,longppl,diagnostics,mqar"
    assert ev[ev.index("--mqar-lengths") + 1] == "128" and ev[ev.index("--mqar-samples") + 1] == "2"
    assert ev[ev.index("--passkey-trials") + 1] == "3" and ev[ev.index("--teacher") + 1] == "smollm2-135m"
    assert ev[ev.index("--batch-size") + 1] == str(args.batch)
    zs = passkey_gpu.parse_args(["--out", str(tmp_path), "--quick", "--tasks", "piqa,arc_easy"])
    ev = passkey_gpu.eval_command(zs, tmp_path / "run")  # the zero-shot tasks fill their batches to a token budget
    assert ev[ev.index("--batch-size") + 1] == "auto"
    full = passkey_gpu.parse_args(["--out", str(tmp_path), "--mode", "paper", "--name", "p"])
    assert full.passkey_trials >= 50 and full.device == "cuda" and full.name == "p"
    lin = passkey_gpu.linearize_command(full, tmp_path)
    assert lin[lin.index("--preset") + 1] == "gpu" and "--gradient-checkpointing" not in lin


def test_assemble_from_a_real_eval_json(tmp_path):
    tok = tiny_tokenizer()
    teacher = tiny_llama(len(tok))
    student = lizardlm.convert(tiny_llama(len(tok)), lizardlm.LizardConfig(window_size=16)).eval()
    results = evaluate({"teacher": (teacher, tok), "student": (student, tok)},
                       ["passkey", "passkey_train", "longppl", "diagnostics", "mqar"],
                       passkey_lengths=(128, 10), passkey_trials=2, diagnostics_lengths=(128,), diagnostics_trials=2,
                       mqar_pairs=(2,), mqar_lengths=(64, 96), mqar_length_pairs=2, mqar_n=2,
                       data_paths={"long-docs": str(tmp_path / "absent.jsonl")}, progress=False)
    # RULER's five tasks decode slowly on CPU: one task for the teacher, a failed entry for the student
    ruler = ruler_eval(teacher, tok, tasks=("single_needle",), lengths=(256,), trials=1, progress_bar=False)
    results["tasks"]["ruler"] = {"teacher": {"status": "ok", "details": ruler}, "student": {"status": "error"}}
    result: dict = {"runs": {}}
    passkey_gpu.assemble(result, "lizard-mix", results)
    for name in ("teacher", "lizard-mix"):
        acc, short = result["passkey"][name]["128"], result["passkey"][name]["10"]
        assert 0 <= acc <= 1 and short.startswith("skipped")
        assert acc <= result["passkey_first_digit"][name]["128"] <= 1
        assert result["longppl"][name] == "absent" and result["passkey_train"][name] == "absent"  # no books
    assert 0 <= result["ruler"]["teacher"]["256"] <= 1 and result["ruler"]["lizard-mix"] == "error"
    assert all(sorted(result["mqar"][n]) == ["64", "96"] and all(0 <= a <= 1 for a in result["mqar"][n].values())
               for n in ("teacher", "lizard-mix"))
    assert result["diagnostics"]["teacher"] == "skipped (not a Lizard model)"
    diag = result["diagnostics"]["lizard-mix"]
    assert diag["form"] == "shared" and len(diag["gate"]["half_life"]) == 2
    # the run's record takes the passkey's settings from the eval.json (a later call adding other tasks keeps them)
    got = passkey_gpu.passkey_settings(results)
    assert got["passkey_lengths"] == "128,10" and got["passkey_trials"] == 2
    assert passkey_gpu.passkey_settings({**results, "tasks": {"mqar": results["tasks"]["mqar"]}}) == {}


def test_concurrent_jobs_share_the_cores(monkeypatch):
    """Children of a multi-process driver inherit a share of the cores (four unshared linearize
    processes built their data 20x slower on a 16-core host); a value already set wins."""
    import linearize_gpu

    for var in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(linearize_gpu.os, "cpu_count", lambda: 16)
    linearize_gpu.share_cpus(1)
    assert "RAYON_NUM_THREADS" not in linearize_gpu.os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    linearize_gpu.share_cpus(4)
    env = linearize_gpu.os.environ
    assert (env["TOKENIZERS_PARALLELISM"], env["RAYON_NUM_THREADS"], env["OMP_NUM_THREADS"]) == ("false", "4", "2")


def test_combine_merges_runs_section_by_section(tmp_path):
    a = {"device": "NVIDIA H200", "passkey": {"teacher": {"1024": 1.0}, "a": {"1024": 0.2}}, "runs": {"a": {"status": "done"}}}
    b = {"device": "NVIDIA H200", "passkey": {"b": {"1024": 0.9}}, "ruler": {"b": {"1024": 0.5}}, "runs": {"b": {"status": "done"}}}
    files = []
    for name, data in (("a", a), ("b", b)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(data))
    assert passkey_gpu.main(["--out", str(tmp_path / "out"), "--combine", *map(str, files)]) == 0
    merged = json.loads((tmp_path / "out" / "passkey-nvidia-h200.json").read_text())
    assert merged["passkey"] == {"teacher": {"1024": 1.0}, "a": {"1024": 0.2}, "b": {"1024": 0.9}}
    assert set(merged["runs"]) == {"a", "b"} and merged["ruler"] == {"b": {"1024": 0.5}}
    assert not list((tmp_path / "out").glob("*.png"))  # no evaluation at a decay scale, no decay plot
    # a later eval of run b at a longer length joins b's rows; an unknown run is refused
    later = {"meta": {"date": "2026-12-03", "tasks": ["passkey"], "settings": {"passkey_lengths": [32768], "seed": 0}},
             "tasks": {"passkey": {"model": {"status": "ok", "details": {"lengths": [
                 {"length": 32768, "status": "ok", "acc": 0.3, "first_digit_acc": 0.5, "answer_nll": 0.7,
                  "repeated_digit_acc": 0.25, "number_rate": 0.75}]}}}}}
    (tmp_path / "later.json").write_text(json.dumps(later))
    out = tmp_path / "out2"
    assert passkey_gpu.main(["--out", str(out), "--combine", *map(str, files), "--add-eval", f"b={tmp_path / 'later.json'}"]) == 0
    merged = json.loads((out / "passkey-nvidia-h200.json").read_text())
    assert merged["passkey"]["b"] == {"1024": 0.9, "32768": 0.3} and merged["passkey"]["a"] == {"1024": 0.2}
    assert merged["passkey_first_digit"]["b"] == {"32768": 0.5} and merged["passkey_answer_nll"]["b"] == {"32768": 0.7}
    assert merged["passkey_repeated_digit"] == {"b": {"32768": 0.25}}  # only evaluations that report it
    assert merged["passkey_number_rate"] == {"b": {"32768": 0.75}}
    assert merged["runs"]["b"]["added_evals"] == [{"source": str(tmp_path / "later.json"), "date": "2026-12-03",
                                                   "tasks": ["passkey"], "settings": {"passkey_lengths": [32768]}}]
    with pytest.raises(SystemExit, match="expected RUN=EVAL_JSON"):
        passkey_gpu.main(["--out", str(out), "--combine", str(files[0]), "--add-eval", f"c={tmp_path / 'later.json'}"])
    with pytest.raises(SystemExit, match="--add-eval: cannot read .*absent.json"):
        passkey_gpu.main(["--out", str(out), "--combine", *map(str, files), "--add-eval", f"b={tmp_path / 'absent.json'}"])
    with pytest.raises(SystemExit):  # argparse's one-line usage error: nothing would be combined
        passkey_gpu.parse_args(["--out", str(out), "--add-eval", f"b={tmp_path / 'later.json'}"])


def test_readme_table_of_a_passkey_result(tmp_path):
    import readme_table

    result = {"device": "NVIDIA H200", "teacher": "smollm2-135m", "eval_tasks": passkey_gpu.EVAL_TASKS,
              "passkey": {"teacher": {"1024": 0.9, "32768": "skipped (out of memory at 32768 tokens)"},
                          "a": {"1024": 0.25, "32768": 0.0}},
              "passkey_train_answer_nll": {"a": {"1024": 0.4321}},
              "ruler": {"a": {"1024": 0.5}}, "mqar": {"teacher": {"512": 1.0}, "a": {"512": 0.75}}, "longppl": {"a": {"bucket_start": [0, 512], "bucket_end": [512, 1024], "ppl": [9.0, 8.5]}},
              "runs": {"a": {"mode": "paper", "data": "retrieval", "flags": "--write-gate head", "stage1_tokens": 2**21,
                             "stage2_tokens": 2**21, "seq_len": 2048, "passkey_trials": 50, "passkey_depths": 10}}}
    path = tmp_path / "passkey-nvidia-h200.json"
    path.write_text(json.dumps(result))
    table = readme_table.passkey(path)
    assert "| run | passkey @ 1K | passkey @ 32K | train-template answer NLL @ 1K | RULER @ 1K | MQAR @ 512 | long ppl |" in table
    assert "| teacher | 0.90 | OOM | – | – | 1.00 | – |" in table and "| a | 0.25 | 0.00 | 0.43 | 0.50 | 0.75 | 8.50 @ 512-1K |" in table
    assert "`a` = `--mode paper --data retrieval --write-gate head`" in table and "2M + 2M tokens of 2048" in table
    assert "train-template keys" not in table and "5 numbered key(s)" in table  # one key count: said once
    # runs asked with different key counts: a column says which
    result["passkey_train"] = {"a": {"1024": 0.5}, "b": {"1024": 0.25}}
    result["passkey"]["b"] = {"1024": 0.75}
    result["runs"]["a"]["passkey_keys"] = 5
    result["runs"]["b"] = {**result["runs"]["a"], "passkey_keys": 1, "mode": "lizard"}
    path.write_text(json.dumps(result))
    table = readme_table.passkey(path)
    assert "| run | passkey @ 1K | passkey @ 32K | train-template keys | train-template @ 1K |" in table
    assert "| a | 0.25 | 0.00 | 5 | 0.50 |" in table and "| b | 0.75 | – | 1 | 0.25 |" in table
    assert "as many numbered keys as the keys column says" in table
    assert "train seq len" not in table and "2M + 2M tokens of 2048" in table
    # a run trained on longer sequences (same token budget): a column says which
    result["runs"]["b"]["seq_len"] = 8192
    path.write_text(json.dumps(result))
    table = readme_table.passkey(path)
    assert "| run | train seq len | passkey @ 1K | passkey @ 32K | train-template keys |" in table
    assert "| teacher | – | 0.90 | OOM |" in table and "| a | 2048 | 0.25 |" in table and "| b | 8192 | 0.75 |" in table
    assert "2M + 2M tokens in sequences as long as the train seq len column says, the same for every run" in table
    # a run trained on more tokens: a column says which, and the header no longer claims one budget
    result["runs"]["b"]["stage2_tokens"] = 2**24
    path.write_text(json.dumps(result))
    table = readme_table.passkey(path)
    assert "| run | tokens (stage 1 + 2) | train seq len | passkey @ 1K |" in table
    assert "| teacher | – | – | 0.90 |" in table and "| a | 2M + 2M | 2048 | 0.25 |" in table
    assert "| b | 2M + 16M | 8192 | 0.75 |" in table
    assert "as many tokens (stage 1 + stage 2) as the tokens column says" in table and "same for every run" not in table
    assert "--init-from" not in table
    # a run started from b (no stage 1 of its own) counts b's tokens before its own
    result["passkey"]["c"] = {"1024": 0.5}
    result["runs"]["c"] = {**result["runs"]["b"], "stage1_tokens": 0, "stage2_tokens": 2**22,
                           "flags": "--init-from /tmp/runs/b --loss-average rows"}
    path.write_text(json.dumps(result))
    table = readme_table.passkey(path)
    assert "| c | 2M + 16M + 4M | 8192 | 0.50 |" in table and "| b | 2M + 16M | 8192 | 0.75 |" in table
    assert "column says (one started from another by `--init-from`: that run's, then its own)," in table
    result["runs"]["c"]["flags"] = "--init-from /elsewhere/x"  # a run the file does not hold: named, then its own tokens
    path.write_text(json.dumps(result))
    table = readme_table.passkey(path)
    assert "| c | x + 4M | 8192 | 0.50 |" in table and "that run's, then its own" in table
    # a run evaluated on MQAR alone still has its row
    result["runs"]["m"] = {**result["runs"]["a"], "flags": ""}
    result["mqar"]["m"] = {"512": 0.5}
    path.write_text(json.dumps(result))
    assert "| m | 2M + 2M | 2048 | – | – | 5 | – | – | – | 0.50 | – |" in readme_table.passkey(path)
    # a soup of b and c (lizardlm soup, as device_runs.sh records it): its runs' budgets, the command that made it
    result["runs"]["s"] = {**result["runs"]["a"], "data": "soup:b=25,c=75", "flags": " "}
    result["passkey"]["s"] = {"1024": 0.5}
    path.write_text(json.dumps(result))
    table = readme_table.passkey(path)
    assert "| s | soup of 2M + 16M, x + 4M | 2048 | 0.50 |" in table
    assert "`s` = `lizardlm soup b c --weights 25,75`" in table
    assert "passkey trials" not in table and "passkey: 50 trials per length over 10 depths" in table
    assert "one trial is 0.02; a cell of 0.92 has a 95% interval of 0.81-0.97, Wilson" in table
    # a run evaluated with more trials: a column says how many, the caption gives each count's interval
    result["runs"]["c"]["passkey_trials"] = 100
    path.write_text(json.dumps(result))
    table = readme_table.passkey(path)
    assert "| run | tokens (stage 1 + 2) | train seq len | passkey trials | passkey @ 1K |" in table
    assert "| c | x + 4M | 8192 | 100 | 0.50 |" in table and "| a | 2M + 2M | 2048 | 50 | 0.25 |" in table
    assert "| teacher | – | – | – | 0.90 |" in table and "| m | 2M + 2M | 2048 | – | – |" in table  # no passkey run: no count
    assert "passkey: as many trials as the passkey trials column says per length over 10 depths" in table
    assert ("50 trials: one trial is 0.02; a cell of 0.92 has a 95% interval of 0.81-0.97, Wilson; "
            "100 trials: one trial is 0.01; a cell of 0.92 has a 95% interval of 0.85-0.96, Wilson;") in table


def test_variants_share_every_option_but_their_own(tmp_path):
    argv = ["--out", str(tmp_path), "--quick", "--with-teacher", "--data", "retrieval:count=4", "--flags", "--feature-dim 8",
            "--variant", "a|paper|--write-gate head --gate-init 0.999", "--variant", "b|lolcats|",
            "--variant", "c|lizard||retrieval:count=4:loss=answers"]
    args = passkey_gpu.parse_args(argv)
    cmds = [passkey_gpu.variant_command(args, argv, v, first=i == 0) for i, v in enumerate(args.variant)]
    expected = (("a", "paper", "--write-gate head --gate-init 0.999", "retrieval:count=4"),
                ("b", "lolcats", "", "retrieval:count=4"), ("c", "lizard", "", "retrieval:count=4:loss=answers"))
    for cmd, (name, mode, flags, data) in zip(cmds, expected):
        assert cmd[cmd.index("--name") + 1] == name and cmd[cmd.index("--mode") + 1] == mode
        assert cmd[cmd.index("--flags") + 1] == flags and cmd.count("--flags") == 1 and "--variant" not in cmd
        assert cmd[cmd.index("--out") + 1] == str(tmp_path / "parts" / name) and cmd.count("--out") == 1
        assert cmd[cmd.index("--data") + 1] == data and cmd.count("--data") == 1 and "--quick" in cmd
        assert passkey_gpu.parse_args(cmd[2:]).data == data  # what the variant's process records
    assert "--with-teacher" in cmds[0] and "--with-teacher" not in cmds[1]


def test_a_cut_run_is_resumed_unless_fresh(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    args = passkey_gpu.parse_args(["--out", str(tmp_path), "--quick", "--name", "a"])
    assert "--resume" not in passkey_gpu.linearize_command(args, run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    assert "--resume" in passkey_gpu.linearize_command(args, run_dir)
    fresh = passkey_gpu.parse_args(["--out", str(tmp_path), "--quick", "--name", "a", "--fresh"])
    assert "--resume" not in passkey_gpu.linearize_command(fresh, run_dir)


def test_an_evaluation_cut_by_the_deadline_keeps_its_finished_tasks(tmp_path, monkeypatch):
    """The eval process is killed (exit 124) after its passkey: the result holds the passkey numbers
    of ``eval.partial.json``, the status says where it was cut, and ``--eval-only`` goes on with
    ``eval --resume``."""
    tok = tiny_tokenizer()
    student = lizardlm.convert(tiny_llama(len(tok)), lizardlm.LizardConfig(window_size=16)).eval()
    cut = evaluate({"model": (student, tok)}, ["passkey"], passkey_lengths=(128,), passkey_trials=2, progress=False)
    cut["tasks"]["mqar"] = {}  # the task the deadline stopped
    run_dir = tmp_path / "runs" / "a"
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "summary.json").write_text("{}")
    commands = []

    def killed_after_passkey(cmd, log, timeout):
        commands.append(cmd)
        (run_dir / "eval" / "eval.partial.json").write_text(json.dumps(cut))
        return 124, 5.0

    monkeypatch.setattr(passkey_gpu, "run", killed_after_passkey)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--runs", str(tmp_path / "runs"), "--name", "a", "--quick", "--eval-only",
            "--tasks", "passkey,mqar"]
    assert passkey_gpu.main(argv) == 1
    result = json.loads(next(out.glob("passkey-*.json")).read_text())
    assert result["passkey"]["a"] == {"128": cut["tasks"]["passkey"]["model"]["details"]["lengths"][0]["acc"]}
    assert result["runs"]["a"]["status"] == "eval cut (exit 124) after passkey; --eval-only goes on"
    assert "mqar" not in result or "a" not in result["mqar"]
    assert "--resume" in commands[0]


def test_a_run_past_its_timeout_is_asked_to_stop_then_killed(tmp_path):
    """The drivers' runner sends SIGTERM at the timeout (linearize then saves its step) and SIGKILL a
    grace period later; both end as exit 124 with the output kept in the log."""
    import linearize_gpu

    log = tmp_path / "log"
    polite = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *a: (print('saved step', flush=True), sys.exit(143)))\n"
              "print('started', flush=True)\ntime.sleep(60)")
    rc, secs = linearize_gpu.run([sys.executable, "-c", polite], log, timeout=5, grace=30)
    assert rc == 124 and secs < 20 and "saved step" in log.read_text()
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('deaf', flush=True)\ntime.sleep(60)"
    rc, secs = linearize_gpu.run([sys.executable, "-c", stubborn], log, timeout=5, grace=1)
    assert rc == 124 and secs < 20 and "deaf" in log.read_text()
    assert linearize_gpu.run([sys.executable, "-c", "print('fine')"], log, timeout=30)[0] == 0


def test_benchmarks_join_the_result_and_the_readme_table(tmp_path):
    """A run evaluated with the zero-shot tasks too: each task's study metric (ARC-c and HellaSwag
    acc_norm) under "benchmarks", and the README table's mean of the five in percent."""
    import readme_table

    scores = {"piqa": (0.6, 0.1), "arc_easy": (0.5, 0.1), "arc_challenge": (0.1, 0.3),
              "hellaswag": (0.1, 0.4), "winogrande": (0.5, 0.1)}
    eval_json = {"tasks": {t: {"model": {"status": "ok", "metrics": {"acc": a, "acc_norm": n}}} for t, (a, n) in scores.items()}}
    eval_json["tasks"]["mmlu"] = {"model": {"status": "absent"}}
    result: dict = {"runs": {}}
    passkey_gpu.assemble(result, "mix", eval_json)
    assert result["benchmarks"]["mix"] == {"piqa": 0.6, "arc_easy": 0.5, "arc_challenge": 0.3, "hellaswag": 0.4,
                                           "winogrande": 0.5, "mmlu": "absent"}
    assert "piqa" not in result
    result.update(device="NVIDIA H200", teacher="t", eval_tasks="passkey,piqa", passkey={"mix": {"1024": 1.0}},
                  runs={"mix": {"mode": "lizard", "data": "retrieval", "flags": "", "stage1_tokens": 2**20,
                                "stage2_tokens": 2**20, "seq_len": 2048, "passkey_trials": 50, "passkey_depths": 10}})
    path = tmp_path / "passkey-nvidia-h200.json"
    path.write_text(json.dumps(result))
    table = readme_table.passkey(path)
    assert "| run | passkey @ 1K | zero-shot mean of 5 (%) | long ppl |" in table and "| mix | 1.00 | 46.00 | – |" in table
    assert "zero-shot mean: PIQA acc, ARC-e acc, ARC-c acc_norm, HellaSwag acc_norm, WinoGrande acc" in table
    # the same recipe without retrieval, evaluated on the zero-shot tasks alone, is a row of its own
    result["benchmarks"]["base"] = {t: 0.5 for t in scores}
    result["runs"]["base"] = {**result["runs"]["mix"], "data": "alpaca-cleaned"}
    path.write_text(json.dumps(result))
    assert "| base | – | 50.00 | – |" in readme_table.passkey(path)


def test_caption_names_the_tasks_of_an_evaluation_resumed_over_several_calls():
    """A run whose evaluation was cut and resumed: its record's command names only the last call's tasks, and
    the caption adds every task whose numbers the file holds for it (in first-seen order, none twice)."""
    import readme_table

    result = {"eval_tasks": "passkey", "runs": {"a": {"eval_command": "python -m lizardlm eval --tasks piqa,arc_easy --resume"},
                                                "b": {}},
              "passkey": {"a": {"1024": 0.5}, "b": {"1024": 1.0}}, "mqar": {"a": {"128": 0.9}},
              "benchmarks": {"a": {"piqa": 0.6, "arc_easy": 0.5}}}
    assert readme_table.eval_tasks(result, ["a"]) == "piqa,arc_easy,passkey,mqar"
    assert readme_table.eval_tasks(result, ["b", "a"]) == "passkey,piqa,arc_easy,mqar"
    assert readme_table.eval_tasks({"eval_tasks": "passkey", "runs": {"c": {}}}, ["c"]) == "passkey"


def test_heatmaps_join_the_lengths_of_several_evaluations(tmp_path, monkeypatch):
    """``--heatmap RUN=A,B``: one map per passkey task over every file's lengths (a later 32K eval joins
    the first one's); a task no file ran is not drawn; a malformed item is refused."""
    import lizardlm.eval.report as report

    drawn = {}
    monkeypatch.setattr(report, "passkey_heatmap", lambda details, path, title: drawn.setdefault(Path(path).name, (details, title)) and str(path))
    trial = {"depth": 0.5, "correct": True, "first_digit": True}
    def eval_file(name, length, train):
        tasks = {"passkey": {"model": {"status": "ok", "details": {"template": "eval", "lengths": [{"length": length, "trials": [trial]}]}}}}
        if train:
            tasks["passkey_train"] = {"model": {"status": "ok", "details": {"keys": 1, "lengths": [{"length": length, "trials": [trial]}]}}}
        (tmp_path / name).write_text(json.dumps({"tasks": tasks}))
        return str(tmp_path / name)
    a, b = eval_file("a.json", 1024, True), eval_file("b.json", 32768, False)
    assert passkey_gpu.main(["--out", str(tmp_path / "maps"), "--heatmap", f"k1={a},{b}"]) == 0
    details, title = drawn["k1-passkey_heatmap.png"]
    assert [r["length"] for r in details["lengths"]] == [1024, 32768] and title == "passkey (k1)"
    details, title = drawn["k1-passkey_train_heatmap.png"]
    assert [r["length"] for r in details["lengths"]] == [1024] and title == "passkey_train, 1 key (k1)"
    with pytest.raises(SystemExit, match="expected RUN=EVAL_JSON"):
        passkey_gpu.main(["--out", str(tmp_path), "--heatmap", a])
    (tmp_path / "torn.json").write_text('{"tasks": ')
    with pytest.raises(SystemExit, match="--heatmap: cannot read .*torn.json"):
        passkey_gpu.main(["--out", str(tmp_path), "--heatmap", f"k1={a},{tmp_path / 'torn.json'}"])


def test_an_evaluation_at_a_decay_scale_is_a_run_of_its_own(tmp_path, monkeypatch):
    """``--eval-only --decay-scale 0.5`` evaluates the trained run's weights with ``lizardlm eval
    --decay-scale 0.5`` into ``eval-decay0.5``; its numbers land under ``a@decay0.5`` beside the run's
    own, with the run's training record and the scale, and the README table's runs line names the scale."""
    tok = tiny_tokenizer()
    student = lizardlm.convert(tiny_llama(len(tok)), lizardlm.LizardConfig(window_size=16)).eval()
    scaled = evaluate({"model": (student, tok)}, ["passkey"], passkey_lengths=(128,), passkey_trials=2, progress=False)
    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text("{}")
    commands = []

    def evaluated(cmd, log, timeout):
        commands.append(cmd)
        out_dir = Path(cmd[cmd.index("--out") + 1])
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps(scaled))
        return 0, 5.0

    monkeypatch.setattr(passkey_gpu, "run", evaluated)
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"passkey": {"a": {"128": 0.25}}, "runs": {"a": {
        "mode": "lizard", "data": "retrieval", "flags": "--window-size 16", "linearize_command": "python -m lizardlm x",
        "seq_len": 128, "stage1_tokens": 1024, "stage2_tokens": 1024, "passkey_trials": 2, "passkey_depths": 2,
        "status": "done"}}}))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--runs", str(tmp_path / "runs"), "--name", "a", "--quick", "--eval-only",
            "--tasks", "passkey", "--decay-scale", "0.5", "--merge", str(earlier)]
    assert passkey_gpu.main(argv) == 0
    cmd = commands[0]
    assert cmd[cmd.index("--decay-scale") + 1] == "0.5" and cmd[cmd.index("--out") + 1] == str(run_dir / "eval-decay0.5")
    result = json.loads(next(out.glob("passkey-*.json")).read_text())
    acc = scaled["tasks"]["passkey"]["model"]["details"]["lengths"][0]["acc"]
    assert result["passkey"] == {"a": {"128": 0.25}, "a@decay0.5": {"128": acc}}
    run = result["runs"]["a@decay0.5"]
    assert run["decay_scale"] == 0.5 and run["linearize_command"] == "python -m lizardlm x" and run["status"] == "done"
    assert "decay_scale" not in result["runs"]["a"]
    import readme_table
    table = readme_table.passkey(next(out.glob("passkey-*.json")))
    assert "| a@decay0.5 |" in table and "`a@decayS` = `--mode lizard --data retrieval --window-size 16`, " \
        "evaluated with `--decay-scale S` for S = 0.5" in table


def test_an_evaluation_at_inference_knobs_is_named_by_each(tmp_path):
    """``--write-contrast C`` (with or without ``--decay-scale S``, ``--read-sharpness T``) names the run
    ``NAME@writeC`` / ``NAME@decayS@writeC`` / ``NAME@decayS@writeC@readT``, evaluates into ``eval-writeC`` /
    ``eval-decayS-writeC`` / ... with those flags, and the README runs line names the knobs and their values."""
    import readme_table

    both = passkey_gpu.parse_args(["--out", str(tmp_path), "--quick", "--name", "a", "--eval-only",
                                   "--decay-scale", "0.5", "--write-contrast", "2"])
    assert both.label == "a@decay0.5@write2"
    cmd = passkey_gpu.eval_command(both, tmp_path / "a")
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "a" / "eval-decay0.5-write2")
    assert cmd[cmd.index("--decay-scale") + 1] == "0.5" and cmd[cmd.index("--write-contrast") + 1] == "2"
    write = passkey_gpu.parse_args(["--out", str(tmp_path), "--quick", "--name", "a", "--write-contrast", "2"])
    assert write.label == "a@write2" and passkey_gpu.eval_dir(write, tmp_path).name == "eval-write2"
    assert "--decay-scale" not in passkey_gpu.eval_command(write, tmp_path)
    three = passkey_gpu.parse_args(["--out", str(tmp_path), "--quick", "--name", "a", "--decay-scale", "0.5",
                                    "--write-contrast", "2", "--read-sharpness", "2", "--eval-only"])
    assert three.label == "a@decay0.5@write2@read2"
    cmd = passkey_gpu.eval_command(three, tmp_path / "a")
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "a" / "eval-decay0.5-write2-read2")
    assert cmd[cmd.index("--read-sharpness") + 1] == "2"
    train = {"mode": "lizard", "data": "retrieval", "flags": ""}
    lines = readme_table.run_lines({"a": train, "a@write2": {**train, "write_contrast": 2.0},
                                    "a@write4": {**train, "write_contrast": 4.0},
                                    "a@decay0.5@write2": {**train, "decay_scale": 0.5, "write_contrast": 2.0},
                                    "a@decay0.5@write2@read2": {**train, "decay_scale": 0.5, "write_contrast": 2.0,
                                                                "read_sharpness": 2.0}})
    assert lines == ["`a` = `--mode lizard --data retrieval`",
                     "`a@writeC` = `--mode lizard --data retrieval`, evaluated with `--write-contrast C` for C = 2, 4",
                     "`a@decayS@writeC` = `--mode lizard --data retrieval`, evaluated with `--decay-scale S` and "
                     "`--write-contrast C` for S, C = 0.5, 2",
                     "`a@decayS@writeC@readt` = `--mode lizard --data retrieval`, evaluated with `--decay-scale S`, "
                     "`--write-contrast C` and `--read-sharpness t` for S, C, t = 0.5, 2, 2"]


def test_combine_gives_a_decay_scale_evaluation_its_runs_training_record(tmp_path):
    """A ``NAME@decayS`` part made by ``--eval-only`` in another call (this script's default data and flags
    in its record) takes run ``NAME``'s training settings when both are combined; its own evaluation stays."""
    trained = {"device": "NVIDIA H200", "passkey": {}, "runs": {"k": {
        "mode": "lizard", "data": "retrieval", "flags": "--feature-dim 256", "stage2_tokens": 8, "seq_len": 2048,
        "linearize_command": "python -m lizardlm linearize", "status": "eval failed (exit 124); see the log"}}}
    scaled = {"device": "NVIDIA H200", "passkey": {"k@decay0.25": {"16384": 0.68}}, "runs": {"k@decay0.25": {
        "mode": "lizard", "data": "mix:alpaca-cleaned=0.8,retrieval=0.2", "flags": "", "stage2_tokens": 2, "seq_len": 2048,
        "decay_scale": 0.25, "eval_command": "python -m lizardlm eval --decay-scale 0.25", "status": "done"}}}
    files = []
    for name, data in (("trained", trained), ("scaled", scaled)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(data))
    assert passkey_gpu.main(["--out", str(tmp_path / "out"), "--combine", *map(str, files)]) == 0
    run = json.loads((tmp_path / "out" / "passkey-nvidia-h200.json").read_text())["runs"]["k@decay0.25"]
    assert (run["data"], run["flags"], run["stage2_tokens"]) == ("retrieval", "--feature-dim 256", 8)
    assert run["linearize_command"] == "python -m lizardlm linearize" and run["decay_scale"] == 0.25
    assert run["status"] == "done" and run["eval_command"].endswith("--decay-scale 0.25")
    assert (tmp_path / "out" / "passkey-nvidia-h200-knobs.png").stat().st_size > 0


def test_knob_value_reads_each_knob_of_a_label_and_1_where_it_is_unset():
    assert passkey_gpu.knob_value("r@decay0.25@write2", "decay") == 0.25
    assert passkey_gpu.knob_value("r@decay0.25@write2", "write") == 2.0
    assert passkey_gpu.knob_value("r@write1.5", "decay") == 1.0 and passkey_gpu.knob_value("r@write1.5", "write") == 1.5
    assert passkey_gpu.knob_value("mixr2k-seed1", "write") == 1.0


def test_a_knob_at_1_is_the_model_as_trained():
    """Not named, passed to the evaluation or given its own directory: ``tuned`` passes what tune chose as is."""
    args = passkey_gpu.parse_args(["--out", "o", "--quick", "--name", "r", "--decay-scale", "1", "--write-contrast", "4"])
    assert args.label == "r@write4" and args.decay_scale is None
    cmd = passkey_gpu.eval_command(args, passkey_gpu.Path("runs/r"))
    assert "--decay-scale" not in cmd and cmd[cmd.index("--write-contrast") + 1] == "4"
    assert passkey_gpu.eval_dir(args, passkey_gpu.Path("runs/r")).name == "eval-write4"
    assert passkey_gpu.knobs({"decay_scale": 0.5, "write_contrast": 1.0}) == [("decay", 0.5)]


def test_the_runs_line_names_one_runs_decay_scales_once():
    import readme_table
    train = {"mode": "lizard", "data": "retrieval", "flags": "--feature-dim 256"}
    runs = {"teacherless": {"mode": "lolcats", "data": "retrieval", "flags": ""},
            "k@decay1": {**train, "decay_scale": 1.0}, "k@decay0.25": {**train, "decay_scale": 0.25}}
    assert readme_table.run_lines(runs) == [
        "`teacherless` = `--mode lolcats --data retrieval`",
        "`k@decayS` = `--mode lizard --data retrieval --feature-dim 256`, evaluated with `--decay-scale S` for S = 1, 0.25"]


def test_a_mixtures_trained_shares_are_read_from_its_run_and_named_in_the_runs_line():
    import readme_table
    run_json = {"data": {"spec": "mix:a=0.5,b=0.5", "parts": [{"spec": "a", "share": 0.5, "train_share": 0.39561},
                                                           {"spec": "b", "share": 0.5, "train_share": 0.60439}]}}
    shares = passkey_gpu.train_shares(run_json)
    assert shares == {"a": 0.3956, "b": 0.6044} and passkey_gpu.train_shares({"data": {"spec": "a"}}) is None
    runs = {"m": {"mode": "lizard", "data": "mix:a=0.5,b=0.5", "flags": "", "train_shares": shares}}
    assert readme_table.run_lines(runs) == ["`m` = `--mode lizard --data mix:a=0.5,b=0.5` (trained on 39.6% a, 60.4% b of the rows)"]


def test_a_later_eval_only_call_records_the_run_as_it_was_trained(tmp_path, monkeypatch):
    """Training leaves the run's training record in its directory; an ``--eval-only`` call without
    ``--merge`` (another device call) records those settings, not this script's defaults."""
    tok = tiny_tokenizer()
    student = lizardlm.convert(tiny_llama(len(tok)), lizardlm.LizardConfig(window_size=16)).eval()
    evaluated = evaluate({"model": (student, tok)}, ["passkey"], passkey_lengths=(128,), passkey_trials=2, progress=False)
    run_dir = tmp_path / "runs" / "a"

    def fake(cmd, log, timeout):
        if "linearize" in cmd:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "summary.json").write_text("{}")
            return 0, 3.0
        out_dir = Path(cmd[cmd.index("--out") + 1])
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps(evaluated))
        return 0, 1.0

    monkeypatch.setattr(passkey_gpu, "run", fake)
    common = ["--runs", str(tmp_path / "runs"), "--name", "a", "--quick", "--tasks", "passkey"]
    assert passkey_gpu.main(["--out", str(tmp_path / "trained"), *common, "--data", "retrieval:keys=1",
                             "--flags", "--feature-dim 256", "--stage2-tokens", "4096"]) == 0
    assert passkey_gpu.main(["--out", str(tmp_path / "later"), *common, "--eval-only", "--decay-scale", "0.25"]) == 0
    run = json.loads(next((tmp_path / "later").glob("passkey-*.json")).read_text())["runs"]["a@decay0.25"]
    assert (run["data"], run["flags"], run["stage2_tokens"]) == ("retrieval:keys=1", "--feature-dim 256", 4096)
    assert run["linearize_command"].startswith("python -m lizardlm linearize") and run["decay_scale"] == 0.25


def _knobs_json(best: tuple[float, float]) -> dict:
    """A ``lizardlm tune`` knobs.json of a 2 x 1 grid at 16K whose best is ``best`` (decay scale, write contrast)."""
    grid = [{"decay_scale": s, "write_contrast": 2.0, "acc": {"16384": a}, "first_digit_acc": {"16384": a},
             "answer_nll": {"16384": n}, "mean_acc": a, "mean_nll": n} for s, a, n in ((0.5, 0.8, 0.3), (best[0], 0.9, 0.1))]
    return {"grid": grid, "best": {"decay_scale": best[0], "write_contrast": best[1], "mean_acc": 0.9, "mean_nll": 0.1},
            "lengths": [16384], "trained": {"decay_scale": 1.0, "write_contrast": 1.0},
            "passkey": {"trials": 20, "seed": 1, "depths": 10, "template": "eval", "keys": 1, "chunk": 2048, "batch_size": 16},
            "model": "/runs/m", "device": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16", "torch": "2.11.0"}


def test_add_tune_records_the_choice_of_lizardlm_tune_under_its_runs_label(tmp_path):
    """``--add-tune RUN=knobs.json`` names the evaluation at the chosen knobs as the labels of ``--eval-only``
    do (a knob at 1 unnamed) and keeps the grid and its prompts; an unknown run or another JSON is refused."""
    result = {"device": "NVIDIA H100 80GB HBM3", "passkey": {"m": {"16384": 0.4}}, "runs": {"m": {"status": "done"}}}
    (tmp_path / "r.json").write_text(json.dumps(result))
    for best, label in (((0.125, 3.0), "m@decay0.125@write3"), ((1.0, 2.0), "m@write2")):
        (tmp_path / "knobs.json").write_text(json.dumps(_knobs_json(best)))
        out = tmp_path / f"out-{label}"
        assert passkey_gpu.main(["--out", str(out), "--combine", str(tmp_path / "r.json"),
                                 "--add-tune", f"m={tmp_path / 'knobs.json'}"]) == 0
        tuned = json.loads((out / "passkey-nvidia-h100-80gb-hbm3.json").read_text())["tuned"]["m"]
        assert tuned["chosen"] == label and (tuned["decay_scale"], tuned["write_contrast"]) == best
        assert (tuned["trials"], tuned["seed"], tuned["lengths"]) == (20, 1, [16384]) and len(tuned["grid"]) == 2
        assert "close" not in tuned and all("mean_acc_se" not in g for g in tuned["grid"])  # a tune before standard errors
    knobs = _knobs_json((0.125, 3.0))  # a tune that reports its noise
    for g, se in zip(knobs["grid"], (0.08, 0.06)):
        g["mean_acc_se"] = se
    knobs["best"] |= {"mean_acc_se": 0.06, "close": [{"decay_scale": 0.5, "write_contrast": 2.0, "read_sharpness": 1.0}]}
    knobs["refined"] = {"trials": 80, "seed": 2, "settings": [{"decay_scale": 0.125, "write_contrast": 3.0, "read_sharpness": 1.0},
                                                            {"decay_scale": 0.5, "write_contrast": 2.0, "read_sharpness": 1.0}]}
    (tmp_path / "knobs.json").write_text(json.dumps(knobs))
    assert passkey_gpu.main(["--out", str(tmp_path / "se"), "--combine", str(tmp_path / "r.json"),
                             "--add-tune", f"m={tmp_path / 'knobs.json'}"]) == 0
    tuned = json.loads((tmp_path / "se" / "passkey-nvidia-h100-80gb-hbm3.json").read_text())["tuned"]["m"]
    assert (tuned["mean_acc_se"], tuned["close"]) == (0.06, 1) and [g["mean_acc_se"] for g in tuned["grid"]] == [0.08, 0.06]
    assert tuned["refined"] == {"trials": 80, "seed": 2, "settings": 2}
    with pytest.raises(SystemExit, match="expected RUN=KNOBS_JSON"):
        passkey_gpu.main(["--out", str(tmp_path / "x"), "--combine", str(tmp_path / "r.json"),
                          "--add-tune", f"other={tmp_path / 'knobs.json'}"])
    with pytest.raises(SystemExit, match="is not the knobs.json of `lizardlm tune`"):
        passkey_gpu.main(["--out", str(tmp_path / "x"), "--combine", str(tmp_path / "r.json"),
                          "--add-tune", f"m={tmp_path / 'r.json'}"])


def test_the_glance_shows_the_knobs_tune_chose_before_the_best_evaluation(tmp_path, monkeypatch):
    """Of several evaluations at knobs, the README's glance shows the one ``lizardlm tune`` chose on prompts of
    its own, even where another scored higher on the evaluation's prompts; without a choice, the best, said so."""
    import readme_table

    run = {"mode": "lizard", "data": "mix:alpaca-cleaned=0.5,retrieval=0.5", "flags": ""}
    result = {"device": "NVIDIA H100 80GB HBM3", "teacher": "smollm2-135m", "passkey": {
        "m": {"16384": 0.4}, "m@decay0.25": {"16384": 0.95}, "m@decay0.125@write3": {"16384": 0.9}},
        "runs": {"m": run, "m@decay0.25": {**run, "decay_scale": 0.25},
                 "m@decay0.125@write3": {**run, "decay_scale": 0.125, "write_contrast": 3.0}}}
    teacher = {"device": "NVIDIA H200", "teacher": "smollm2-135m", "passkey": {"teacher": {"16384": 0.0}}, "runs": {}}
    (tmp_path / "passkey-mix-nvidia-h200.json").write_text(json.dumps(teacher))
    (tmp_path / "passkey-x-nvidia-h100-80gb-hbm3.json").write_text(json.dumps(result))
    monkeypatch.setattr(readme_table, "RESULTS", tmp_path)
    row = next(r for r in readme_table.glance().splitlines() if r.startswith("| passkey retrieval"))
    assert "`m@decay0.25` (`--decay-scale 0.25`) 0.95" in row and "the best of 2 evaluations at knobs, chosen on these prompts" in row
    passkey_gpu.add_tune(result, "m", _knobs_json((0.125, 3.0)), "knobs.json")
    (tmp_path / "passkey-x-nvidia-h100-80gb-hbm3.json").write_text(json.dumps(result))
    row = next(r for r in readme_table.glance().splitlines() if r.startswith("| passkey retrieval"))
    assert "`m@decay0.125@write3` (`--decay-scale 0.125`, `--write-contrast 3`) 0.90" in row
    assert "chosen by `lizardlm tune` from 2 settings on 20 prompts of seed 1 a length at 16K, scored on" in row
    knobs = _knobs_json((0.125, 3.0))  # a tune that reports its noise says how many settings it could not tell apart
    knobs["best"] |= {"mean_acc_se": 0.06, "close": [{"decay_scale": 0.5, "write_contrast": 2.0, "read_sharpness": 1.0}]}
    passkey_gpu.add_tune(result, "m", knobs, "knobs.json")
    (tmp_path / "passkey-x-nvidia-h100-80gb-hbm3.json").write_text(json.dumps(result))
    row = next(r for r in readme_table.glance().splitlines() if r.startswith("| passkey retrieval"))
    assert "a length at 16K, 1 of the others within two standard errors of it, scored on" in row


@pytest.mark.parametrize("hits, n", [(46, 50), (50, 50), (0, 5), (3, 7), (181, 200)])
def test_wilson_interval_is_where_the_score_test_stops_rejecting(hits, n):
    """Wilson's bounds are the rates p where the observed rate sits exactly z standard errors away:
    ``(hits / n - p)^2 = z^2 p (1 - p) / n``, one below and one above it (within [0, 1])."""
    import readme_table

    lo, hi = readme_table.wilson(hits, n)
    rate = hits / n
    assert 0 <= lo <= rate <= hi <= 1
    for p in (lo, hi):
        assert (rate - p) ** 2 == pytest.approx(1.96**2 * p * (1 - p) / n, abs=1e-12)
    assert readme_table._trials_note(50) == "one trial is 0.02; a cell of 0.92 has a 95% interval of 0.81-0.97, Wilson"
