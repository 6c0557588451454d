"""Multiple-choice benchmarks through lm-evaluation-harness, on local files only.

``run_harness(model, tokenizer, ["piqa", "mmlu", ...])`` wraps the already-loaded model in an
lm-eval ``LM`` (:class:`lizardlm.eval.scoring_lm.ScoringLM` by default, lm-eval's ``HFLM`` with
``lm_backend="hflm"``: the same scores) and runs the local task definitions of
:mod:`lizardlm.eval.tasks` (same prompts and metrics as lm-eval's own YAMLs; see that module for
the file layout). Zero-shot for PIQA, ARC-e/c, HellaSwag, WinoGrande; 5-shot for MMLU.

Each task's entry in the returned dict is one of::

    {"status": "ok", "metrics": {"acc": .., "acc_stderr": .., "acc_norm": ..}, "n": .., "path": ..,
     "items": {"acc": "0110..", "acc_norm": ..}, "items_digest": ..}   (per-question scores: eval.paired)
    {"status": "absent", "path": "<what was looked for>", "reason": "..."}
    {"status": "error", "reason": "..."}           (malformed data or a failure inside lm-eval)

``limit`` is lm-eval's ``--limit``: at most that many documents per task (per subject for MMLU).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable

from lizardlm.errors import DataError, LizardError
from lizardlm.eval.data import DataAbsentError, resolve_data_dir
from lizardlm.eval.paired import item_scores
from lizardlm.eval.tasks import MC_TASKS, METRICS, NUM_FEWSHOT, find_task_files, read_split, task_configs

log = logging.getLogger(__name__)


class _DropNoise(logging.Filter):
    _NOISE = (
        "Custom kwargs can be passed",
        "`pretrained` model kwarg is not of type `str`",
        "appears to be an",
        "Overwriting default num_fewshot",
        "Passed an already-initialized model",
    )

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003
        msg = record.getMessage()
        return not any(n in msg for n in self._NOISE)


_LM_EVAL_LOGGERS = ("lm_eval", "lm_eval.api.task", "lm_eval.models.huggingface", "lm_eval.evaluator", "lm_eval.tasks")


def _quiet_lm_eval(verbose: bool) -> None:
    if not verbose:
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
    for name in _LM_EVAL_LOGGERS:
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in lg.filters):
            lg.addFilter(_DropNoise())


CPU_AUTO_BATCH = 16  # HFLM's ``batch_size="auto"`` off CUDA, where lm-eval's OOM-driven search does not apply
LM_BACKENDS = ("fast", "hflm")


def make_lm(model: Any, tokenizer: Any, batch_size: int | str = 1, max_length: int | None = None, backend: str = "fast"):
    """An lm-eval ``LM`` for ``model``: the model itself when it is one, else a wrapper.

    ``backend="fast"``: :class:`lizardlm.eval.scoring_lm.ScoringLM` (HFLM's scores, far less work;
    ``batch_size="auto"`` fills batches up to a token and memory budget). ``backend="hflm"``: lm-eval's
    ``HFLM``, whose ``"auto"`` is lm-eval's own search for the largest batch on CUDA (requests are
    scored longest first, so the first batch is the largest) and :data:`CPU_AUTO_BATCH` elsewhere.
    Right padding inside a batch does not change any score.
    """
    from lm_eval.api.model import LM

    if isinstance(model, LM):
        return model
    if backend not in LM_BACKENDS:
        raise LizardError(f"unknown lm backend {backend!r}; known: {', '.join(LM_BACKENDS)}")
    if backend == "fast":
        from lizardlm.eval.scoring_lm import ScoringLM

        return ScoringLM(model, tokenizer, batch_size=batch_size, max_length=max_length)
    from lm_eval.models.huggingface import HFLM

    kw: dict[str, Any] = {"pretrained": model, "tokenizer": tokenizer, "batch_size": batch_size, "backend": "causal"}
    if batch_size == "auto":
        if next(model.parameters()).is_cuda:
            kw["max_batch_size"] = 512
        else:
            kw["batch_size"] = CPU_AUTO_BATCH
    if max_length is not None:
        kw["max_length"] = max_length
    return HFLM(**kw)


def _collect_metrics(res: dict, name: str) -> dict:
    out: dict[str, float] = {}
    for key, val in res.get("results", {}).get(name, {}).items():
        if "," not in key or not isinstance(val, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        if filt != "none":
            continue
        out[metric] = float(val)
    return out


def _n_samples(res: dict, name: str) -> int | None:
    n = res.get("n-samples", {}).get(name)
    if isinstance(n, dict):
        return int(n.get("effective", n.get("original", 0)))
    return None


def run_harness(
    model: Any,
    tokenizer: Any,
    tasks: Iterable[str],
    *,
    data_dir: str | os.PathLike | None = None,
    data_paths: dict[str, str] | None = None,
    limit: int | float | None = None,
    batch_size: int | str = "auto",
    max_length: int | None = None,
    seed: int = 1234,
    verbose: bool = False,
    lm: Any = None,
    lm_backend: str = "fast",
) -> dict[str, dict]:
    """Run local multiple-choice benchmarks; returns ``{task: entry}`` (see module docstring).

    ``model`` may be a ``transformers`` model (wrapped by :func:`make_lm` with ``lm_backend``) or any
    ``lm_eval.api.model.LM`` (used as is, e.g. a test stub); ``lm`` overrides both. ``data_paths`` maps a task to its own
    directory or evaluation file, overriding ``<data_dir>/<task>/``.
    """
    tasks = list(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in MC_TASKS]
    if unknown:
        raise DataError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(MC_TASKS)}")
    root = resolve_data_dir(data_dir)
    data_paths = data_paths or {}
    entries: dict[str, dict] = {}
    configs: dict[str, list[dict]] = {}
    paths: dict[str, str] = {}
    for t in tasks:
        try:
            files = find_task_files(t, root, data_paths.get(t))
            paths[t] = str(files[next(iter(files))][0])
            data = {split: read_split(t, fs) for split, fs in files.items()}
            configs[t] = task_configs(t, data)
        except DataAbsentError as err:
            entries[t] = {"status": "absent", "path": err.path, "reason": str(err)}
        except DataError as err:
            entries[t] = {"status": "error", "reason": str(err), "path": paths.get(t)}
    if not configs:
        return {t: entries[t] for t in tasks}

    _quiet_lm_eval(verbose)
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm_obj = lm if lm is not None else make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length, backend=lm_backend)
    tm = TaskManager(include_defaults=False)
    all_cfgs = [c for t in configs for c in configs[t]]
    import datasets

    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the per-task "Map" bars of document preprocessing
    try:
        res = lm_eval.simple_evaluate(
            model=lm_obj,
            tasks=all_cfgs,
            task_manager=tm,
            limit=limit,
            bootstrap_iters=1000,
            log_samples=True,  # the per-question scores (``items``) that paired comparisons read
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    if res is None:  # non-zero rank
        return entries
    samples = res.pop("samples", None) or {}

    for t, cfgs in configs.items():
        if t == "mmlu":
            entries[t] = _mmlu_entry(res, cfgs, paths[t])
            # the subjects' questions in the order of their configs, one string over all of them
            rows = [{**s, "doc_id": (i, s["doc_id"])} for i, c in enumerate(cfgs) for s in samples.get(c["task"], [])]
            _add_items(entries[t], rows, METRICS[t])
            continue
        name = cfgs[0]["task"]
        metrics = _collect_metrics(res, name)
        if not metrics:
            entries[t] = {"status": "error", "reason": f"lm-eval returned no metrics for {name}", "path": paths[t]}
            continue
        entries[t] = {
            "status": "ok",
            "metrics": {k: metrics[k] for k in sorted(metrics, key=_metric_order)},
            "n": _n_samples(res, name),
            "num_fewshot": NUM_FEWSHOT[t],
            "path": paths[t],
        }
        _add_items(entries[t], samples.get(name, []), METRICS[t])
    return {t: entries[t] for t in tasks}


def _add_items(entry: dict, samples: list[dict], metrics: tuple[str, ...]) -> None:
    """The per-question scores of an ok entry (``items``, ``items_digest``), where lm-eval logged them."""
    scored = item_scores(samples, [m for m in metrics if m in entry.get("metrics", {})]) if entry.get("status") == "ok" else None
    if scored:
        entry["items"], entry["items_digest"] = scored


def _metric_order(m: str) -> tuple:
    base = m.replace("_stderr", "")
    order = ("acc", "acc_norm")
    return (order.index(base) if base in order else 9, base, m.endswith("_stderr"))


def _mmlu_entry(res: dict, cfgs: list[dict], path: str) -> dict:
    subjects: dict[str, dict] = {}
    total_n = 0
    total_correct = 0.0
    var_sum = 0.0
    for cfg in cfgs:
        name = cfg["task"]
        m = _collect_metrics(res, name)
        n = _n_samples(res, name) or 0
        if "acc" not in m:
            continue
        subjects[cfg["task_alias"]] = {"acc": m["acc"], "n": n, "num_fewshot": cfg["num_fewshot"]}
        total_n += n
        total_correct += m["acc"] * n
    if not total_n:
        return {"status": "error", "reason": "lm-eval returned no MMLU metrics", "path": path}
    acc = total_correct / total_n
    var_sum = acc * (1 - acc) / max(1, total_n - 1)
    shots = sorted({s["num_fewshot"] for s in subjects.values()})
    entry = {
        "status": "ok",
        "metrics": {"acc": acc, "acc_stderr": var_sum**0.5},
        "n": total_n,
        "num_fewshot": shots[0] if len(shots) == 1 else shots,
        "aggregation": "accuracy over all questions (lm-eval's weight_by_size)",
        "subjects": subjects,
        "path": path,
    }
    if any(s["num_fewshot"] < NUM_FEWSHOT["mmlu"] for s in subjects.values()):
        entry["note"] = "some subjects have fewer than 5 dev examples; they use fewer shots"
    return entry


def default_metrics(task: str) -> tuple[str, ...]:
    return METRICS.get(task, ("acc",))
