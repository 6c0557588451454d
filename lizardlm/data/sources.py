"""Data specs -> documents: the shipped corpora, local files and directories, ``hf:`` datasets, teacher samples.

A spec is one of

* ``default``: WikiText-2 valid + TinyShakespeare from the shared data directory (or, when that is
  absent, the ~300 KB samples shipped in ``lizardlm/data/samples``, with a warning);
* ``wikitext2-valid``, ``wikitext2-test``, ``tinyshakespeare``, ``alpaca``, ``alpaca-cleaned``, ``long-docs``
  (100 Gutenberg books): one file of the shared data directory;
* a path: ``.txt`` (split at WikiText `` = Title = `` headings when present, else one document),
  ``.jsonl`` / ``.json`` (records with ``text``, or Alpaca ``instruction``/``input``/``output``),
  ``.parquet`` (same columns), or a directory of such files (searched recursively);
* ``hf:NAME[:CONFIG][@SPLIT]``: a Hugging Face ``datasets`` dataset (split defaults to ``split``);
* ``teacher-samples[:N]``: N texts sampled from the teacher, which must be passed as ``teacher=(model, tokenizer)``;
* ``retrieval[:KEY=VALUE]...``: synthetic passkey documents (:mod:`lizardlm.data.retrieval`);
* any of the above but ``hf:`` and ``retrieval`` followed by ``@train`` or ``@eval``: its documents without
  the held-out tenth, or only that tenth (:func:`held_out_split`; ``long-docs@train`` trains on the 90
  books that the long-document evaluation does not read).

``mix:SPEC=WEIGHT,...`` mixtures are packed by :func:`lizardlm.data.packing.build_splits`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lizardlm
from lizardlm.data.records import records_to_texts, split_wikitext
from lizardlm.errors import DataError

logger = logging.getLogger(__name__)

SHARED_FILES = {
    "wikitext2-valid": "wikitext-2/valid.txt",
    "wikitext2-test": "wikitext-2/test.txt",
    "tinyshakespeare": "tinyshakespeare/input.txt",
    "alpaca": "alpaca/alpaca_data.jsonl",
    "alpaca-cleaned": "alpaca/alpaca_data_cleaned_partial.jsonl",
    "long-docs": "long-docs/gutenberg_books.jsonl",
}
DEFAULT_SETS = ("wikitext2-valid", "tinyshakespeare")
SAMPLES_DIR = Path(__file__).parent / "samples"
SAMPLE_FILES = {"wikitext2-valid": "wikitext2-valid.txt", "tinyshakespeare": "tinyshakespeare.txt"}
FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
DEFAULT_TEACHER_SAMPLES = 256
HELD_OUT_PARTS = ("train", "eval")


@dataclass(frozen=True)
class Document:
    """One document of text and where it came from (a file path, a spec or a dataset name);
    ``token_ids``, when set, are its exact tokens (packing uses them instead of tokenizing ``text``)."""

    text: str
    source: str
    token_ids: Any = None


def find_shared_data_dir() -> Path | None:
    """The shared data directory: ``$LIZARDLM_DATA_DIR``, ``./shared/data``, ``../shared/data``, then
    ``shared/data`` next to the repository holding this source tree; None when none exists."""
    env = os.environ.get("LIZARDLM_DATA_DIR")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"LIZARDLM_DATA_DIR={env} is not a directory")
        return path.resolve()
    repo = Path(lizardlm.__file__).resolve().parents[1]
    for candidate in (Path("shared/data"), Path("../shared/data"), repo / "../shared/data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def load_documents(
    spec: str,
    *,
    tokenizer: Any = None,
    split: str = "train",
    teacher: tuple[Any, Any] | None = None,
) -> list[Document]:
    """Documents of a data spec (see the module docstring); raises DataError when there is no usable text.

    ``tokenizer`` formats Alpaca records with its chat template; ``split`` is the default split of
    ``hf:`` specs; ``teacher`` is the ``(model, tokenizer)`` that ``teacher-samples`` specs sample from.
    """
    spec = spec.strip()
    base, _, part = spec.rpartition("@")
    if part in HELD_OUT_PARTS and base and not base.startswith(("hf:", "retrieval", "mix:")):
        return held_out_split(load_documents(base, tokenizer=tokenizer, split=split, teacher=teacher), part)
    if spec == "default":
        docs = [doc for name in DEFAULT_SETS for doc in _named_set(name, allow_sample=True)]
    elif spec in SHARED_FILES:
        docs = _named_set(spec, allow_sample=False, tokenizer=tokenizer)
    elif spec.startswith("hf:"):
        docs = _load_hf(spec, tokenizer, split)
    elif spec == "teacher-samples" or spec.startswith("teacher-samples:"):
        docs = _teacher_samples(spec, teacher)
    elif spec == "retrieval" or spec.startswith("retrieval:"):
        from lizardlm.data.retrieval import retrieval_documents

        docs = retrieval_documents(spec, tokenizer)
    elif spec.startswith("mix:"):
        raise DataError(f"data spec {spec!r} is a mixture: build_splits packs each part to its weight")
    else:
        docs = _load_path(spec, tokenizer)
    if not docs:
        raise DataError(f"data {spec!r} contains no text")
    return docs


def held_out_split(documents: list[Document], part: str) -> list[Document]:
    """The held-out tenth of ``documents`` (``eval``: the last ``max(1, n // 10)`` in file order; for
    ``long-docs`` the last 10 books, among them the 4 of the PG-19 test split) or the rest (``train``)."""
    if part not in HELD_OUT_PARTS:
        raise DataError(f"held-out part must be one of {', '.join(HELD_OUT_PARTS)}, got {part!r}")
    if len(documents) < 2:
        raise DataError(f"a held-out split needs at least 2 documents (one to train on, one held out), got {len(documents)}")
    cut = len(documents) - max(1, len(documents) // 10)
    return documents[cut:] if part == "eval" else documents[:cut]


def _named_set(name: str, allow_sample: bool, tokenizer: Any = None) -> list[Document]:
    shared = find_shared_data_dir()
    path = shared / SHARED_FILES[name] if shared is not None else None
    if path is not None and path.is_file():
        return _read_file(path, tokenizer)
    if allow_sample:
        logger.warning(
            "shared data file %s not found; using the small sample shipped with lizardlm (set LIZARDLM_DATA_DIR)",
            SHARED_FILES[name],
        )
        return _read_file(sample_file(name), None)
    where = f"in {shared}" if shared is not None else "(no shared data directory; set LIZARDLM_DATA_DIR)"
    raise DataError(f"data set {name!r}: {SHARED_FILES[name]} not found {where}")


def sample_file(name: str) -> Path:
    """The sample of data set ``name`` shipped in the package (``wikitext2-valid``, ``tinyshakespeare``)."""
    return SAMPLES_DIR / SAMPLE_FILES[name]


def _load_path(spec: str, tokenizer: Any) -> list[Document]:
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(_data_files(path))
        if not files:
            raise DataError(f"directory {path} has no {'/'.join(FILE_SUFFIXES)} files")
        return [doc for file in files for doc in _read_file(file, tokenizer)]
    if path.is_file():
        return _read_file(path, tokenizer)
    if path.suffix.lower() in FILE_SUFFIXES or "/" in spec or os.sep in spec or spec.startswith(("~", ".")):
        raise DataError(f"data file {spec}: no such file or directory")
    raise DataError(
        f"unknown data spec {spec!r}: expected default, {', '.join(SHARED_FILES)}, hf:NAME[:CONFIG][@SPLIT], "
        f"teacher-samples[:N], retrieval[:KEY=VALUE]..., mix:SPEC=WEIGHT,..., or a {'/'.join(FILE_SUFFIXES)} file or directory"
    )


def _data_files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if path.is_file() and not hidden and path.suffix.lower() in FILE_SUFFIXES:
            yield path


def _read_file(path: Path, tokenizer: Any) -> list[Document]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        texts = split_wikitext(_read_utf8(path))
    elif suffix == ".jsonl":
        texts = records_to_texts(_json_lines(path, _read_utf8(path)), str(path), tokenizer)
    elif suffix == ".json":
        texts = records_to_texts(_json_records(path), str(path), tokenizer)
    elif suffix == ".parquet":
        texts = records_to_texts(_parquet_records(path), str(path), tokenizer)
    else:
        raise DataError(f"data file {path}: unsupported type {suffix or '(none)'}; use {'/'.join(FILE_SUFFIXES)}")
    return [Document(text, str(path)) for text in texts]


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read data file {path}: {err.strerror or err}") from err
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = bom + err.start
        raise DataError(
            f"data file {path} is not UTF-8 text: invalid byte 0x{data[offset]:02x} at byte offset {offset}"
        ) from err
    return text.replace("\r\n", "\n")


def _json_lines(path: Path, text: str) -> Iterator[Any]:
    """Records of JSON-lines text, split at ``\n`` only (JSON strings may hold U+0085, U+2028, U+2029)."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from err


def _json_records(path: Path) -> list[Any]:
    """A .json file: a list of records, one record, or (as many datasets ship) JSON lines."""
    text = _read_utf8(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":
            return list(_json_lines(path, text))
        raise DataError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from err
    return data if isinstance(data, list) else [data]


def _parquet_records(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow") from err
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... on a bad file
        raise DataError(f"cannot read parquet file {path}: {str(err).splitlines()[0] if str(err) else err!r}") from err
    return table.to_pylist()


def _load_hf(spec: str, tokenizer: Any, split: str) -> list[Document]:
    """``hf:NAME[:CONFIG][@SPLIT]`` through ``datasets.load_dataset``."""
    body = spec[3:]
    body, _, given_split = body.rpartition("@") if "@" in body else (body, "", "")
    split = given_split or split
    name, _, config = body.partition(":")
    if not name:
        raise DataError(f"data spec {spec!r} names no dataset; use hf:NAME[:CONFIG][@SPLIT]")
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"data spec {spec!r} needs the datasets package: pip install datasets") from err
    try:
        dataset = datasets.load_dataset(name, config or None, split=split)
    except Exception as err:  # offline, unknown name/config/split, bad files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"could not load Hugging Face dataset {name!r} (config {config or 'default'}, split {split}): {reason}; "
            "offline runs need it in the datasets cache, or pass a local file"
        ) from err
    source = f"hf:{name}" + (f":{config}" if config else "") + f"@{split}"
    return [Document(text, source) for text in records_to_texts(dataset, source, tokenizer)]


def _teacher_samples(spec: str, teacher: tuple[Any, Any] | None) -> list[Document]:
    from lizardlm.data.teacher_samples import sample_teacher_corpus

    count = spec.partition(":")[2] or str(DEFAULT_TEACHER_SAMPLES)
    if not count.isdigit() or int(count) < 1:
        raise DataError(f"data spec {spec!r}: N must be a positive integer (teacher-samples[:N])")
    if teacher is None:
        raise DataError(f"data spec {spec!r} samples from the teacher: pass teacher=(model, tokenizer)")
    model, tokenizer = teacher
    return sample_teacher_corpus(model, tokenizer, num_samples=int(count))
