"""Shared test fixtures: offline tokenizers and models, and an offline Hugging Face hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _train_tokenizer(chat_template: str | None):
    """A byte-level BPE tokenizer (vocab 512) trained on the fixture texts, with eos/pad/chat tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = "".join((FIXTURES / name).read_text(encoding="utf-8") for name in ("wikitext_slice.txt", "shakespeare_slice.txt"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.splitlines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Offline byte-level BPE tokenizer (vocab 512, eos ``<|endoftext|>``, pad ``<pad>``) with a ChatML template.

    Shared across the session: do not modify it (copy it with ``copy.deepcopy`` first)."""
    return _train_tokenizer(CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_tokenizer_plain():
    """Like ``tiny_tokenizer`` but without a chat template."""
    return _train_tokenizer(None)


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    """A fresh random 2-layer Llama (hidden 64, 4 heads, 2 kv heads) over ``tiny_tokenizer``'s vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id, bos_token_id=None,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def teacher_dir(tmp_path, tiny_llama, tiny_tokenizer):
    """``tiny_llama`` and ``tiny_tokenizer`` saved as a local teacher directory."""
    path = tmp_path / "teacher"
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def data_file(tmp_path):
    """A copy of the WikiText slice fixture as a training text file."""
    path = tmp_path / "train.txt"
    path.write_text((FIXTURES / "wikitext_slice.txt").read_text(encoding="utf-8"), encoding="utf-8")
    return path


@pytest.fixture
def hf_offline(monkeypatch):
    """Make Hugging Face hub and datasets calls fail fast instead of trying the network."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    try:
        import datasets.config
    except ImportError:
        return
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def smollm2_teacher():
    """The real embedded teacher (SmolLM2-135M-Instruct); use in tests marked ``slow``."""
    from lizardlm.teachers import load_teacher

    return load_teacher("smollm2-135m")


@pytest.fixture
def books(tmp_path) -> Path:
    """Ten "books" (the fixture slices, rotated) in the long-docs format, one title per book."""
    text = (FIXTURES / "wikitext_slice.txt").read_text(encoding="utf-8") + (FIXTURES / "shakespeare_slice.txt").read_text(encoding="utf-8")
    path = tmp_path / "books.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(10):
            cut = len(text) * i // 10
            f.write(json.dumps({"id": i, "title": f"book {i}", "text": f"BOOK{i} " + text[cut:] + text[:cut]}) + "\n")
    return path
