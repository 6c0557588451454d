"""Data-free linearization: a text corpus sampled from the teacher itself, cached on disk as JSON lines."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lizardlm.data.sources import Document
from lizardlm.errors import DataError

TEMPERATURE = 1.0
TOP_P = 0.95

TOPIC_PROMPTS: tuple[str, ...] = (
    "Tell me a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how photosynthesis works to a curious ten-year-old.",
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
    "What were the main causes of the French Revolution?",
    "Describe the water cycle step by step.",
    "Give me a recipe for a simple vegetable soup.",
    "Write a polite email asking a colleague to review a report by Friday.",
    "What is the difference between a virus and a bacterium?",
    "Summarize the plot of Romeo and Juliet.",
    "How does a bicycle stay upright while moving?",
    "Write a poem about the ocean at night.",
    "Explain what a black hole is and how it forms.",
    "What are some good habits for learning a new language?",
    "Describe the city of Rome to someone who has never been there.",
    "How do vaccines train the immune system?",
    "Explain the rules of chess for a beginner.",
    "Write a dialogue between a detective and a suspect.",
    "What is inflation, and why do central banks care about it?",
    "Solve this step by step: a train travels 180 km in 2.5 hours. What is its average speed?",
    "Describe how a computer executes a program, from source code to machine instructions.",
    "What are the benefits and risks of social media for teenagers?",
    "Tell me about the life of Marie Curie.",
    "How do plate tectonics create mountains and earthquakes?",
    "Write a product description for a waterproof hiking backpack.",
    "Explain the difference between weather and climate.",
    "Give advice to someone preparing for their first job interview.",
    "Describe a day in the life of a medieval farmer.",
    "How does the human heart pump blood through the body?",
    "Write a short fable with a moral about patience.",
    "Explain what machine learning is, with an everyday example.",
)


def sample_teacher_corpus(
    model: Any,
    tokenizer: Any,
    num_samples: int = 256,
    max_new_tokens: int = 256,
    seed: int = 0,
    cache_path: str | Path | None = None,
    batch_size: int = 8,
) -> list[Document]:
    """Sample ``num_samples`` prompt + completion texts from the teacher (temperature 1.0, top-p 0.95).

    Prompts cycle through ``TOPIC_PROMPTS`` (seeded order), wrapped in the tokenizer's chat template
    when it has one. The texts are cached as ``<hash>.jsonl`` in the directory ``cache_path``
    (default ``<lizardlm cache>/teacher-samples``), keyed by the teacher's weights and config and all
    settings, and reused by later calls.
    """
    if num_samples < 1 or max_new_tokens < 1:
        raise DataError(f"teacher samples need num_samples >= 1 and max_new_tokens >= 1, got {num_samples}, {max_new_tokens}")
    settings = {"num_samples": num_samples, "max_new_tokens": max_new_tokens, "seed": seed,
                "temperature": TEMPERATURE, "top_p": TOP_P, "prompts": TOPIC_PROMPTS}
    key = hashlib.sha256(json.dumps([_fingerprint(model, tokenizer), settings]).encode()).hexdigest()[:16]
    if cache_path is None:
        from lizardlm.teachers import cache_dir

        cache_path = cache_dir() / "teacher-samples"
    cache_file = Path(cache_path) / f"{key}.jsonl"
    source = f"teacher-samples:{num_samples}"
    if cache_file.is_file():
        lines = cache_file.read_text(encoding="utf-8").split("\n")  # texts may hold U+2028 etc.
        return [Document(json.loads(line)["text"], source) for line in lines if line.strip()]
    texts = _generate(model, tokenizer, num_samples, max_new_tokens, seed, batch_size)
    _write_jsonl(cache_file, texts)
    return [Document(text, source) for text in texts]


def _fingerprint(model: Any, tokenizer: Any) -> str:
    """What identifies the teacher: its config, tokenizer and a checksum of its weights."""
    with torch.no_grad():
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    return json.dumps([model.config.to_dict(), getattr(tokenizer, "name_or_path", ""), len(tokenizer),
                       f"{checksum:.8e}"], sort_keys=True, default=str)


def _prompt_texts(tokenizer: Any, count: int, seed: int) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    order = [int(i) for _ in range(-(-count // len(TOPIC_PROMPTS)))
             for i in torch.randperm(len(TOPIC_PROMPTS), generator=generator)]
    prompts = [TOPIC_PROMPTS[i] for i in order[:count]]
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts]
    return [f"{p}\n" for p in prompts]


def _generate(model: Any, tokenizer: Any, count: int, max_new_tokens: int, seed: int, batch_size: int) -> list[str]:
    prompts = _prompt_texts(tokenizer, count, seed)
    templated = bool(getattr(tokenizer, "chat_template", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = {pad_id, tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None}
    devices = [model.device] if model.device.type != "cpu" else []
    texts: list[str] = []
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.random.fork_rng(devices=devices, device_type=model.device.type), torch.inference_mode():
            torch.manual_seed(seed)
            for start in tqdm(range(0, count, batch_size), desc="sampling teacher corpus", unit="batch"):
                batch = prompts[start:start + batch_size]
                enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=not templated).to(model.device)
                out = model.generate(**enc, do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0,
                                     max_new_tokens=max_new_tokens, pad_token_id=pad_id)
                for prompt, ids in zip(batch, out[:, enc["input_ids"].shape[1]:].tolist()):
                    cut = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
                    texts.append(prompt + tokenizer.decode(ids[:cut], skip_special_tokens=False))
    finally:
        tokenizer.padding_side = padding_side
    return texts


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _write_jsonl(path: Path, texts: list[str]) -> None:
    """Write atomically, so an interrupted run leaves no partial cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
