"""Where evaluation data lives, and reading it.

The data directory is, in order: the ``data_dir`` argument (CLI ``--data-dir``), the environment
variable ``LIZARDLM_DATA_DIR``, then the first existing of ``./../shared/data``, ``./shared/data``
(relative to the working directory) and the same two relative to the lizardlm source checkout.

Layout (see :mod:`lizardlm.eval.tasks` for the multiple-choice file formats)::

    <data_dir>/wikitext-2/test.txt          raw WikiText-2 test split (perplexity)
    <data_dir>/tinyshakespeare/input.txt    TinyShakespeare (perplexity)
    <data_dir>/piqa/validation.jsonl
    <data_dir>/arc_easy/test.jsonl
    <data_dir>/arc_challenge/test.jsonl
    <data_dir>/hellaswag/validation.jsonl
    <data_dir>/winogrande/validation.jsonl
    <data_dir>/mmlu/test.jsonl + <data_dir>/mmlu/dev.jsonl

``wikitext2_valid`` and ``tinyshakespeare`` fall back to the samples shipped in the package (as the
``default`` training data does), with a warning; every other set must be in the data directory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lizardlm.errors import DataError

logger = logging.getLogger(__name__)

ENV_VAR = "LIZARDLM_DATA_DIR"


class DataAbsentError(DataError):
    """A benchmark's files are not there; ``path`` is what was looked for."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = str(path) if path is not None else None

# perplexity corpora: task name -> path relative to the data dir
TEXT_CORPORA = {
    "wikitext2": "wikitext-2/test.txt",
    "wikitext2_valid": "wikitext-2/valid.txt",
    "tinyshakespeare": "tinyshakespeare/input.txt",
}
# perplexity corpora with a sample shipped in the package: task name -> data set name
SAMPLE_SETS = {"wikitext2_valid": "wikitext2-valid", "tinyshakespeare": "tinyshakespeare"}


def data_dir_candidates(data_dir: str | os.PathLike | None = None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(env).expanduser()]
    cwd = Path.cwd()
    repo = Path(__file__).resolve().parents[2]
    out: list[Path] = []
    for p in (cwd.parent / "shared" / "data", cwd / "shared" / "data", repo.parent / "shared" / "data", repo / "shared" / "data"):
        if p not in out:
            out.append(p)
    return out


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The evaluation data directory (the first existing candidate, else the first candidate)."""
    cands = data_dir_candidates(data_dir)
    for c in cands:
        if c.is_dir():
            return c.resolve()
    return cands[0]


def text_corpus_path(name: str, data_dir: str | os.PathLike | None = None, override: str | os.PathLike | None = None) -> Path:
    """Path of a perplexity corpus: ``override``, else the data directory's file, else the shipped
    sample (when there is one, with a warning); raises :class:`DataError` naming the path looked for."""
    if override is not None:
        p = Path(override).expanduser()
    else:
        if name not in TEXT_CORPORA:
            raise DataError(f"unknown text corpus {name!r}; known: {', '.join(TEXT_CORPORA)}")
        p = resolve_data_dir(data_dir) / TEXT_CORPORA[name]
        if not p.is_file() and name in SAMPLE_SETS:
            from lizardlm.data.sources import sample_file

            logger.warning("%s: %s not found; using the small sample shipped with lizardlm (give --data-dir)", name, p)
            return sample_file(SAMPLE_SETS[name])
    if not p.is_file():
        raise DataAbsentError(f"{name}: data absent, looked for {p}", p)
    return p


def is_sample(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of the samples shipped in the package."""
    from lizardlm.data.sources import SAMPLES_DIR

    return Path(path).resolve().parent == SAMPLES_DIR.resolve()


def read_text(path: str | os.PathLike) -> str:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {p}: {err}") from err
    if not text.strip():
        raise DataError(f"{p} is empty")
    return text
