"""Data specs, readers, error paths, packing and train/validation splits."""

from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from lizardlm.data import (
    Document,
    build_splits,
    find_shared_data_dir,
    load_documents,
    pack_tokens,
    sample_teacher_corpus,
)
from lizardlm.data import sources, teacher_samples
from lizardlm.data.sources import held_out_split
from lizardlm.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
WIKI = FIXTURES / "wikitext_slice.txt"
SHAKESPEARE = FIXTURES / "shakespeare_slice.txt"
ALPACA = FIXTURES / "alpaca.jsonl"


@pytest.fixture
def shared_dir(tmp_path, monkeypatch):
    """A shared data directory holding the fixture slices under the real file names."""
    root = tmp_path / "shared"
    (root / "wikitext-2").mkdir(parents=True)
    (root / "tinyshakespeare").mkdir()
    shutil.copy(WIKI, root / "wikitext-2" / "valid.txt")
    shutil.copy(SHAKESPEARE, root / "tinyshakespeare" / "input.txt")
    monkeypatch.setenv("LIZARDLM_DATA_DIR", str(root))
    return root


def _texts(docs: list[Document]) -> list[str]:
    return [doc.text for doc in docs]


# --- shared data directory and named sets -------------------------------------------------------


def test_find_shared_data_dir_env(shared_dir):
    assert find_shared_data_dir() == shared_dir.resolve()


def test_find_shared_data_dir_env_not_a_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LIZARDLM_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="LIZARDLM_DATA_DIR"):
        find_shared_data_dir()


def test_find_shared_data_dir_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("LIZARDLM_DATA_DIR", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert find_shared_data_dir() == (tmp_path / "shared" / "data").resolve()


def test_default_spec(shared_dir):
    docs = load_documents("default")
    assert len(docs) == 4  # 3 WikiText articles + TinyShakespeare as one document
    assert docs[0].text.lstrip().startswith("= Homarus gammarus =")
    assert all(" = " in doc.text.splitlines()[0] or doc.text.lstrip().startswith("=") for doc in docs[:3])
    assert docs[3].text.startswith("First Citizen:")
    assert docs[3].source.endswith("input.txt")


def test_default_falls_back_to_samples(monkeypatch, caplog):
    monkeypatch.setattr(sources, "find_shared_data_dir", lambda: None)
    with caplog.at_level(logging.WARNING, logger="lizardlm.data.sources"):
        docs = load_documents("default")
    assert "sample" in caplog.text
    assert len(docs) > 10
    assert sum(len(doc.text) for doc in docs) > 250_000


def test_named_sets(shared_dir):
    assert len(load_documents("wikitext2-valid")) == 3
    assert len(load_documents("tinyshakespeare")) == 1
    with pytest.raises(DataError, match="wikitext-2/test.txt not found"):
        load_documents("wikitext2-test")


def test_held_out_parts(tmp_path):
    """``@train`` / ``@eval``: the documents without the last tenth, and that tenth, in file order."""
    path = tmp_path / "books.jsonl"
    n = 23  # held-out tenth: the last 2
    path.write_text("".join(json.dumps({"text": f"book {i}"}) + "\n" for i in range(n)), encoding="utf-8")
    assert _texts(load_documents(f"{path}@eval")) == [f"book {i}" for i in (21, 22)]
    assert _texts(load_documents(f"{path}@train")) == [f"book {i}" for i in range(21)]
    assert len(held_out_split(load_documents(str(path))[:2], "eval")) == 1


def test_held_out_parts_refusals(tmp_path, shared_dir):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "only"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="at least 2 documents"):
        load_documents(f"{one}@train")
    with pytest.raises(DataError, match="must be one of train, eval"):
        held_out_split(load_documents("wikitext2-valid"), "test")
    with pytest.raises(DataError, match="no such file"):
        load_documents(f"{tmp_path / 'absent.jsonl'}@eval")
    assert len(load_documents("wikitext2-valid@train")) == 2  # a shared set's name takes a part too


# --- local files ----------------------------------------------------------------------------------


def test_txt_wikitext_split():
    docs = load_documents(str(WIKI))
    assert len(docs) == 3
    assert "".join(_texts(docs)) == WIKI.read_text(encoding="utf-8")
    assert docs[0].source == str(WIKI)


def test_txt_without_headings_is_one_document(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("one paragraph.\n\nanother paragraph.\n", encoding="utf-8")
    assert _texts(load_documents(str(path))) == ["one paragraph.\n\nanother paragraph.\n"]


def test_txt_bom_and_crlf(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\n")
    assert _texts(load_documents(str(path))) == ["line one\nline two\n"]


def test_jsonl_text(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "alpha"}\n\n{"text": "beta", "id": 2}\n{"text": "  "}\n', encoding="utf-8")
    assert _texts(load_documents(str(path))) == ["alpha", "beta"]


def test_json_list_and_json_lines(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"text": "alpha"}, {"text": "beta"}]), encoding="utf-8")
    assert _texts(load_documents(str(listed))) == ["alpha", "beta"]
    lines = tmp_path / "lines.json"
    lines.write_text('{"text": "alpha"}\n{"text": "beta"}\n', encoding="utf-8")
    assert _texts(load_documents(str(lines))) == ["alpha", "beta"]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["alpha", "beta"], "id": [1, 2]}), path)
    assert _texts(load_documents(str(path))) == ["alpha", "beta"]


def test_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "sub" / "b.jsonl").write_text('{"text": "second"}\n', encoding="utf-8")
    (tmp_path / ".hidden" / "c.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert _texts(load_documents(str(tmp_path))) == ["first", "second"]


def test_alpaca_with_chat_template(tiny_tokenizer):
    docs = load_documents(str(ALPACA), tokenizer=tiny_tokenizer)
    assert len(docs) == 6
    assert docs[1].text == (
        "<|im_start|>user\nTranslate the sentence into French.\n\nThe cat sleeps on the sofa.<|im_end|>\n"
        "<|im_start|>assistant\nLe chat dort sur le canapé.<|im_end|>\n"
    )


def test_alpaca_plain_template(tiny_tokenizer_plain):
    docs = load_documents(str(ALPACA), tokenizer=tiny_tokenizer_plain)
    assert docs[0].text.startswith("### Instruction:\nGive three tips")
    assert "### Input:" not in docs[0].text
    assert docs[1].text == (
        "### Instruction:\nTranslate the sentence into French.\n\n### Input:\nThe cat sleeps on the sofa.\n\n"
        "### Response:\nLe chat dort sur le canapé."
    )
    assert _texts(load_documents(str(ALPACA))) == _texts(docs)  # no tokenizer: plain template


def test_line_per_row_wikitext_is_regrouped(tmp_path):
    lines = WIKI.read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines), encoding="utf-8")
    assert _texts(load_documents(str(path))) == _texts(load_documents(str(WIKI)))


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing.txt", "missing.jsonl", "sub/dir"])
def test_missing_path(tmp_path, name):
    with pytest.raises(DataError, match="no such file or directory"):
        load_documents(str(tmp_path / name))


@pytest.mark.parametrize("content", ["", "  \n\n \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="contains no text"):
        load_documents(str(path))


def test_empty_records(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="contains no text"):
        load_documents(str(path))


def test_non_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8 text: invalid byte 0xe9 at byte offset 3"):
        load_documents(str(path))


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "locked.txt"
    path.write_text("text", encoding="utf-8")

    def deny(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(DataError, match="cannot read data file .*locked.txt: Permission denied"):
        load_documents(str(path))


def test_bad_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        load_documents(str(path))


@pytest.mark.parametrize("record", [{"content": "x"}, {"instruction": "do it"}, {"text": 3}, ["text"]])
def test_records_without_text_fields(tmp_path, record):
    path = tmp_path / "fields.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="record 1"):
        load_documents(str(path))


def test_corrupt_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not a parquet file")
    with pytest.raises(DataError, match="cannot read parquet file"):
        load_documents(str(path))


def test_directory_without_data_files(tmp_path):
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="has no .txt/.jsonl/.json/.parquet files"):
        load_documents(str(tmp_path))


def test_unknown_spec():
    with pytest.raises(DataError, match="unknown data spec 'wikitext3'"):
        load_documents("wikitext3")


def test_hf_spec_offline(hf_offline):
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match=r"could not load Hugging Face dataset 'no-such-org/no-such-set' "
                                        r"\(config cfg, split validation\)"):
        load_documents("hf:no-such-org/no-such-set:cfg@validation")


def test_teacher_samples_spec_needs_teacher():
    with pytest.raises(DataError, match="teacher=\\(model, tokenizer\\)"):
        load_documents("teacher-samples:4")
    with pytest.raises(DataError, match="positive integer"):
        load_documents("teacher-samples:x")


# --- packing and splits ---------------------------------------------------------------------------


def test_pack_tokens_shapes_and_eos(tiny_tokenizer):
    docs = load_documents(str(WIKI))
    rows = pack_tokens(docs, tiny_tokenizer, seq_len=64)
    lengths = [len(tiny_tokenizer(doc.text, add_special_tokens=False)["input_ids"]) + 1 for doc in docs]
    assert rows.dtype == torch.long and rows.shape == (sum(lengths) // 64, 64)
    flat = rows.flatten()
    assert flat[lengths[0] - 1] == tiny_tokenizer.eos_token_id
    assert int((flat == tiny_tokenizer.eos_token_id).sum()) == sum(1 for n in torch.tensor(lengths).cumsum(0) if n <= flat.numel())
    assert torch.equal(rows, pack_tokens(docs, tiny_tokenizer, seq_len=64))


def test_pack_tokens_max_tokens_and_strings(tiny_tokenizer):
    rows = pack_tokens([SHAKESPEARE.read_text(encoding="utf-8")], tiny_tokenizer, seq_len=32, max_tokens=100)
    assert rows.shape == (3, 32)


def test_pack_tokens_too_little_data(tiny_tokenizer):
    with pytest.raises(DataError, match="fewer than one row of seq_len 4096"):
        pack_tokens(["a short text"], tiny_tokenizer, seq_len=4096)


def _row_set(rows: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(row) for row in rows.tolist()}


def test_build_splits(shared_dir, tiny_tokenizer):
    splits = build_splits("default", tiny_tokenizer, seq_len=32, train_tokens=640, val_tokens=100)
    assert splits.train.shape == (20, 32) and splits.val.shape == (4, 32)
    assert not _row_set(splits.train) & _row_set(splits.val)
    assert splits.meta["spec"] == "default" and splits.meta["seq_len"] == 32
    assert splits.meta["train_tokens"] == 640 and splits.meta["val_tokens"] == 128
    assert splits.meta["shortfall"] is False and splits.meta["num_documents"] == 4

    again = build_splits("default", tiny_tokenizer, seq_len=32, train_tokens=640, val_tokens=100)
    assert torch.equal(again.train, splits.train) and torch.equal(again.val, splits.val)
    more_train = build_splits("default", tiny_tokenizer, seq_len=32, train_tokens=1280, val_tokens=100)
    assert torch.equal(more_train.val, splits.val)
    other_seed = build_splits("default", tiny_tokenizer, seq_len=32, train_tokens=640, val_tokens=100, seed=1)
    assert not torch.equal(other_seed.val, splits.val)


def test_build_splits_in_order(shared_dir, tiny_tokenizer):
    """``in_order``: the same validation rows; train rows are ``lanes`` runs of consecutive rows that
    validation left, the first at the data's start and the last at its end."""
    shuffled = build_splits("default", tiny_tokenizer, seq_len=32, train_tokens=640, val_tokens=100)
    all_rows = pack_tokens(load_documents("default"), tiny_tokenizer, 32, max_tokens=sources_pool_rows(32) * 32)
    left = [row for row in all_rows.tolist() if tuple(row) not in _row_set(shuffled.val)]
    for lanes, span in ((1, 20), (3, 6), (4, 5)):
        ordered = build_splits("default", tiny_tokenizer, seq_len=32, train_tokens=640, val_tokens=100, in_order=True,
                               lanes=lanes)
        assert torch.equal(ordered.val, shuffled.val) and ordered.meta["train_in_order"] is True
        assert ordered.meta["train_rows"] == lanes * span == ordered.train.shape[0]
        runs = [ordered.train[k * span:(k + 1) * span].tolist() for k in range(lanes)]
        starts = [left.index(run[0]) for run in runs]
        assert all(run == left[s:s + span] for run, s in zip(runs, starts))
        assert starts[0] == 0 and (lanes == 1 or starts[-1] == len(left) - span)
        assert all(b - a >= span for a, b in zip(starts, starts[1:]))
    assert shuffled.train.tolist() != left[:20]  # the usual split draws train rows at random


def sources_pool_rows(seq_len: int) -> int:
    from lizardlm.data.packing import POOL_MIN_TOKENS

    return POOL_MIN_TOKENS // seq_len


def test_build_splits_shortfall(tiny_tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="lizardlm.data.packing"):
        splits = build_splits(str(WIKI), tiny_tokenizer, seq_len=64, train_tokens=10**6, val_tokens=10**5)
    available = splits.meta["rows_available"]
    assert splits.meta["shortfall"] is True and "asked for" in caplog.text
    assert splits.train.shape[0] + splits.val.shape[0] == available and splits.val.shape[0] >= 1
    assert not _row_set(splits.train) & _row_set(splits.val)


def test_build_splits_needs_two_rows(tmp_path, tiny_tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("word " * 60, encoding="utf-8")
    seq_len = (len(tiny_tokenizer("word " * 60)["input_ids"]) + 1) * 2 // 3
    assert pack_tokens(load_documents(str(path)), tiny_tokenizer, seq_len=seq_len).shape[0] == 1
    with pytest.raises(DataError, match="need at least 2"):
        build_splits(str(path), tiny_tokenizer, seq_len=seq_len, train_tokens=40, val_tokens=40)


# --- teacher samples ------------------------------------------------------------------------------


def test_sample_teacher_corpus_cached(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    rng_before = torch.get_rng_state()
    docs = sample_teacher_corpus(tiny_llama, tiny_tokenizer, num_samples=3, max_new_tokens=5, seed=0,
                                 cache_path=tmp_path, batch_size=2)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert len(docs) == 3 and all(doc.text.startswith("<|im_start|>user\n") for doc in docs)
    assert all("<|im_start|>assistant\n" in doc.text for doc in docs)
    assert len(list(tmp_path.glob("*.jsonl"))) == 1

    monkeypatch.setattr(teacher_samples, "_generate", lambda *a, **k: pytest.fail("cache not used"))
    assert sample_teacher_corpus(tiny_llama, tiny_tokenizer, num_samples=3, max_new_tokens=5, seed=0,
                                 cache_path=tmp_path) == docs


def test_sample_teacher_corpus_plain_prompts_and_spec(tiny_llama, tiny_tokenizer_plain, tmp_path, monkeypatch):
    monkeypatch.setenv("LIZARDLM_CACHE", str(tmp_path))
    short = functools.partial(teacher_samples.sample_teacher_corpus, max_new_tokens=4)
    monkeypatch.setattr(teacher_samples, "sample_teacher_corpus", short)
    docs = load_documents("teacher-samples:2", teacher=(tiny_llama, tiny_tokenizer_plain))
    assert len(docs) == 2 and docs[0].source == "teacher-samples:2"
    assert docs[0].text.split("\n")[0] in teacher_samples.TOPIC_PROMPTS
    assert len(list((tmp_path / "teacher-samples").glob("*.jsonl"))) == 1


@pytest.mark.slow
def test_teacher_samples_from_smollm2(smollm2_teacher, tmp_path):
    model, tokenizer = smollm2_teacher
    docs = sample_teacher_corpus(model, tokenizer, num_samples=2, max_new_tokens=12, cache_path=tmp_path)
    assert len(docs) == 2 and all("<|im_start|>assistant\n" in doc.text for doc in docs)
    assert all(len(doc.text.split("<|im_start|>assistant\n")[1]) > 0 for doc in docs)


@pytest.mark.slow
def test_build_splits_default_smollm2(smollm2_teacher):
    _, tokenizer = smollm2_teacher
    splits = build_splits("default", tokenizer, seq_len=256, train_tokens=20_000, val_tokens=4_000)
    assert splits.train.shape == (79, 256) and splits.val.shape == (16, 256)
    assert int(splits.train.max()) < len(tokenizer)
