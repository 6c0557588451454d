"""Turn data records (``text`` or Alpaca ``instruction``/``input``/``output``) into training text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from lizardlm.errors import DataError

WIKITEXT_HEADING = re.compile(r"^ ?= [^=].* = ?$")


def split_wikitext(text: str) -> list[str]:
    """Split WikiText-style text into one document per `` = Title = `` heading (others stay one document)."""
    docs: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if WIKITEXT_HEADING.match(line.rstrip("\r\n")) and any(part.strip() for part in docs[-1]):
            docs.append([])
        docs[-1].append(line)
    return ["".join(doc) for doc in docs if "".join(doc).strip()]


def format_alpaca(instruction: str, input_text: str, output: str, tokenizer: Any = None) -> str:
    """An Alpaca example as one text: the tokenizer's chat template when it has one, else the Alpaca prompt."""
    user = f"{instruction}\n\n{input_text}" if input_text.strip() else instruction
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    if input_text.strip():
        return f"### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n{output}"
    return f"### Instruction:\n{instruction}\n\n### Response:\n{output}"


def records_to_texts(records: Iterable[Any], source: str, tokenizer: Any = None) -> list[str]:
    """Texts of ``records`` (dicts with ``text``, or Alpaca fields); blank texts are dropped.

    Line-per-row WikiText (as on the Hugging Face hub) is joined and split back into articles.
    """
    texts: list[str] = []
    for index, record in enumerate(records):
        texts.append(_record_text(record, f"{source}: record {index}", tokenizer))
    if any(WIKITEXT_HEADING.match(text.rstrip("\r\n")) for text in texts):
        return split_wikitext("".join(text if text.endswith("\n") else text + "\n" for text in texts))
    return [text for text in texts if text.strip()]


def _record_text(record: Any, where: str, tokenizer: Any) -> str:
    if not isinstance(record, Mapping):
        raise DataError(f"{where} is a {type(record).__name__}, expected an object with a 'text' field")
    if isinstance(record.get("text"), str):
        return record["text"]
    instruction, output = record.get("instruction"), record.get("output")
    if isinstance(instruction, str) and isinstance(output, str):
        input_text = record.get("input") or ""
        return format_alpaca(instruction, str(input_text), output, tokenizer)
    raise DataError(
        f"{where} has neither a 'text' string nor Alpaca 'instruction'/'output' strings "
        f"(fields: {', '.join(map(str, record)) or 'none'})"
    )
