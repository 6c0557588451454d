"""Evaluation suite: perplexity, lm-eval benchmarks on local files, MQAR, passkey, reports.

All functions take an already loaded ``(model, tokenizer)``: any Hugging Face causal LM whose
forward returns ``.logits`` (a teacher or a Lizard student).

* :func:`perplexity`, :func:`perplexity_by_position` (:mod:`lizardlm.eval.perplexity`)
* :func:`run_harness` - PIQA, ARC-e/c, HellaSwag, WinoGrande (0-shot), MMLU (5-shot) through
  lm-evaluation-harness with local task definitions (:mod:`lizardlm.eval.tasks` documents the
  expected files under ``<data_dir>/<task>/``)
* :func:`mqar_eval` - multi-query associative recall (:mod:`lizardlm.eval.mqar`)
* :func:`passkey_eval` - passkey retrieval (:mod:`lizardlm.eval.passkey`)
* :func:`evaluate` - several models x several tasks -> ``eval.json``, ``eval.md``, PNG plots
"""

from lizardlm.eval.data import DataAbsentError, resolve_data_dir
from lizardlm.eval.harness import run_harness
from lizardlm.eval.mqar import mqar_eval
from lizardlm.eval.passkey import passkey_eval
from lizardlm.eval.perplexity import perplexity, perplexity_by_position
from lizardlm.eval.report import (
    ALL_TASKS,
    DEFAULT_TASKS,
    EvalConfig,
    evaluate,
    make_plots,
    markdown_table,
    write_outputs,
)

__all__ = [
    "ALL_TASKS",
    "DEFAULT_TASKS",
    "DataAbsentError",
    "EvalConfig",
    "evaluate",
    "make_plots",
    "markdown_table",
    "mqar_eval",
    "passkey_eval",
    "perplexity",
    "perplexity_by_position",
    "resolve_data_dir",
    "run_harness",
    "write_outputs",
]
