"""Local lm-evaluation-harness task definitions that read benchmark files from disk (no hub).

Each task mirrors the prompt format of lm-eval 0.4's own YAML (``lm_eval/tasks/<name>/``):
the same ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target``, the same preprocessing and the
same metrics (``acc`` and, where lm-eval reports it, ``acc_norm`` = accuracy with each choice's
log-likelihood divided by its length in characters). Only the data source differs: instead of
``dataset_path: <hub id>`` the configs use ``custom_dataset``, a function that reads local files.

Expected layout under the data directory (``<data_dir>/<task>/``), one JSON object per line
(``.jsonl``; ``.json`` holding a list, and ``.parquet`` with the same columns, are read too, as
are the Hugging Face parquet exports ``<split>-00000-of-00001.parquet``)::

    piqa/validation.jsonl         goal, sol1, sol2, label (0/1)                      [lm-eval: validation]
    arc_easy/test.jsonl           question, choices {text: [...], label: [...]},     [lm-eval: test]
                                  answerKey (one of choices.label, e.g. "A" or "1")
    arc_challenge/test.jsonl      same columns as arc_easy                           [lm-eval: test]
    hellaswag/validation.jsonl    activity_label, ctx_a, ctx_b, endings (4), label   [lm-eval: validation]
                                  (lm-eval's preprocessing is applied: query =
                                  "<activity_label>: <ctx_a> <Ctx_b>", "[title]" -> ". ",
                                  other [brackets] removed)
    winogrande/validation.jsonl   sentence (with one "_"), option1, option2,         [lm-eval: validation,
                                  answer ("1"/"2")                                    winogrande_xl]
    mmlu/test.jsonl               question, subject, choices (4), answer (0-3 or     [lm-eval: test]
                                  "A"-"D")
    mmlu/dev.jsonl                same columns; the 5-shot examples (first 5 of the   [lm-eval: dev]
                                  same subject, lm-eval's ``first_n`` sampler)

These are the columns of the Hugging Face datasets lm-eval uses (``baber/piqa``,
``allenai/ai2_arc`` ARC-Easy/ARC-Challenge, ``Rowan/hellaswag``, ``allenai/winogrande``
winogrande_xl, ``cais/mmlu`` "all"), so ``ds.to_json("validation.jsonl")`` of the right split
produces a valid file. Alternative directory names are accepted (``ARC-Easy``,
``ai2_arc/ARC-Easy``, ``winogrande_xl``, ...; see :data:`DIR_ALIASES`). For MMLU the original
CSV release also works: ``mmlu/test/<subject>_test.csv`` and ``mmlu/dev/<subject>_dev.csv``
(columns question, A, B, C, D, answer letter; no header); per-subject ``.jsonl`` files in
``mmlu/test/`` and ``mmlu/dev/`` take the subject from the file name when the column is missing.

MMLU is run as one lm-eval task per subject present in the test file (``mmlu_<subject>``, with
lm-eval's description "The following are multiple choice questions (with answers) about
<subject>.") and aggregated like lm-eval's ``mmlu`` group (accuracy weighted by subject size).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from lizardlm.errors import DataError
from lizardlm.eval.data import DataAbsentError

# task -> (lm-eval split evaluated, other splits read when present)
EVAL_SPLIT = {
    "piqa": "validation",
    "arc_easy": "test",
    "arc_challenge": "test",
    "hellaswag": "validation",
    "winogrande": "validation",
    "mmlu": "test",
}
MC_TASKS = tuple(EVAL_SPLIT)

DIR_ALIASES = {
    "piqa": ["piqa", "baber/piqa"],
    "arc_easy": ["arc_easy", "ARC-Easy", "ai2_arc/ARC-Easy", "arc/ARC-Easy", "arc/arc_easy"],
    "arc_challenge": ["arc_challenge", "ARC-Challenge", "ai2_arc/ARC-Challenge", "arc/ARC-Challenge", "arc/arc_challenge"],
    "hellaswag": ["hellaswag", "Rowan/hellaswag"],
    "winogrande": ["winogrande", "winogrande_xl", "winogrande/winogrande_xl", "allenai/winogrande"],
    "mmlu": ["mmlu", "cais/mmlu", "mmlu/all"],
}

REQUIRED_COLUMNS = {
    "piqa": ("goal", "sol1", "sol2", "label"),
    "arc_easy": ("question", "choices", "answerKey"),
    "arc_challenge": ("question", "choices", "answerKey"),
    "hellaswag": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    "winogrande": ("sentence", "option1", "option2", "answer"),
    "mmlu": ("question", "choices", "answer", "subject"),
}

METRICS = {
    "piqa": ("acc", "acc_norm"),
    "arc_easy": ("acc", "acc_norm"),
    "arc_challenge": ("acc", "acc_norm"),
    "hellaswag": ("acc", "acc_norm"),
    "winogrande": ("acc",),
    "mmlu": ("acc",),
}

NUM_FEWSHOT = {"piqa": 0, "arc_easy": 0, "arc_challenge": 0, "hellaswag": 0, "winogrande": 0, "mmlu": 5}

REPORTED_METRIC = {"piqa": "acc", "arc_easy": "acc", "arc_challenge": "acc_norm", "hellaswag": "acc_norm",
                   "winogrande": "acc", "mmlu": "acc"}
"""The metric each benchmark is reported and averaged by (the study's, the issues' and the paper's choice)."""

ZERO_SHOT = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande")
"""The five zero-shot benchmarks whose mean the issue goals and the study compare (MMLU is 5-shot)."""

_EXTS = (".jsonl", ".json", ".parquet")


# ----------------------------------------------------------------------------- file discovery


def task_dir_candidates(task: str, data_dir: str | os.PathLike) -> list[Path]:
    root = Path(data_dir)
    return [root / a for a in DIR_ALIASES[task]]


def _split_files(d: Path, split: str) -> list[Path]:
    """Files holding ``split`` in directory ``d`` (single file, HF parquet shards or a per-subject dir)."""
    for ext in _EXTS:
        p = d / f"{split}{ext}"
        if p.is_file():
            return [p]
    shards = sorted(d.glob(f"{split}-*.parquet")) or sorted(d.glob(f"{split}-*.jsonl"))
    if shards:
        return shards
    sub = d / split
    if sub.is_dir():
        files = sorted(p for p in sub.iterdir() if p.suffix in (*_EXTS, ".csv"))
        if files:
            return files
    return []


def _mmlu_dev(d: Path) -> list[Path]:
    dev = _split_files(d, "dev")
    if not dev:
        raise DataAbsentError(f"mmlu: the dev split (5-shot examples) is absent, looked for {d / 'dev.jsonl'}", d / "dev.jsonl")
    return dev


def find_task_files(task: str, data_dir: str | os.PathLike, override: str | os.PathLike | None = None) -> dict[str, list[Path]]:
    """Files for each split of ``task``: ``{"test": [...], "dev": [...]}`` (eval split always present).

    ``override`` is a directory with the task's files, or a single file used as the evaluation
    split. Raises :class:`DataError` ("absent") naming the path(s) looked for.
    """
    if task not in EVAL_SPLIT:
        raise DataError(f"unknown benchmark {task!r}; known: {', '.join(MC_TASKS)}")
    split = EVAL_SPLIT[task]
    if override is not None:
        p = Path(override).expanduser()
        if p.is_file():
            out = {split: [p]}
            if task == "mmlu":
                out["dev"] = _mmlu_dev(p.parent)
            return out
        dirs = [p]
    else:
        dirs = task_dir_candidates(task, data_dir)
    for d in dirs:
        if not d.is_dir():
            continue
        files = _split_files(d, split)
        if files:
            out = {split: files}
            if task == "mmlu":
                out["dev"] = _mmlu_dev(d)
            return out
    looked = dirs[0] / f"{split}.jsonl"
    raise DataAbsentError(
        f"{task}: data absent, looked for {looked}" + (" (and aliases)" if len(dirs) > 1 else ""), looked
    )


# ----------------------------------------------------------------------------- reading


def _read_rows(path: Path, task: str) -> list[dict]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if path.suffix == ".csv":
            return _read_mmlu_csv(path)
        text = path.read_text(encoding="utf-8")
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any read failure is a data problem
        raise DataError(f"{task}: cannot read {path}: {err}") from err
    if path.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{task}: {path} is not valid JSON: {err}") from err
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):
            obj = obj["data"]
        if not isinstance(obj, list):
            raise DataError(f"{task}: {path} must hold a JSON list of objects")
        return obj
    rows = []
    for i, line in enumerate(text.split("\n"), 1):  # not splitlines(): strings may hold U+2028 etc.
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{task}: {path} line {i} is not valid JSON: {err}") from err
    return rows


def _read_mmlu_csv(path: Path) -> list[dict]:
    subject = re.sub(r"_(test|dev|val|validation)$", "", path.stem)
    rows = []
    with path.open(encoding="utf-8", newline="") as f:
        for rec in csv.reader(f):
            if len(rec) != 6:
                raise DataError(f"mmlu: {path}: expected 6 columns (question,A,B,C,D,answer), got {len(rec)}")
            ans = rec[5].strip().upper()
            if ans not in "ABCD" or len(ans) != 1:
                raise DataError(f"mmlu: {path}: answer must be A-D, got {rec[5]!r}")
            rows.append({"question": rec[0], "choices": rec[1:5], "answer": "ABCD".index(ans), "subject": subject})
    return rows


def _validate(task: str, rows: list[dict], path: Path) -> list[dict]:
    if not rows:
        raise DataError(f"{task}: {path} holds no examples")
    req = REQUIRED_COLUMNS[task]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{task}: {path} example {i} is not an object")
        missing = [c for c in req if c not in row]
        if missing:
            raise DataError(f"{task}: {path} example {i} lacks column(s) {', '.join(missing)} (needs {', '.join(req)})")
    return [_normalize(task, r, path, i) for i, r in enumerate(rows)]


def _normalize(task: str, row: dict, path: Path, i: int) -> dict:
    """Coerce label types that differ between exports (e.g. int vs str) and check them."""
    try:
        if task == "piqa":
            row = {**row, "label": int(row["label"])}
            assert row["label"] in (0, 1)
        elif task in ("arc_easy", "arc_challenge"):
            ch = row["choices"]
            assert isinstance(ch, dict) and "text" in ch and "label" in ch and len(ch["text"]) == len(ch["label"])
            labels = [str(x) for x in ch["label"]]
            row = {**row, "choices": {"text": list(ch["text"]), "label": labels}, "answerKey": str(row["answerKey"])}
            assert row["answerKey"] in labels
        elif task == "hellaswag":
            row = {**row, "label": str(int(row["label"]))}
            assert 0 <= int(row["label"]) < len(row["endings"])
        elif task == "winogrande":
            row = {**row, "answer": str(int(row["answer"]))}
            assert row["answer"] in ("1", "2") and "_" in row["sentence"]
        elif task == "mmlu":
            ans = row["answer"]
            if isinstance(ans, str) and len(ans.strip()) == 1 and ans.strip().upper() in "ABCD":
                ans = "ABCD".index(ans.strip().upper())
            row = {**row, "answer": int(ans), "choices": list(row["choices"])}
            assert len(row["choices"]) == 4 and 0 <= row["answer"] < 4
    except (AssertionError, ValueError, TypeError, KeyError) as err:
        raise DataError(f"{task}: {path} example {i} is malformed: {json.dumps(row, default=str)[:200]}") from err
    return row


def read_split(task: str, files: list[Path]) -> list[dict]:
    rows: list[dict] = []
    for f in files:
        part = _read_rows(f, task)
        if task == "mmlu" and part and isinstance(part[0], dict) and "subject" not in part[0]:
            subject = re.sub(r"_(test|dev|val|validation)$", "", f.stem)
            part = [{**r, "subject": subject} for r in part]
        rows.extend(_validate(task, part, f))
    return rows


def load_local_task_data(task: str, data_dir: str | os.PathLike, override: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """Read and validate all splits of ``task``; returns ``{split: rows}``."""
    files = find_task_files(task, data_dir, override)
    return {split: read_split(task, fs) for split, fs in files.items()}


# ----------------------------------------------------------------------------- lm-eval preprocessing
# copied from lm_eval/tasks/hellaswag/utils.py and lm_eval/tasks/winogrande/preprocess_winogrande.py


def _hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    # NOTE: Brackets are artifacts of the WikiHow dataset portion of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_process_docs(dataset):
    def _process_doc(doc):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": _hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_preprocess(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(_process_doc)


def winogrande_doc_to_text(doc):
    answer_to_num = {"1": 0, "2": 1}
    return answer_to_num[doc["answer"]]


def winogrande_doc_to_target(doc):
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc):
    idx = doc["sentence"].index("_")
    options = [doc["option1"], doc["option2"]]
    return [doc["sentence"][:idx] + opt for opt in options]


# ----------------------------------------------------------------------------- prompts
# Python forms of lm-eval's jinja templates, giving the same strings and ids (jinja renders a
# template per call, which dominated request building for 5-shot MMLU)


def piqa_doc_to_text(doc: dict) -> str:  # "Question: {{goal}}\nAnswer:"
    return f"Question: {doc['goal']}\nAnswer:"


def piqa_doc_to_choice(doc: dict) -> list:  # "{{[sol1, sol2]}}"
    return [doc["sol1"], doc["sol2"]]


def arc_doc_to_text(doc: dict) -> str:  # "Question: {{question}}\nAnswer:"
    return f"Question: {doc['question']}\nAnswer:"


def arc_doc_to_target(doc: dict) -> int:  # "{{choices.label.index(answerKey)}}"
    return doc["choices"]["label"].index(doc["answerKey"])


def arc_doc_to_choice(doc: dict) -> list:  # "{{choices.text}}"
    return doc["choices"]["text"]


def hellaswag_doc_to_text(doc: dict) -> str:  # "{{query}}"
    return doc["query"]


def hellaswag_doc_to_target(doc: dict) -> int:  # "{{label}}"
    return int(doc["label"])


def mmlu_doc_to_text(doc: dict) -> str:
    # "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"
    a, b, c, d = doc["choices"]
    return f"{doc['question'].strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"


# ----------------------------------------------------------------------------- configs


def _dataset_dict(splits: dict[str, list[dict]], **_ignored: Any):
    import datasets

    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


def _metric_list(task: str) -> list[dict]:
    return [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in METRICS[task]]


def _loader(splits: dict[str, list[dict]]) -> Callable:
    return functools.partial(_dataset_dict, splits)


def task_configs(task: str, data: dict[str, list[dict]]) -> list[dict]:
    """lm-eval task config dicts for ``task`` built on already-read local ``data`` ({split: rows})."""
    base = {"output_type": "multiple_choice", "metadata": {"version": 1.0, "source": "lizardlm local files"}}
    if task == "piqa":
        return [{
            **base, "task": "piqa", "custom_dataset": _loader(data),
            "validation_split": "validation",
            "doc_to_text": piqa_doc_to_text, "doc_to_target": "label",
            "doc_to_choice": piqa_doc_to_choice, "metric_list": _metric_list(task), "num_fewshot": 0,
        }]
    if task in ("arc_easy", "arc_challenge"):
        return [{
            **base, "task": task, "custom_dataset": _loader(data), "test_split": "test",
            "doc_to_text": arc_doc_to_text,
            "doc_to_target": arc_doc_to_target, "doc_to_choice": arc_doc_to_choice,
            "metric_list": _metric_list(task), "num_fewshot": 0,
        }]
    if task == "hellaswag":
        return [{
            **base, "task": "hellaswag", "custom_dataset": _loader(data), "validation_split": "validation",
            "process_docs": hellaswag_process_docs, "doc_to_text": hellaswag_doc_to_text,
            "doc_to_target": hellaswag_doc_to_target,
            "doc_to_choice": "choices", "metric_list": _metric_list(task), "num_fewshot": 0,
        }]
    if task == "winogrande":
        return [{
            **base, "task": "winogrande", "custom_dataset": _loader(data), "validation_split": "validation",
            "doc_to_text": winogrande_doc_to_text, "doc_to_target": winogrande_doc_to_target,
            "doc_to_choice": winogrande_doc_to_choice, "metric_list": _metric_list(task), "num_fewshot": 0,
        }]
    if task == "mmlu":
        return mmlu_configs(data)
    raise DataError(f"unknown benchmark {task!r}")


def mmlu_subjects(data: dict[str, list[dict]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in data["test"]:
        seen.setdefault(str(r["subject"]), None)
    return list(seen)


def mmlu_configs(data: dict[str, list[dict]], num_fewshot: int = 5) -> list[dict]:
    dev = data.get("dev")
    if not dev:
        raise DataError("mmlu: the dev split (5-shot examples) is absent; put it next to the test file as dev.jsonl")
    out = []
    for subject in mmlu_subjects(data):
        test_rows = [r for r in data["test"] if r["subject"] == subject]
        dev_rows = [r for r in dev if r["subject"] == subject]
        shots = min(num_fewshot, len(dev_rows))
        cfg = {
            "task": f"mmlu_{subject}",
            "task_alias": subject,
            "custom_dataset": _loader({"test": test_rows, "dev": dev_rows} if dev_rows else {"test": test_rows}),
            "output_type": "multiple_choice",
            "test_split": "test",
            "description": f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n",
            "doc_to_text": mmlu_doc_to_text,
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "answer",
            "metric_list": _metric_list("mmlu"),
            "num_fewshot": shots,
            "metadata": {"version": 1.0, "source": "lizardlm local files"},
        }
        if dev_rows:
            cfg["fewshot_split"] = "dev"
            cfg["fewshot_config"] = {"sampler": "first_n"}
        out.append(cfg)
    return out
