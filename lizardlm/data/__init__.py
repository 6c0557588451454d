"""Training and evaluation data: data specs -> documents -> packed token rows -> train/validation splits."""

from lizardlm.data.packing import PackedSplits, build_splits, pack_tokens
from lizardlm.data.records import format_alpaca, split_wikitext
from lizardlm.data.sources import Document, find_shared_data_dir, load_documents
from lizardlm.data.teacher_samples import TOPIC_PROMPTS, sample_teacher_corpus

__all__ = [
    "TOPIC_PROMPTS",
    "Document",
    "PackedSplits",
    "build_splits",
    "find_shared_data_dir",
    "format_alpaca",
    "load_documents",
    "pack_tokens",
    "sample_teacher_corpus",
    "split_wikitext",
]
