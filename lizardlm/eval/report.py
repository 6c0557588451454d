"""Run a set of evaluation tasks on one or more models and write ``eval.json``, ``eval.md`` and plots.

``evaluate({"teacher": (model, tok), "student": (model2, tok2)}, ["wikitext2", "piqa", "passkey"])``
returns (and, given ``out_dir``, writes) a dict::

    {"schema": "lizardlm.eval/1", "meta": {versions, device, settings, limits, timings},
     "models": {name: {class, parameters, dtype, device, ...}}, "reference": "teacher",
     "tasks": {task: {model_name: entry}}}

Every entry has ``status``: ``"ok"`` (with ``metrics``), ``"absent"`` (benchmark files not there;
``path`` says what was looked for), ``"skipped (...)"`` or ``"error"`` (with ``reason``). Absent or
skipped results are never reported as zero.

The markdown table has one row per task/metric, one column per model and, for each model other
than the reference (the teacher), a recovery column: student/teacher x 100 for higher-is-better
metrics (accuracies) and teacher/student x 100 for lower-is-better ones (perplexity), so 100% is
parity and less is worse in both cases.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from lizardlm.config import INFERENCE_KNOBS
from lizardlm.errors import DataError, LizardError
from lizardlm.eval._utils import resolve_batch_size
from lizardlm.eval.data import TEXT_CORPORA, DataAbsentError, is_sample, read_text, resolve_data_dir, text_corpus_path
from lizardlm.eval.paired import paired_lines
from lizardlm.eval.tasks import MC_TASKS, METRICS

log = logging.getLogger(__name__)

PARTIAL = "eval.partial.json"
"""Where ``lizardlm eval`` keeps the results so far, beside ``eval.json`` (removed once that is written)."""

PPL_TASKS = ("wikitext2", "wikitext2_valid", "tinyshakespeare")
DEFAULT_TASKS = ("wikitext2", *MC_TASKS, "mqar", "passkey", "position_ppl")
LONG_TASKS = ("passkey_train", "ruler", "longppl", "diagnostics")
ALL_TASKS = (*PPL_TASKS, *MC_TASKS, "mqar", "passkey", "position_ppl", *LONG_TASKS)
SCHEMA = "lizardlm.eval/1"

_PASSKEY_SETTINGS = ("passkey_lengths", "passkey_trials", "passkey_time_budget_s", "passkey_depths")
TASK_SETTINGS: dict[str, tuple[str, ...]] = {
    **{t: ("ppl_window",) for t in PPL_TASKS},
    "position_ppl": ("position_corpus", "position_seq_len", "position_bucket", "position_windows"),
    "mqar": ("mqar_pairs", "mqar_lengths", "mqar_length_pairs", "mqar_n", "mqar_format"),
    "passkey": _PASSKEY_SETTINGS,
    "passkey_train": (*_PASSKEY_SETTINGS, "passkey_keys"),
    "ruler": ("ruler_lengths", "ruler_trials"),
    "longppl": ("longppl_len", "longppl_windows", "longppl_context", "longppl_data"),
    "diagnostics": ("diagnostics_lengths", "diagnostics_trials", "passkey_depths"),
}
"""The :class:`EvalConfig` fields that only some tasks read, by task; every other field (the data, ``limit``,
``seed``, ``chunk``, ``lm_backend``) may change any task's numbers. ``--resume`` compares a field here only
where a task that reads it is kept."""


@dataclass
class EvalConfig:
    """Settings of :func:`evaluate` (``limit`` caps examples per task: perplexity windows, lm-eval
    documents per task/MMLU subject, MQAR prompts per setting, passkey trials per length).
    ``batch_size="auto"``: for the multiple-choice tasks batches filled up to a token and memory
    budget (``lm_backend="fast"``) or lm-eval's own search on CUDA (``"hflm"``); for perplexity,
    MQAR, passkey and RULER a start size by device (:func:`lizardlm.eval._utils.resolve_batch_size`)."""

    data_dir: str | None = None
    data_paths: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    batch_size: int | str = 1
    seed: int = 0
    ppl_window: int = 1024
    position_corpus: str = "wikitext2"
    position_seq_len: int = 4096
    position_bucket: int = 256
    position_windows: int = 4
    mqar_pairs: tuple[int, ...] = (2, 4, 8, 16, 32)
    mqar_lengths: tuple[int, ...] = (128, 256, 512, 1024)
    mqar_length_pairs: int = 8
    mqar_n: int = 20
    mqar_format: str = "lines"
    passkey_lengths: tuple[int, ...] = (1024, 2048)
    passkey_trials: int = 5
    passkey_time_budget_s: float | None = None
    passkey_depths: int | None = None
    passkey_keys: int = 5
    chunk: int = 2048
    ruler_lengths: tuple[int, ...] = (1024, 2048)
    ruler_trials: int = 20
    longppl_len: int = 32768
    longppl_windows: int = 4
    longppl_context: int | None = None
    longppl_data: str | None = None
    diagnostics_lengths: tuple[int, ...] = (1024,)
    diagnostics_trials: int = 8
    progress: bool = True
    lm_backend: str = "fast"


# ----------------------------------------------------------------------------- running


def _capped(n: int, limit: int | None) -> int:
    return n if limit is None else max(1, min(n, int(limit)))


def _run_ppl(task: str, model, tok, cfg: EvalConfig) -> dict:
    from lizardlm.eval.perplexity import perplexity

    path = text_corpus_path(task, cfg.data_dir, cfg.data_paths.get(task))
    r = perplexity(model, tok, read_text(path), window=cfg.ppl_window,
                   batch_size=resolve_batch_size(cfg.batch_size, model), progress=cfg.progress, max_windows=cfg.limit)
    return {"status": "ok", "metrics": {"ppl": r["ppl"], "nll": r["nll"]}, "tokens": r["tokens"],
            "windows": r["windows"], "window": r["window"], "path": str(path), "sample": is_sample(path)}


def _run_position(model, tok, cfg: EvalConfig) -> dict:
    from lizardlm.eval.perplexity import perplexity_by_position

    path = text_corpus_path(cfg.position_corpus, cfg.data_dir, cfg.data_paths.get(cfg.position_corpus))
    r = perplexity_by_position(model, tok, read_text(path), cfg.position_seq_len, cfg.position_bucket,
                               max_windows=_capped(cfg.position_windows, cfg.limit), batch_size=1, progress=cfg.progress)
    metrics = {
        f"ppl @ pos {r['bucket_start'][0]}-{r['bucket_end'][0]}": r["ppl"][0],
        f"ppl @ pos {r['bucket_start'][-1]}-{r['bucket_end'][-1]}": r["ppl"][-1],
    }
    return {"status": "ok", "metrics": metrics, "curve": r, "path": str(path), "corpus": cfg.position_corpus}


def _run_mqar(model, tok, cfg: EvalConfig) -> dict:
    from lizardlm.eval.mqar import mqar_eval

    r = mqar_eval(model, tok, pairs=cfg.mqar_pairs, lengths=cfg.mqar_lengths, length_pairs=cfg.mqar_length_pairs,
                  n=_capped(cfg.mqar_n, cfg.limit), fmt=cfg.mqar_format, seed=cfg.seed,
                  batch_size=resolve_batch_size(cfg.batch_size, model), progress=cfg.progress)
    metrics: dict[str, Any] = {"acc (mean)": r["mean_acc"]}
    status: dict[str, str] = {}
    for rec in r["by_pairs"]:
        k = f"acc @ {rec['pairs']} pairs"
        metrics[k] = rec.get("acc")
        if rec["status"] != "ok":
            status[k] = rec["status"]
    for rec in r["by_length"]:
        k = f"acc @ {rec['seq_len']} tok ({rec['pairs']} pairs)"
        metrics[k] = rec.get("acc")
        if rec["status"] != "ok":
            status[k] = rec["status"]
    out = {"status": "ok", "metrics": metrics, "details": r}
    if status:
        out["metric_status"] = status
    return out


def held_out_books(cfg: EvalConfig) -> list:
    """The held-out tenth of the long-docs books (never retrieval training filler)."""
    from lizardlm.data.sources import held_out_split, load_documents

    path = resolve_data_dir(cfg.data_dir) / "long-docs" / "gutenberg_books.jsonl"
    path = Path(cfg.data_paths.get("long-docs", path))
    if not path.is_file():
        raise DataAbsentError(f"long-docs: data absent, looked for {path}", path)
    return held_out_split(load_documents(str(path)), "eval")


LONGPPL_BOOKS = "long-docs@eval"
"""What ``longppl`` reads unless ``EvalConfig.longppl_data`` names other text: the held-out books."""


def longppl_texts(cfg: EvalConfig) -> list[str]:
    """The texts of ``longppl``: the held-out books (``longppl_data`` None); a perplexity corpus by name
    (``tinyshakespeare``, ``wikitext2``, ``wikitext2_valid``: its whole file, from the data directory, as one
    text read in consecutive windows); or any ``--data`` spec (a file, ``hf:...``), its documents as that
    spec reads them."""
    from lizardlm.data.sources import load_documents

    if cfg.longppl_data is None:
        return [doc.text for doc in held_out_books(cfg)]
    if cfg.longppl_data in TEXT_CORPORA:
        return [read_text(text_corpus_path(cfg.longppl_data, cfg.data_dir))]
    return [doc.text for doc in load_documents(cfg.longppl_data)]


def _run_passkey(model, tok, cfg: EvalConfig, template: str = "eval") -> dict:
    from lizardlm.eval.passkey import passkey_eval

    filler = None
    if template == "train":
        from lizardlm.data.retrieval import FillerPool

        filler = FillerPool(held_out_books(cfg), tok)
    r = passkey_eval(model, tok, lengths=cfg.passkey_lengths, trials=_capped(cfg.passkey_trials, cfg.limit),
                     seed=cfg.seed, time_budget_s=cfg.passkey_time_budget_s, progress=cfg.progress,
                     depths=cfg.passkey_depths, batch_size=resolve_batch_size(cfg.batch_size, model),
                     template=template, filler=filler, chunk=cfg.chunk, keys=cfg.passkey_keys)
    metrics: dict[str, Any] = {}
    status: dict[str, str] = {}
    for rec in r["lengths"]:
        k = f"acc @ {rec['length']}"
        metrics[k] = rec.get("acc")
        if rec.get("acc") is None:
            status[k] = rec["status"]
    for rec in r["lengths"]:  # after the accuracies: where a wrong answer went wrong
        if rec.get("acc") is not None:
            metrics[f"first digit @ {rec['length']}"] = rec["first_digit_acc"]
            metrics[f"answer nll @ {rec['length']}"] = rec["answer_nll"]
            if rec.get("repeated_digit_acc") is not None:
                metrics[f"keys repeating a digit @ {rec['length']}"] = rec["repeated_digit_acc"]
            if rec.get("beyond_window_acc") is not None:
                metrics[f"needles beyond the window @ {rec['length']}"] = rec["beyond_window_acc"]
            if "number_rate" in rec:
                metrics[f"answers holding a number @ {rec['length']}"] = rec["number_rate"]
                if rec["number_acc"] is not None:
                    metrics[f"exact match of number answers @ {rec['length']}"] = rec["number_acc"]
            if template == "train":
                metrics[f"another passkey @ {rec['length']}"] = rec["other_key_rate"]
    out = {"status": "ok", "metrics": metrics, "details": r}
    if status:
        out["metric_status"] = status
    return out


def _run_ruler(model, tok, cfg: EvalConfig) -> dict:
    from lizardlm.eval.ruler import ruler_eval

    r = ruler_eval(model, tok, lengths=cfg.ruler_lengths, trials=_capped(cfg.ruler_trials, cfg.limit), seed=cfg.seed,
                   batch_size=resolve_batch_size(cfg.batch_size, model), chunk=cfg.chunk, progress_bar=cfg.progress)
    metrics = {f"score @ {L}": v for L, v in r["mean"].items()}
    status = {k: "skipped (out of memory or too short)" for k, v in metrics.items() if v is None}
    out = {"status": "ok", "metrics": metrics, "details": r}
    if status:
        out["metric_status"] = status
    return out


def _run_longppl(model, tok, cfg: EvalConfig) -> dict:
    from lizardlm.eval.longppl import longppl_eval
    from lizardlm.eval._utils import free_memory, is_oom

    data = cfg.longppl_data or LONGPPL_BOOKS
    try:
        r = longppl_eval(model, tok, longppl_texts(cfg), seq_len=cfg.longppl_len,
                         max_windows=_capped(cfg.longppl_windows, cfg.limit), chunk=cfg.chunk,
                         progress_bar=cfg.progress, context=cfg.longppl_context)
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err):
            raise
        free_memory()
        return {"status": "skipped (out of memory)"}
    except ValueError as err:  # no text as long as the window
        raise DataError(f"longppl ({data}): {err}") from None
    r["data"] = data
    metrics = {f"ppl @ pos {s}-{e}": p for s, e, p in zip(r["bucket_start"], r["bucket_end"], r["ppl"])}
    return {"status": "ok", "metrics": metrics, "curve": r}


def _run_diagnostics(model, tok, cfg: EvalConfig) -> dict:
    from lizardlm.eval.diagnostics import diagnostics_eval, summary_metrics

    r = diagnostics_eval(model, tok, lengths=cfg.diagnostics_lengths, trials=_capped(cfg.diagnostics_trials, cfg.limit),
                         depths=cfg.passkey_depths or 4, batch_size=resolve_batch_size(cfg.batch_size, model), seed=cfg.seed,
                         progress_bar=cfg.progress)
    if r["status"] != "ok":
        return {"status": r["status"]}
    return {"status": "ok", "metrics": summary_metrics(r), "details": r}


def _model_info(model: Any, source: str | None = None) -> dict:
    info: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__name__}"}
    if source:
        info["source"] = source
    try:
        params = list(model.parameters())
        info["parameters"] = int(sum(p.numel() for p in params))
        if params:
            info["dtype"] = str(params[0].dtype).replace("torch.", "")
            info["device"] = str(params[0].device)
    except Exception:  # noqa: BLE001 - stubs
        pass
    cfg = getattr(model, "config", None)
    if isinstance(getattr(cfg, "lizard", None), dict):
        info.update({k: cfg.lizard.get(k, 1.0) for k in INFERENCE_KNOBS}, window_size=cfg.lizard.get("window_size"))
    for k in ("model_type", "max_position_embeddings", "num_hidden_layers", "hidden_size", "_name_or_path"):
        v = getattr(cfg, k, None)
        if isinstance(v, (str, int, float)) and v != "":
            info[k.lstrip("_")] = v
    return info


def _meta(cfg: EvalConfig, tasks: Sequence[str]) -> dict:
    import importlib.metadata as md

    import torch

    def ver(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    dev = {"cuda_available": torch.cuda.is_available(), "torch_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine()}
    if torch.cuda.is_available():
        dev["cuda_device"] = torch.cuda.get_device_name(0)
    settings = dataclasses.asdict(cfg)
    settings.pop("progress", None)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tasks": list(tasks),
        "versions": {"python": sys.version.split()[0], **{p: ver(p) for p in
                     ("lizardlm", "torch", "transformers", "lm_eval", "datasets", "peft", "accelerate", "matplotlib")}},
        "device": dev,
        "data_dir": str(resolve_data_dir(cfg.data_dir)),
        "limit": cfg.limit,
        "settings": settings,
    }


def _fingerprint(model: Any) -> dict | None:
    """:func:`~lizardlm.train.fingerprint.model_fingerprint` of a module (None for anything else)."""
    import torch

    from lizardlm.train.fingerprint import model_fingerprint

    return model_fingerprint(model) if isinstance(model, torch.nn.Module) else None


def _kept_entries(partial: Path, results: dict, fingerprints: dict[str, dict | None],
                  named: Sequence[str]) -> tuple[Path, dict[str, dict[str, dict]]]:
    """The file read, and ``{task: {model: entry}}`` that an earlier evaluation saved there and this one
    may keep: a cut one's ``partial``, else the finished ``eval.json`` beside it; the same models (source
    and weights) and finished entries only (``ok``, ``absent``), so a task that failed runs again. Tasks
    not in ``named`` (this evaluation's) are kept too. A setting of :data:`TASK_SETTINGS` that differs from the
    file's runs again the named tasks that read it, and stays as the file had it in ``results``' settings
    where only kept tasks read it; any other setting that differs (the batch size aside: it changes no
    number), or one that a kept task and a task run now both read, is a :class:`LizardError`."""
    from lizardlm.train.fingerprint import same_model

    if not partial.exists():
        partial = partial.with_name("eval.json")
        if not partial.exists():
            return partial, {}
    try:
        saved = json.loads(partial.read_text(encoding="utf-8"))
        saved_settings, saved_models, saved_tasks = saved["meta"]["settings"], saved["models"], saved["tasks"]
        finished = {task: {name: e for name, e in per.items()
                           if name in results["models"] and e.get("status") in ("ok", "absent")}
                    for task, per in saved_tasks.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise LizardError(f"--resume: {partial} is not a readable evaluation ({err}); delete it to start over") from None
    finished = {task: per for task, per in finished.items() if per}
    ours = results["meta"]["settings"]
    mine = _jsonable(ours)
    changed = sorted(k for k in mine.keys() | saved_settings.keys()
                     if k != "batch_size" and mine.get(k) != saved_settings.get(k))
    named = set(named)
    rerun = {t for t in named & finished.keys() if set(TASK_SETTINGS.get(t, ())) & set(changed)}
    kept = {t: per for t, per in finished.items() if t not in rerun}
    refused = []
    for k in changed:
        readers = {t for t, keys in TASK_SETTINGS.items() if k in keys}
        old_readers = readers & (kept.keys() - named)  # kept tasks that this call does not run
        if not readers or (old_readers and readers & named):
            refused.append(k)
        elif old_readers:
            ours[k] = saved_settings.get(k)  # the value the kept tasks were made with
    for name, info in results["models"].items():
        theirs = saved_models.get(name, {})
        fp, saved_fp = fingerprints.get(name), theirs.get("fingerprint")
        knobs_differ = any(theirs.get(k, 1.0) != info.get(k, 1.0) for k in INFERENCE_KNOBS) or (  # before a knob: 1
            theirs.get("window_size", info.get("window_size")) != info.get("window_size"))  # before the window's: as saved
        if theirs.get("source") != info.get("source") or knobs_differ or (
                (fp is None) != (saved_fp is None)) or (fp is not None and not same_model(fp, saved_fp)):
            refused.append(f"model {name}")
    if refused:
        raise LizardError(f"--resume: {partial} was made with other {', '.join(refused)}; "
                          "drop --resume to start over")
    return partial, kept


def evaluate(
    models: dict[str, tuple[Any, Any]],
    tasks: Iterable[str] | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    config: EvalConfig | None = None,
    reference: str | None = None,
    sources: dict[str, str] | None = None,
    plots: bool = True,
    partial: str | os.PathLike | None = None,
    resume: bool = False,
    **overrides: Any,
) -> dict:
    """Evaluate every model on every task; returns the results dict and, with ``out_dir``, writes
    ``eval.json``, ``eval.md`` and the PNG plots there.

    ``models`` maps a column name to an already loaded ``(model, tokenizer)``. ``reference`` is the
    model the others are compared with (default: ``"teacher"`` if present, else the first).
    ``config`` / keyword ``overrides`` are :class:`EvalConfig` fields. With ``partial`` (a path), the
    results so far are written there after every task, so a cut evaluation keeps what it finished;
    ``resume`` keeps the finished tasks of the file already there, else of the finished ``eval.json``
    beside it (same weights and shared settings, else a :class:`LizardError`; :data:`TASK_SETTINGS` for a
    task's own), runs only the rest, and keeps that file's tasks this call does not name, so evaluations
    of one run in several calls add up.
    """
    if not models:
        raise ValueError("evaluate() needs at least one model")
    cfg = dataclasses.replace(config or EvalConfig(), **overrides)
    tasks = list(dict.fromkeys(tasks or DEFAULT_TASKS))
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise LizardError(f"unknown eval task(s): {', '.join(unknown)}; known: {', '.join(ALL_TASKS)}")
    if reference is None:
        reference = "teacher" if "teacher" in models else next(iter(models))
    sources = sources or {}
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "meta": _meta(cfg, tasks),
        "models": {name: _model_info(m, sources.get(name)) for name, (m, _) in models.items()},
        "reference": reference,
        "tasks": {t: {} for t in tasks},
    }
    timings: dict[str, dict[str, float]] = {}
    results["meta"]["seconds"] = timings
    partial = Path(partial) if partial is not None else None

    def note_kept(name: str, label: str) -> None:  # in meta: what this evaluation took from ``source``
        results["meta"].setdefault("kept", {"from": str(source)}).setdefault(name, []).append(label)

    if partial is not None:
        from lizardlm.train.checkpoint import atomic_write_text

        fingerprints = {name: _fingerprint(m) for name, (m, _) in models.items()}
        for name, fp in fingerprints.items():
            if fp is not None:
                results["models"][name]["fingerprint"] = fp
        source, kept = _kept_entries(partial, results, fingerprints, tasks) if resume else (partial, {})
        earlier = {task: per for task, per in kept.items() if task not in results["tasks"]}
        if earlier:  # an earlier evaluation's other tasks stay in this one's output, first
            results["tasks"] = {**earlier, **results["tasks"]}
            results["meta"]["tasks"] = list(results["tasks"])
            for task, per in earlier.items():
                for name in per:
                    note_kept(name, task)
    else:
        kept = {}
    t_start = time.perf_counter()
    mc = [t for t in tasks if t in MC_TASKS]
    for name, (model, tok) in models.items():
        if hasattr(model, "eval"):
            model.eval()
        for task in tasks:
            if task in MC_TASKS and task != mc[0]:
                continue  # all multiple-choice tasks run in one lm-eval call, at the first one
            names = mc if task in MC_TASKS else [task]
            label = ",".join(names)
            if all(name in kept.get(t, {}) for t in names):
                for t in names:
                    results["tasks"][t][name] = kept[t][name]
                _say(cfg, f"[{name}] {label}: kept from {source}")
                note_kept(name, label)
                continue
            t0 = time.perf_counter()
            _say(cfg, f"[{name}] {label} ...")
            if task in MC_TASKS:
                entries = _guard(lambda: _run_mc(mc, model, tok, cfg), mc)
                for t in mc:
                    results["tasks"][t][name] = entries[t]
            else:
                results["tasks"][task][name] = _guard(lambda: _run_one(task, model, tok, cfg), [task])[task]
            timings.setdefault(name, {})[label] = round(time.perf_counter() - t0, 2)
            if partial is not None:
                atomic_write_text(partial, json.dumps(_jsonable(results), indent=2) + "\n")
    results["meta"]["total_seconds"] = round(time.perf_counter() - t_start, 2)
    if out_dir is not None:
        write_outputs(results, out_dir, plots=plots)
    return results


def _say(cfg: EvalConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


def _run_mc(mc: list[str], model, tok, cfg: EvalConfig) -> dict[str, dict]:
    from lizardlm.eval.harness import run_harness

    return run_harness(model, tok, mc, data_dir=cfg.data_dir, data_paths=cfg.data_paths, limit=cfg.limit,
                       batch_size=cfg.batch_size, seed=cfg.seed, lm_backend=cfg.lm_backend)


def _run_one(task: str, model, tok, cfg: EvalConfig) -> dict[str, dict]:
    if task in PPL_TASKS:
        return {task: _run_ppl(task, model, tok, cfg)}
    if task == "position_ppl":
        return {task: _run_position(model, tok, cfg)}
    if task == "mqar":
        return {task: _run_mqar(model, tok, cfg)}
    if task == "passkey":
        return {task: _run_passkey(model, tok, cfg)}
    if task == "passkey_train":
        return {task: _run_passkey(model, tok, cfg, template="train")}
    if task == "ruler":
        return {task: _run_ruler(model, tok, cfg)}
    if task == "longppl":
        return {task: _run_longppl(model, tok, cfg)}
    if task == "diagnostics":
        return {task: _run_diagnostics(model, tok, cfg)}
    raise LizardError(f"unknown eval task {task!r}")


def _guard(fn: Callable[[], dict[str, dict]], names: list[str]) -> dict[str, dict]:
    """Run ``fn``; absent data and failures become entries instead of exceptions."""
    try:
        return fn()
    except DataAbsentError as err:
        return {n: {"status": "absent", "path": err.path, "reason": str(err)} for n in names}
    except DataError as err:
        return {n: {"status": "error", "reason": str(err)} for n in names}
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - one failing task must not lose the others
        log.error("%s failed:\n%s", ",".join(names), traceback.format_exc())
        print(f"lizardlm eval: {','.join(names)} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return {n: {"status": "error", "reason": f"{type(err).__name__}: {err}"} for n in names}


# ----------------------------------------------------------------------------- table


def lower_is_better(metric: str) -> bool:
    return metric.startswith(("ppl", "nll"))


def _default_metrics(task: str) -> list[str]:
    if task in MC_TASKS:
        return list(METRICS[task])
    if task in PPL_TASKS:
        return ["ppl"]
    return ["acc (mean)"] if task == "mqar" else ["acc"] if task.startswith("passkey") else ["score"] if task == "ruler" else ["ppl"]


def _rows(results: dict) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for task, per_model in results["tasks"].items():
        names: list[str] = []
        for entry in per_model.values():
            for k in entry.get("metrics", {}):
                if k.endswith("_stderr") or (task in PPL_TASKS and k == "nll"):
                    continue
                if k not in names:
                    names.append(k)
        for k in names or _default_metrics(task):
            rows.append((task, k))
    return rows


def _fmt(v: float, metric: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.2f}" if lower_is_better(metric) else f"{v:.4f}"


def _cell(entry: dict | None, metric: str) -> tuple[str, float | None]:
    if entry is None:
        return "—", None
    status = entry.get("status", "")
    if status != "ok":
        word = "absent" if status == "absent" else ("skipped" if status.startswith("skipped") else "error")
        return word, None
    if metric in entry.get("metric_status", {}):
        st = entry["metric_status"][metric]
        return ("skipped" if st.startswith("skipped") else st), None
    v = entry.get("metrics", {}).get(metric)
    if v is None:
        return "n/a", None
    s = _fmt(v, metric)
    se = entry["metrics"].get(f"{metric}_stderr")
    if isinstance(se, (int, float)) and not math.isnan(se):
        s += f" ± {se:.4f}"
    return s, float(v)


def recovery(student: float | None, teacher: float | None, metric: str) -> float | None:
    """100 = parity; below 100 = the student is worse (see module docstring)."""
    if student is None or teacher is None:
        return None
    if lower_is_better(metric):
        return 100.0 * teacher / student if student else None
    return 100.0 * student / teacher if teacher else None


def markdown_table(results: dict) -> str:
    names = list(results["models"])
    ref = results.get("reference") or names[0]
    others = [n for n in names if n != ref]
    header = ["task", "metric", *names] + [f"recovery % ({n})" for n in others]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for task, metric in _rows(results):
        per_model = results["tasks"][task]
        cells, vals = [], {}
        for n in names:
            c, v = _cell(per_model.get(n), metric)
            cells.append(c)
            vals[n] = v
        for n in others:
            r = recovery(vals[n], vals[ref], metric)
            cells.append(f"{r:.1f}" if r is not None else "—")
        lines.append("| " + " | ".join([task, metric, *cells]) + " |")
    notes = []
    for task, per_model in results["tasks"].items():
        for n, e in per_model.items():
            st = e.get("status", "")
            if st == "absent":
                notes.append(f"- {task} ({n}): absent, looked for `{e.get('path')}`")
            elif st != "ok":
                notes.append(f"- {task} ({n}): {st}: {e.get('reason', '')}")
            if e.get("sample"):
                notes.append(f"- {task}: the small sample shipped with lizardlm (`{e.get('path')}`), not the full set")
            for m, s in e.get("metric_status", {}).items():
                notes.append(f"- {task} {m} ({n}): {s}")
    # one note per distinct absent path is enough
    notes = list(dict.fromkeys(notes))
    out = "\n".join(lines)
    if others:
        out += ("\n\nRecovery % = student/teacher x 100 for accuracies and teacher/student x 100 for perplexity "
                f"(100 = parity with `{ref}`).")
        paired = [line for n in others for line in paired_lines(results, ref, n)]
        if paired:
            out += ("\n\nDifferences on the benchmarks, question by question (`lizardlm compare` gives the table):\n"
                    + "\n".join(paired))
    if notes:
        out += "\n\n" + "\n".join(notes)
    return out + "\n"


# ----------------------------------------------------------------------------- plots


def _save(fig, path: Path) -> str:
    """Lay out, write and close ``fig``; returns the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def make_plots(results: dict, out_dir: str | os.PathLike) -> list[str]:
    """Write passkey.png, mqar.png, ppl_position.png, longppl.png, heat maps and diagnostics_<model>.png for
    the tasks present; returns the paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    written: list[str] = []
    tasks = results["tasks"]

    def ok_entries(task: str):
        return [(n, e) for n, e in tasks.get(task, {}).items() if e.get("status") == "ok"]

    if ok_entries("passkey"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for n, e in ok_entries("passkey"):
            recs = e["details"]["lengths"]
            xs = [r["length"] for r in recs if r.get("acc") is not None]
            ys = [100 * r["acc"] for r in recs if r.get("acc") is not None]
            line = ax.plot(xs, ys, marker="o", label=n)[0]
            for r in recs:
                if r.get("acc") is None:
                    ax.annotate("skipped", (r["length"], 2), color=line.get_color(), fontsize=7, rotation=90, ha="center")
        _log2_ticks(ax, sorted({r["length"] for _, e in ok_entries("passkey") for r in e["details"]["lengths"]}))
        ctx = {results["models"][n].get("max_position_embeddings") for n, _ in ok_entries("passkey")}
        longest = max((r["length"] for _, e in ok_entries("passkey") for r in e["details"]["lengths"]), default=0)
        for v in sorted(c for c in ctx if isinstance(c, int) and c <= longest):
            ax.axvline(v, ls=":", color="gray", label=f"trained context ({v})")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("passkey accuracy (%)")
        ax.set_ylim(-5, 105)
        ax.set_title("Passkey retrieval")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out / "passkey.png"))

    for task in ("passkey", "passkey_train"):
        for n, e in ok_entries(task):
            written.append(passkey_heatmap(e["details"], out / f"{task}_heatmap_{n}.png", f"{task} ({n})"))

    if ok_entries("longppl"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for n, e in ok_entries("longppl"):
            c = e["curve"]
            label = n if c.get("context") is None else f"{n} ({c['context']}-token context)"
            ax.plot([(s + t) / 2 for s, t in zip(c["bucket_start"], c["bucket_end"])], c["ppl"], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        data = {e["curve"].get("data", LONGPPL_BOOKS) for _, e in ok_entries("longppl")}
        text = "held-out Gutenberg books" if data == {LONGPPL_BOOKS} else ", ".join(sorted(data))
        ax.set_xlabel(f"token position ({text})")
        ax.set_ylabel("perplexity (bucket mean NLL)")
        ax.set_title("Long-document perplexity")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        written.append(_save(fig, out / "longppl.png"))

    if ok_entries("diagnostics"):
        from lizardlm.eval.diagnostics import plot_diagnostics

        for n, e in ok_entries("diagnostics"):
            written.append(plot_diagnostics(e["details"], out / f"diagnostics_{n}.png", f"Lizard diagnostics ({n})"))

    if ok_entries("mqar"):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for n, e in ok_entries("mqar"):
            d = e["details"]
            bp = [r for r in d["by_pairs"] if r.get("acc") is not None]
            bl = [r for r in d["by_length"] if r.get("acc") is not None]
            a1.plot([r["pairs"] for r in bp], [100 * r["acc"] for r in bp], marker="o", label=n)
            a2.plot([r["seq_len"] for r in bl], [100 * r["acc"] for r in bl], marker="o", label=n)
        pairs = sorted({r["pairs"] for _, e in ok_entries("mqar") for r in e["details"]["by_pairs"]})
        if pairs:
            a1.plot(pairs, [100 / p for p in pairs], ls=":", color="gray", label="chance (1/pairs)")
        _log2_ticks(a1, pairs)
        a1.set_xlabel("key-value pairs")
        a1.set_ylabel("recall accuracy (%)")
        a1.set_title("MQAR vs pairs")
        lp = next(iter(ok_entries("mqar")))[1]["details"]["by_length"]
        _log2_ticks(a2, sorted({r["seq_len"] for _, e in ok_entries("mqar") for r in e["details"]["by_length"]}))
        a2.set_xlabel("sequence length (tokens)")
        a2.set_title(f"MQAR vs length ({lp[0]['pairs']} pairs)" if lp else "MQAR vs length")
        for a in (a1, a2):
            a.set_ylim(-5, 105)
            a.grid(alpha=0.3)
            a.legend()
        written.append(_save(fig, out / "mqar.png"))

    if ok_entries("position_ppl"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for n, e in ok_entries("position_ppl"):
            c = e["curve"]
            xs = [(s + t) / 2 for s, t in zip(c["bucket_start"], c["bucket_end"])]
            ax.plot(xs, c["ppl"], marker=".", label=n)
        ctx = {results["models"][n].get("max_position_embeddings") for n, _ in ok_entries("position_ppl")}
        xmax = max(c["bucket_end"][-1] for _, e in ok_entries("position_ppl") for c in [e["curve"]])
        for v in sorted(c for c in ctx if isinstance(c, int) and c <= xmax):
            ax.axvline(v, ls=":", color="gray", label=f"trained context ({v})")
        ax.set_yscale("log")
        ax.set_xlabel("token position")
        ax.set_ylabel("perplexity (bucket mean NLL)")
        ax.set_title("Perplexity vs position")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        written.append(_save(fig, out / "ppl_position.png"))
    return written


def passkey_heatmap(details: dict, path: str | os.PathLike, title: str) -> str:
    """Depth x length heat map of passkey accuracy (10 depth bins; skipped lengths left blank), beside
    the same map of the first digit's accuracy where the trials record it."""
    import matplotlib.pyplot as plt
    import numpy as np

    recs = details["lengths"]
    bins = 10
    trials = [t for rec in recs for t in rec.get("trials", [])]
    panels = [("correct", "exact match")] + [("first_digit", "first digit")] * bool(trials and "first_digit" in trials[0])
    fig, axes = plt.subplots(1, len(panels), figsize=((1.2 + 0.8 * len(recs)) * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        grid = np.full((bins, len(recs)), np.nan)
        for j, rec in enumerate(recs):
            hits: dict[int, list[bool]] = {}
            for t in rec.get("trials", []):
                hits.setdefault(min(bins - 1, int(t["depth"] * bins)), []).append(t[key])
            for i, v in hits.items():
                grid[i, j] = 100 * sum(v) / len(v)
        im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto", origin="upper")
        ax.set_xticks(range(len(recs)))
        ax.set_xticklabels([f"{r['length'] // 1024}K" if r["length"] >= 1024 else str(r["length"]) for r in recs])
        ax.set_yticks(range(bins))
        ax.set_yticklabels([f"{i / bins:.1f}" for i in range(bins)])
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(f"{title}: {label}" if len(panels) > 1 else title)
        fig.colorbar(im, ax=ax, label="accuracy (%)")
    return _save(fig, Path(path))


def knob_heatmap(search: dict, path: str | os.PathLike) -> str:
    """:func:`lizardlm.eval.knobs.tune_knobs`' grid as decay scale x write contrast heat maps of passkey
    exact match (each cell also gives the answer NLL, which decides between equal accuracies), one per
    length and, for several lengths, their mean, a row of them per read sharpness (1 for a grid from before
    that knob); the chosen setting outlined."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    def sharpness(r: dict) -> float:
        return r.get("read_sharpness", 1.0)

    scales = sorted({r["decay_scale"] for r in search["grid"]}, reverse=True)
    contrasts = sorted({r["write_contrast"] for r in search["grid"]})
    reads = sorted({sharpness(r) for r in search["grid"]})
    lengths = search["lengths"]
    panels = [(str(L), f"{L // 1024}K" if L >= 1024 else str(L)) for L in lengths] + [("mean", "mean")] * (len(lengths) > 1)
    fig, axes = plt.subplots(len(reads), len(panels), squeeze=False,
                             figsize=(1.4 + (0.9 + 0.7 * len(contrasts)) * len(panels), len(reads) * (1.6 + 0.55 * len(scales))))
    best = search["best"]
    for row, t in zip(axes, reads):
        for ax, (key, label) in zip(row, panels):
            acc = np.full((len(scales), len(contrasts)), np.nan)
            nll = np.full_like(acc, np.nan)
            for r in search["grid"]:
                if sharpness(r) != t:
                    continue
                at = scales.index(r["decay_scale"]), contrasts.index(r["write_contrast"])
                acc[at] = r["mean_acc"] if key == "mean" else r["acc"][key]
                loss = r["mean_nll"] if key == "mean" else r["answer_nll"][key]
                nll[at] = np.nan if loss is None else loss
            ax.imshow(100 * acc, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
            for (i, j), v in np.ndenumerate(acc):
                text = "" if np.isnan(v) else f"{v:.2f}" + ("" if np.isnan(nll[i, j]) else f"\nNLL {nll[i, j]:.3f}")
                ax.text(j, i, text, ha="center", va="center", fontsize=8)
            if sharpness(best) == t:
                i, j = scales.index(best["decay_scale"]), contrasts.index(best["write_contrast"])
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="black"))
            ax.set_xticks(range(len(contrasts)), [f"{c:g}" for c in contrasts])
            ax.set_yticks(range(len(scales)), [f"{s:g}" for s in scales])
            ax.set_xlabel("write contrast C")
            ax.set_ylabel("decay scale S")
            ax.set_title(f"passkey exact match @ {label}" if len(reads) == 1 else f"exact match @ {label}, read sharpness {t:g}",
                         fontsize=10 if len(reads) == 1 else 9)
    return _save(fig, Path(path))


def _log2_ticks(ax, values: list) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    vals = [v for v in values if isinstance(v, (int, float)) and v > 0]
    if vals:
        ax.set_xticks(vals)
        ax.set_xticklabels([f"{v // 1024}K" if v >= 1024 and v % 1024 == 0 else str(v) for v in vals])
        ax.xaxis.set_minor_locator(NullLocator())


# ----------------------------------------------------------------------------- writing


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def write_outputs(results: dict, out_dir: str | os.PathLike, plots: bool = True) -> dict[str, str]:
    """Write eval.json, eval.md and (optionally) the plots into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LizardError(f"cannot create output directory {out}: {err}") from err
    paths = {"json": str(out / "eval.json"), "markdown": str(out / "eval.md")}
    if plots:
        results.setdefault("meta", {})["plots"] = [Path(p).name for p in make_plots(results, out)]
    (out / "eval.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n", encoding="utf-8")
    title = "# lizardlm eval\n\n"
    (out / "eval.md").write_text(title + markdown_table(results), encoding="utf-8")
    for p in results.get("meta", {}).get("plots", []):
        paths[Path(p).stem] = str(out / p)
    return paths
