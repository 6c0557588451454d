"""evaluate(): JSON, markdown table with recovery %, plots, absent sets; the ``lizardlm eval`` CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import DATA_DIR, tiny_llama, tiny_tokenizer  # noqa: E402

from lizardlm.eval import evaluate, markdown_table  # noqa: E402
from lizardlm.eval.report import recovery  # noqa: E402

SMALL = dict(
    limit=2, ppl_window=128, position_seq_len=128, position_bucket=32, position_windows=2,
    mqar_pairs=(2, 4), mqar_lengths=(128,), mqar_length_pairs=4, mqar_n=2,
    passkey_lengths=(128, 256), passkey_trials=1, progress=False,
)


@pytest.fixture(scope="module")
def pair():
    tok = tiny_tokenizer()
    return {"teacher": (tiny_llama(len(tok), seed=0), tok), "student": (tiny_llama(len(tok), seed=1), tok)}


@pytest.fixture(scope="module")
def results(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    tasks = ["wikitext2", "tinyshakespeare", "piqa", "hellaswag", "mqar", "passkey", "position_ppl"]
    absent = {"tinyshakespeare": str(DATA_DIR / "tinyshakespeare" / "input.txt")}  # explicit: no sample fallback
    res = evaluate(pair, tasks, out_dir=out, data_dir=DATA_DIR, data_paths=absent, **SMALL)
    return res, out


def test_files_and_json(results):
    res, out = results
    for name in ("eval.json", "eval.md", "passkey.png", "mqar.png", "ppl_position.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = json.loads((out / "eval.json").read_text())
    assert data["schema"] == "lizardlm.eval/1" and data["reference"] == "teacher"
    assert data["meta"]["versions"]["torch"] and data["meta"]["versions"]["lm_eval"]
    assert data["meta"]["limit"] == 2 and data["meta"]["settings"]["passkey_lengths"] == [128, 256]
    assert "device" in data["meta"] and set(data["models"]) == {"teacher", "student"}
    assert data["models"]["teacher"]["parameters"] > 0
    wt = data["tasks"]["wikitext2"]["teacher"]
    assert wt["status"] == "ok" and wt["windows"] == 2 and wt["metrics"]["ppl"] > 1
    assert data["tasks"]["piqa"]["student"]["n"] == 2
    assert data["tasks"]["passkey"]["teacher"]["details"]["lengths"][1]["length"] == 256
    assert len(data["tasks"]["position_ppl"]["teacher"]["curve"]["ppl"]) == 4


def test_absent_is_absent_not_zero(results):
    res, out = results
    e = res["tasks"]["tinyshakespeare"]["student"]  # not in the fixture data dir
    assert e["status"] == "absent" and "metrics" not in e
    assert e["path"] == str(DATA_DIR / "tinyshakespeare" / "input.txt")
    md = (out / "eval.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| tinyshakespeare |"))
    assert row.count("absent") == 2 and "0.0" not in row
    assert f"absent, looked for `{DATA_DIR / 'tinyshakespeare' / 'input.txt'}`" in md


def test_markdown_table_has_rows_columns_and_recovery(results):
    res, _ = results
    md = markdown_table(res)
    header = md.splitlines()[0]
    assert header == "| task | metric | teacher | student | recovery % (student) |"
    assert any(line.startswith("| piqa | acc |") for line in md.splitlines())
    assert any(line.startswith("| passkey | acc @ 256 |") for line in md.splitlines())
    assert any(line.startswith("| mqar | acc @ 4 pairs |") for line in md.splitlines())
    t = res["tasks"]["wikitext2"]["teacher"]["metrics"]["ppl"]
    s = res["tasks"]["wikitext2"]["student"]["metrics"]["ppl"]
    row = next(line for line in md.splitlines() if line.startswith("| wikitext2 | ppl |"))
    assert row.endswith(f"| {100 * t / s:.1f} |")


def test_recovery_direction():
    assert recovery(0.5, 0.6, "acc") == pytest.approx(100 * 0.5 / 0.6)
    assert recovery(25.0, 20.0, "ppl") == pytest.approx(80.0)  # worse perplexity -> below 100
    assert recovery(None, 0.6, "acc") is None


def test_all_absent_data_dir(pair, tmp_path):
    one = {"student": pair["student"]}
    res = evaluate(one, ["wikitext2", "piqa", "arc_easy", "mmlu"], data_dir=tmp_path / "empty", **SMALL)
    assert {res["tasks"][t]["student"]["status"] for t in res["tasks"]} == {"absent"}
    md = markdown_table(res)
    assert "recovery" not in md.splitlines()[0]
    assert md.count("| absent |") == 6  # wikitext2 ppl, piqa acc + acc_norm, arc_easy acc + acc_norm, mmlu acc
    assert str(tmp_path / "empty" / "piqa" / "validation.jsonl") in md


def test_unknown_task_is_an_error(pair):
    from lizardlm.errors import LizardError

    with pytest.raises(LizardError):
        evaluate({"m": pair["student"]}, ["nope"])


def test_a_cut_evaluation_keeps_its_finished_tasks_and_resumes(pair, tmp_path, monkeypatch):
    """Cut at the teacher's passkey (Ctrl-C, a deadline): the partial file holds the tasks that
    finished; ``resume`` runs only the rest and ends with an uncut run's numbers. Other settings or
    other weights are refused in one line."""
    from lizardlm.errors import LizardError
    from lizardlm.eval import report

    tasks, small = ["wikitext2", "mqar", "passkey"], {**SMALL, "limit": 1}
    whole = evaluate(pair, tasks, data_dir=DATA_DIR, **small)
    partial = tmp_path / report.PARTIAL
    real, ran = report._run_one, []

    def cut_at_passkey(task, *args):
        if task == "passkey":
            raise KeyboardInterrupt
        ran.append(task)
        return real(task, *args)

    monkeypatch.setattr(report, "_run_one", cut_at_passkey)
    with pytest.raises(KeyboardInterrupt):
        evaluate(pair, tasks, data_dir=DATA_DIR, partial=partial, **small)
    saved = json.loads(partial.read_text())
    assert {t: sorted(per) for t, per in saved["tasks"].items()} == {"wikitext2": ["teacher"], "mqar": ["teacher"],
                                                                     "passkey": []}
    monkeypatch.setattr(report, "_run_one", lambda task, *args: ran.append(task) or real(task, *args))
    ran.clear()
    resumed = evaluate(pair, tasks, data_dir=DATA_DIR, partial=partial, resume=True, **small)
    assert ran == ["passkey", "wikitext2", "mqar", "passkey"]  # the teacher's passkey, then the student's three
    assert resumed["meta"]["kept"] == {"from": str(partial), "teacher": ["wikitext2", "mqar"]}
    for task in tasks:
        for name in pair:
            assert resumed["tasks"][task][name]["metrics"] == whole["tasks"][task][name]["metrics"], (task, name)

    with pytest.raises(LizardError, match=r"was made with other seed; drop --resume"):
        evaluate(pair, tasks, data_dir=DATA_DIR, partial=partial, resume=True, **{**small, "seed": 1})
    tok = pair["student"][1]
    other = {"teacher": pair["teacher"], "student": (tiny_llama(len(tok), seed=2), tok)}
    with pytest.raises(LizardError, match=r"was made with other model student;"):
        evaluate(other, tasks, data_dir=DATA_DIR, partial=partial, resume=True, **small)
    partial.write_text('{"meta": ')
    with pytest.raises(LizardError, match=r"is not a readable evaluation .*delete it to start over"):
        evaluate(pair, tasks, data_dir=DATA_DIR, partial=partial, resume=True, **small)


def test_task_settings_name_tasks_and_fields_that_exist():
    import dataclasses

    from lizardlm.eval import report

    fields = {f.name for f in dataclasses.fields(report.EvalConfig)}
    assert set(report.TASK_SETTINGS) <= set(report.ALL_TASKS)
    assert {k for keys in report.TASK_SETTINGS.values() for k in keys} <= fields - {"batch_size", "progress"}


def test_resume_compares_a_tasks_own_settings_only_where_that_task_is_kept(pair, tmp_path, monkeypatch):
    """A setting that only some tasks read (``TASK_SETTINGS``) differs from the file's: the named tasks that read it
    run again with it, a kept task that reads it keeps the file's value in the settings, and a kept task and a
    task run now that both read it are refused in one line."""
    from lizardlm.errors import LizardError
    from lizardlm.eval import report

    partial = tmp_path / report.PARTIAL
    small = {**SMALL, "limit": None, "passkey_lengths": (128,), "passkey_depths": 2}
    first = evaluate(pair, ["wikitext2", "passkey"], data_dir=DATA_DIR, partial=partial, **small)
    real, ran = report._run_one, []
    monkeypatch.setattr(report, "_run_one", lambda task, *args: ran.append(task) or real(task, *args))

    more = evaluate(pair, ["mqar"], data_dir=DATA_DIR, partial=partial, resume=True, **{**small, "passkey_trials": 3})
    assert ran == ["mqar", "mqar"] and more["tasks"]["passkey"] == first["tasks"]["passkey"]
    assert more["meta"]["settings"]["passkey_trials"] == 1  # what the kept passkey was made with

    ran.clear()
    again = evaluate(pair, ["passkey"], data_dir=DATA_DIR, partial=partial, resume=True,
                     **{**small, "passkey_trials": 2})
    assert ran == ["passkey", "passkey"] and again["meta"]["settings"]["passkey_trials"] == 2
    assert again["meta"]["kept"] == {"from": str(partial), **{name: ["wikitext2", "mqar"] for name in pair}}
    assert [len(again["tasks"]["passkey"][name]["details"]["lengths"][0]["trials"]) for name in pair] == [2, 2]
    assert again["tasks"]["mqar"] == more["tasks"]["mqar"]

    ran.clear()
    with pytest.raises(LizardError, match=r"was made with other passkey_depths; drop --resume"):
        evaluate(pair, ["diagnostics"], data_dir=DATA_DIR, partial=partial, resume=True,
                 **{**small, "passkey_trials": 2, "passkey_depths": 4})  # the kept passkey read it too
    assert ran == []


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_model")
    tok = tiny_tokenizer()
    tiny_llama(len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_cli_eval_side_by_side(model_dir, tmp_path, capsys, monkeypatch):
    from lizardlm.cli import eval as cli_eval
    from lizardlm.cli import main

    loads, load = [], cli_eval.load_model_for_eval
    monkeypatch.setattr(cli_eval, "load_model_for_eval", lambda spec, **kw: loads.append(spec) or load(spec, **kw))
    out = tmp_path / "out"
    rc = main(["eval", "--model", str(model_dir), "--teacher", str(model_dir), "--tasks", "wikitext2,piqa,winogrande,mqar,passkey",
               "--data-dir", str(DATA_DIR), "--limit", "2", "--window", "64", "--passkey-lengths", "128",
               "--mqar-pairs", "2,4", "--mqar-lengths", "64", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| task | metric | teacher | student | recovery % (student) |" in printed
    # the same weights on both sides: 100% recovery everywhere
    assert "| wikitext2 | ppl |" in printed and "| 100.0 |" in printed
    data = json.loads((out / "eval.json").read_text())
    assert data["models"]["student"]["source"] == str(model_dir)
    assert data["tasks"]["piqa"]["teacher"]["metrics"] == data["tasks"]["piqa"]["student"]["metrics"]
    assert (out / "eval.md").read_text().startswith("# lizardlm eval")
    assert loads == [str(model_dir)] * 2  # teacher and student loaded once each for all five tasks
    assert not (out / "eval.partial.json").exists()  # written after every task, gone once eval.json is


def test_cli_resume_keeps_a_cut_evaluations_tasks(model_dir, tmp_path, capsys):
    from lizardlm.cli import main

    out = tmp_path / "out"
    argv = ["eval", "--model", str(model_dir), "--tasks", "wikitext2,mqar", "--data-dir", str(DATA_DIR), "--limit", "1",
            "--window", "64", "--mqar-pairs", "2", "--mqar-lengths", "64", "--out", str(out), "--no-progress", "--no-plots"]
    assert main(argv) == 0
    full = json.loads((out / "eval.json").read_text())
    cut = {**full, "tasks": {"wikitext2": full["tasks"]["wikitext2"], "mqar": {}}}  # as a cut after wikitext2 leaves it
    (out / "eval.partial.json").write_text(json.dumps(cut))
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0
    resumed = json.loads((out / "eval.json").read_text())
    assert resumed["meta"]["kept"] == {"from": str(out / "eval.partial.json"), "model": ["wikitext2"]}
    assert resumed["tasks"] == full["tasks"] and not (out / "eval.partial.json").exists()
    (out / "eval.partial.json").write_text(json.dumps(cut))
    assert main(argv) == 0  # without --resume: started over, and said so
    assert "eval.partial.json (a cut evaluation) is replaced; --resume keeps its finished tasks" in capsys.readouterr().err
    assert "kept" not in json.loads((out / "eval.json").read_text())["meta"]
    (out / "eval.partial.json").write_text(json.dumps(cut))
    assert main(argv + ["--seed", "1", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "was made with other seed; drop --resume to start over" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_cli_resume_adds_tasks_to_a_finished_evaluation(model_dir, tmp_path, monkeypatch):
    """Evaluations of one run in several calls add up: a later ``--resume`` call with other tasks (and
    another batch size, which changes no number) keeps the finished ``eval.json``'s tasks beside its own;
    the same tasks again are all kept, none run."""
    from lizardlm.cli import main
    from lizardlm.eval import report

    out = tmp_path / "out"
    common = ["eval", "--model", str(model_dir), "--data-dir", str(DATA_DIR), "--limit", "1", "--window", "64",
              "--mqar-pairs", "2", "--mqar-lengths", "64", "--out", str(out), "--no-progress", "--no-plots"]
    assert main(common + ["--tasks", "wikitext2,mqar", "--batch-size", "2"]) == 0
    first = json.loads((out / "eval.json").read_text())
    assert main(common + ["--tasks", "piqa", "--resume"]) == 0
    both = json.loads((out / "eval.json").read_text())
    assert list(both["tasks"]) == ["wikitext2", "mqar", "piqa"] == both["meta"]["tasks"]
    assert both["tasks"]["wikitext2"] == first["tasks"]["wikitext2"] and both["tasks"]["mqar"] == first["tasks"]["mqar"]
    assert both["tasks"]["piqa"]["model"]["status"] == "ok"
    assert both["meta"]["kept"] == {"from": str(out / "eval.json"), "model": ["wikitext2", "mqar"]}

    ran, one, mc = [], report._run_one, report._run_mc
    monkeypatch.setattr(report, "_run_one", lambda task, *args: ran.append(task) or one(task, *args))
    monkeypatch.setattr(report, "_run_mc", lambda tasks, *args: ran.extend(tasks) or mc(tasks, *args))
    assert main(common + ["--tasks", "mqar,piqa", "--resume"]) == 0
    again = json.loads((out / "eval.json").read_text())
    assert ran == [] and again["tasks"] == both["tasks"]
    assert again["meta"]["kept"] == {"from": str(out / "eval.json"), "model": ["wikitext2", "mqar", "piqa"]}


def test_cli_default_out_dir_and_absent(model_dir, tmp_path, capsys):
    from lizardlm.cli import main

    rc = main(["eval", "--model", str(model_dir), "--tasks", "hellaswag,piqa", "--data-dir", str(tmp_path),
               "--task-data", f"piqa={DATA_DIR / 'piqa'}", "--limit", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| hellaswag | acc | absent |" in printed
    data = json.loads((model_dir / "eval" / "eval.json").read_text())
    assert data["tasks"]["hellaswag"]["model"]["status"] == "absent"
    assert data["tasks"]["piqa"]["model"]["status"] == "ok" and data["tasks"]["piqa"]["model"]["n"] == 2


def test_cli_rejects_unknown_task(model_dir, capsys):
    from lizardlm.cli import main

    assert main(["eval", "--model", str(model_dir), "--tasks", "piqa,bogus"]) == 2
    assert "unknown task(s) bogus" in capsys.readouterr().err


def test_cli_falls_back_to_the_shipped_samples(model_dir, tmp_path, capsys):
    from lizardlm.cli import main

    rc = main(["eval", "--model", str(model_dir), "--tasks", "wikitext2_valid,tinyshakespeare", "--data-dir", str(tmp_path),
               "--limit", "1", "--window", "64", "--out", str(tmp_path / "out"), "--no-plots", "--no-progress"])
    assert rc == 0
    data = json.loads((tmp_path / "out" / "eval.json").read_text())
    for task in ("wikitext2_valid", "tinyshakespeare"):
        entry = data["tasks"][task]["model"]
        assert entry["status"] == "ok" and entry["sample"] and "lizardlm/data/samples" in entry["path"]
    assert "small sample shipped with lizardlm" in capsys.readouterr().out


def test_cli_fails_when_no_task_ran(model_dir, tmp_path, capsys):
    from lizardlm.cli import main

    rc = main(["eval", "--model", str(model_dir), "--tasks", "wikitext2,hellaswag", "--data-dir", str(tmp_path),
               "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 1
    assert "no task ran" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--task-data", "--data-dir", "--out"])
def test_cli_checks_paths_before_loading(flag, model_dir, tmp_path, capsys, monkeypatch):
    from lizardlm.cli import eval as cli_eval
    from lizardlm.cli import main

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the paths were checked")

    monkeypatch.setattr(cli_eval, "load_model_for_eval", no_load)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = {"--task-data": ["--task-data", f"piqa={tmp_path / 'missing'}"], "--data-dir": ["--data-dir", str(tmp_path / "missing")],
           "--out": ["--out", str(blocker / "out")]}[flag]
    rc = main(["eval", "--model", str(model_dir), "--tasks", "piqa", *bad, "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("lizardlm: error:") and len(err.strip().splitlines()) == 1


def test_cli_inference_knobs_on_a_lizard_model_and_refused_elsewhere(model_dir, tmp_path, capsys):
    import lizardlm
    from lizardlm.cli import main

    tok = tiny_tokenizer()
    lizard_dir, write_dir, lolcats_dir = tmp_path / "lizard", tmp_path / "write", tmp_path / "lolcats"
    for path, config in ((lizard_dir, {"write_gate": "none"}), (write_dir, {"write_gate": "head"}),
                         (lolcats_dir, {"mode": "lolcats"})):
        lizardlm.convert(tiny_llama(len(tok)), lizardlm.LizardConfig(window_size=16, **config)).save_pretrained(path)
        tok.save_pretrained(path)
    argv = ["--tasks", "passkey", "--passkey-lengths", "128", "--passkey-trials", "1", "--no-progress", "--no-plots"]
    assert main(["eval", "--model", str(lizard_dir), "--decay-scale", "0.5", "--out", str(tmp_path / "a"), *argv]) == 0
    assert json.loads((tmp_path / "a" / "eval.json").read_text())["models"]["model"]["decay_scale"] == 0.5
    assert json.loads((lizard_dir / "config.json").read_text())["lizard"]["decay_scale"] == 1.0  # the saved model untouched
    assert main(["eval", "--model", str(write_dir), "--write-contrast", "2", "--out", str(tmp_path / "w"), *argv]) == 0
    assert json.loads((tmp_path / "w" / "eval.json").read_text())["models"]["model"]["write_contrast"] == 2.0
    assert main(["eval", "--model", str(lolcats_dir), "--read-sharpness", "2", "--out", str(tmp_path / "r"), *argv]) == 0
    assert json.loads((tmp_path / "r" / "eval.json").read_text())["models"]["model"]["read_sharpness"] == 2.0
    capsys.readouterr()
    for model, knob, says in ((model_dir, ["--decay-scale", "0.5"], "is not a Lizard model (it has no decay to scale)"),
                              (lizard_dir, ["--decay-scale", "0"], "decay_scale must be a finite number > 0, got 0.0"),
                              (lolcats_dir, ["--decay-scale", "0.5"], "decay_scale stretches the decay gate's half-lives"),
                              (model_dir, ["--write-contrast", "2"], "is not a Lizard model (it has no write gate)"),
                              (lizard_dir, ["--write-contrast", "2"], "write_contrast sharpens the write gate: it needs "
                                                                      "write_gate 'head'"),
                              (model_dir, ["--read-sharpness", "2"], "is not a Lizard model (it has no feature map)"),
                              (lizard_dir, ["--read-sharpness", "-1"], "read_sharpness must be a finite number > 0")):
        assert main(["eval", "--model", str(model), *knob, "--out", str(tmp_path / "b"), *argv]) == 2
        assert says in capsys.readouterr().err.strip().splitlines()[-1]
    # generate takes it too: after --convert, a converted teacher has a decay to scale
    gen = ["generate", "--prompt", "Hello", "--max-new-tokens", "2", "--raw", "--decay-scale", "0.5"]
    assert main([*gen, "--model", str(lizard_dir)]) == 0
    assert main([*gen, "--model", str(model_dir)]) == 2
    assert "is not a Lizard model (it has no decay to scale)" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main([*gen, "--model", str(model_dir), "--convert"]) == 0


def test_cli_longppl_context_gives_the_sliding_reference(model_dir, tmp_path, books):
    """``--longppl-context`` makes the long-document perplexity a fixed-context reference: the held-out
    books' curve of :func:`~lizardlm.eval.longppl.longppl_eval` with that context, recorded in the curve."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lizardlm.cli import main
    from lizardlm.data.sources import held_out_split, load_documents
    from lizardlm.eval.longppl import longppl_eval

    out = tmp_path / "out"
    assert main(["eval", "--model", str(model_dir), "--tasks", "longppl", "--task-data", f"long-docs={books}",
                 "--longppl-len", "600", "--longppl-windows", "1", "--longppl-context", "256", "--out", str(out),
                 "--no-progress", "--no-plots"]) == 0
    curve = json.loads((out / "eval.json").read_text())["tasks"]["longppl"]["model"]["curve"]
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    texts = [d.text for d in held_out_split(load_documents(str(books)), "eval")]
    ref = longppl_eval(model, tok, texts, seq_len=600, max_windows=1, context=256, progress_bar=False)
    assert curve["context"] == 256 and curve["ppl"] == pytest.approx(ref["ppl"], rel=1e-4)
    whole = longppl_eval(model, tok, texts, seq_len=600, max_windows=1, progress_bar=False)
    assert curve["ppl"][-1] != pytest.approx(whole["ppl"][-1], rel=1e-6)  # past 256 tokens the context is cut


def test_cli_longppl_data_reads_a_corpus_as_one_text_or_refuses_in_one_line(model_dir, tmp_path, capsys):
    """``--longppl-data tinyshakespeare`` reads the data directory's file as one text in consecutive
    windows (recorded in the curve); a file too short for one window or a missing one fails the task in one
    line and exits 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lizardlm.cli import main
    from lizardlm.eval.longppl import longppl_eval

    text = (Path(__file__).parent / "fixtures" / "wikitext_slice.txt").read_text(encoding="utf-8") * 2
    data = tmp_path / "data"
    (data / "tinyshakespeare").mkdir(parents=True)
    (data / "tinyshakespeare" / "input.txt").write_text(text, encoding="utf-8")
    args = ["eval", "--model", str(model_dir), "--tasks", "longppl", "--data-dir", str(data), "--longppl-len", "300",
            "--longppl-windows", "3", "--no-progress", "--no-plots"]
    assert main([*args, "--longppl-data", "tinyshakespeare", "--out", str(tmp_path / "a")]) == 0
    curve = json.loads((tmp_path / "a" / "eval.json").read_text())["tasks"]["longppl"]["model"]["curve"]
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    ref = longppl_eval(model, tok, [text], seq_len=300, max_windows=3, progress_bar=False)
    assert curve["data"] == "tinyshakespeare" and curve["windows"] == 3 and curve["ppl"] == pytest.approx(ref["ppl"], rel=1e-4)

    short = tmp_path / "short.txt"
    short.write_text("a few words", encoding="utf-8")
    for spec in (str(short), str(tmp_path / "missing.txt")):
        capsys.readouterr()
        assert main([*args, "--longppl-data", spec, "--out", str(tmp_path / "b")]) == 1
        entry = json.loads((tmp_path / "b" / "eval.json").read_text())["tasks"]["longppl"]["model"]
        assert entry["status"] == "error" and "\n" not in entry["reason"], entry
        assert ("300 tokens" if spec == str(short) else "missing.txt") in entry["reason"]
