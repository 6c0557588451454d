"""The synthetic retrieval data spec, its held-out filler split, and weighted mixtures of specs."""

from __future__ import annotations

import copy
import json
import math
import random
import re
from pathlib import Path

import pytest
import torch

from lizardlm.data import build_splits, load_documents, pack_tokens
from lizardlm.data.mixture import lane_counts, parse_mixture
from lizardlm.data.packing import IGNORE_INDEX, document_starts, inputs_and_labels, lane_starts, without_loss
from lizardlm.data.retrieval import QUESTIONS, WORDINGS, FillerPool, make_example, parse_spec
from lizardlm.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


def _spec(books: Path, extra: str = "") -> str:
    return f"retrieval:count=6:length=256:seed=1:filler={books}{extra}"


def test_documents_have_exact_length_and_answers(books, tiny_tokenizer):
    docs = load_documents(_spec(books), tokenizer=tiny_tokenizer)
    assert len(docs) == 6
    for doc in docs:
        assert doc.token_ids.shape == (255,)  # + the eos packing appends = 256
        text = tiny_tokenizer.decode(doc.token_ids.tolist())
        assert text == doc.text and "What are the passkeys hidden in the text?" in text
        head, _, answers = text.partition("What are the passkeys hidden in the text?")
        for number in range(1, 6):
            needle = head.split(f"Passkey number {number} is ")[1].split(".")[0]
            assert needle.isdigit() and f"Passkey number {number} is {needle}." in answers
    rows = pack_tokens(docs, tiny_tokenizer, seq_len=256)
    assert rows.shape == (6, 256) and (rows[:, -1] == tiny_tokenizer.eos_token_id).all()


def test_answer_only_loss_keeps_the_tokens_and_targets_only_the_keys(books, tiny_tokenizer):
    """``loss=answers``: the same tokens as ``loss=all``, and after packing and splitting the labels
    are -100 everywhere except each key and its full stop in the question part (and the closing eos)."""
    plain = load_documents(_spec(books), tokenizer=tiny_tokenizer)
    masked = load_documents(_spec(books, ":loss=answers"), tokenizer=tiny_tokenizer)
    for a, b in zip(plain, masked):
        ids, labels = inputs_and_labels(b.token_ids)
        assert torch.equal(ids, a.token_ids) and b.text == a.text
        head, _, question = a.text.partition("What are the passkeys hidden in the text?")
        keys = sorted(head.split(f"Passkey number {n} is ")[1].split(".")[0] for n in range(1, 6))
        spans = tiny_tokenizer.decode(labels[labels != IGNORE_INDEX].tolist())
        assert sorted(spans.replace(".", " ").split()) == keys  # exactly the five keys, each with its "."
        assert spans.count(".") == 5
        first_target = int((labels != IGNORE_INDEX).nonzero()[0])
        before = tiny_tokenizer.decode(ids[:first_target].tolist())
        assert "What are the passkeys hidden in the text?" in before  # targets only in the question part
    splits = build_splits(_spec(books, ":loss=answers").replace("count=6", "count=8"), tiny_tokenizer, seq_len=256,
                          train_tokens=1024, val_tokens=256, seed=0)
    ids, labels = inputs_and_labels(splits.train)
    assert (ids >= 0).all() and ((labels != IGNORE_INDEX).sum(1) <= 5 * 8 + 5 + 1).all()
    assert (labels[:, -1] == tiny_tokenizer.eos_token_id).all()  # packing's eos stays a target


def test_shorter_documents_pack_several_to_a_row_each_with_its_answers(books, tiny_tokenizer):
    """At ``seq_len = 4 * length`` a row holds four whole documents in order (each closed by eos), and
    its targets are exactly the four documents' answers: the later ones are asked after the earlier
    ones' tokens as history."""
    docs = load_documents(_spec(books, ":loss=answers").replace("count=6", "count=8"), tokenizer=tiny_tokenizer)
    rows = pack_tokens(docs, tiny_tokenizer, seq_len=1024)
    assert rows.shape == (2, 1024)
    eos = tiny_tokenizer.eos_token_id
    for r in range(2):
        ids, labels = inputs_and_labels(rows[r])
        assert (ids.view(4, 256)[:, -1] == eos).all()
        want_ids, want_labels = zip(*(inputs_and_labels(doc.token_ids) for doc in docs[4 * r: 4 * r + 4]))
        assert torch.equal(ids.view(4, 256)[:, :-1], torch.stack(want_ids))
        assert torch.equal(labels.view(4, 256)[:, :-1], torch.stack(want_labels))


def test_varied_template_draws_a_wording_per_document_and_targets_its_answers(books, tiny_tokenizer):
    """``template=varied``: every document uses one (needle, answer prompt) wording and one question
    throughout; the answer-only targets are each key and its full stop, after the answer prompt."""
    docs = load_documents(_spec(books, ":template=varied:loss=answers").replace("count=6", "count=12"),
                          tokenizer=tiny_tokenizer)
    used = set()
    for doc in docs:
        ids, labels = inputs_and_labels(doc.token_ids)
        text = tiny_tokenizer.decode(ids.tolist())
        assert len(ids) == 255 and "pass key" not in text.lower()
        question = next(q for q in QUESTIONS if q.strip() in text)
        head, _, tail = text.partition(question.strip())
        needle_at, prompt_at = next(w for w in WORDINGS if w[0].format(index=1) in head)
        used.add(needle_at)
        keys = {n: head.split(f"{needle_at.format(index=n)} ")[1].split(".")[0] for n in range(1, 6)}
        assert all(f"{prompt_at.format(index=n)} {key}." in tail for n, key in keys.items())
        targets = tiny_tokenizer.decode(labels[labels != IGNORE_INDEX].tolist())
        assert sorted(targets.replace(".", " ").split()) == sorted(keys.values())
    assert len(used) >= 3
    plain = load_documents(_spec(books), tokenizer=tiny_tokenizer)
    explicit = load_documents(_spec(books, ":template=numbered"), tokenizer=tiny_tokenizer)
    assert all(torch.equal(a.token_ids, b.token_ids) for a, b in zip(plain, explicit))


@pytest.mark.parametrize("template", ["numbered", "varied"])
def test_pairs_bind_words_and_target_each_keys_value(books, tiny_tokenizer, template):
    """``needles=pairs``: each needle ties a key word to a value word (distinct single tokens, none of
    MQAR's evaluation words); the answer-only targets are exactly each key's value and its full stop,
    after the answer prompt naming that key."""
    from lizardlm.data.retrieval import PAIR_QUESTIONS, PAIR_WORDINGS, pair_words
    from lizardlm.eval.mqar import WORDS

    words = pair_words(tiny_tokenizer)
    assert not set(words) & set(WORDS)
    assert all(len(tiny_tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in words)
    spec = _spec(books, f":needles=pairs:keys=4:loss=answers:template={template}")
    docs = load_documents(spec, tokenizer=tiny_tokenizer)
    for doc in docs:
        ids, labels = inputs_and_labels(doc.token_ids)
        text = tiny_tokenizer.decode(ids.tolist())
        assert len(ids) == 255
        question = next(q for q in PAIR_QUESTIONS if q.strip() in text)
        head, _, tail = text.partition(question.strip())
        needle_at, prompt_at = next(w for w in PAIR_WORDINGS if w[0].split("{index}")[0] in head)
        before, after = needle_at.split("{index}")
        bound = {}
        for piece in head.split(before)[1:]:
            key, _, rest = piece.partition(after)
            bound[key] = rest.split(".")[0].strip()
        assert len(bound) == 4 and set(bound) | set(bound.values()) <= set(words)
        assert len(set(bound) | set(bound.values())) == 8
        assert all(f"{prompt_at.format(index=k)} {v}." in tail for k, v in bound.items())
        targets = tiny_tokenizer.decode(labels[labels != IGNORE_INDEX].tolist())
        assert sorted(targets.replace(".", " ").split()) == sorted(bound.values())
    again = load_documents(spec, tokenizer=tiny_tokenizer)
    assert all(torch.equal(a.token_ids, b.token_ids) for a, b in zip(docs, again))


def test_pairs_as_lines_take_mqars_format_and_target_each_value(books, tiny_tokenizer):
    """``template=lines``: every needle a ``key: value.`` line in the filler, the question of its own,
    then every key's line again with only its value (and full stop) as the target."""
    from lizardlm.data.retrieval import PAIR_LINES_QUESTION, pair_words
    from lizardlm.eval.mqar import HEADER, QUERY_HEADER

    words = set(pair_words(tiny_tokenizer))
    assert HEADER.strip() not in PAIR_LINES_QUESTION and QUERY_HEADER.strip() not in PAIR_LINES_QUESTION
    docs = load_documents(_spec(books, ":needles=pairs:keys=4:loss=answers:template=lines"), tokenizer=tiny_tokenizer)
    for doc in docs:
        ids, labels = inputs_and_labels(doc.token_ids)
        head, question, tail = tiny_tokenizer.decode(ids.tolist()).partition(PAIR_LINES_QUESTION.strip())
        assert question and len(ids) == 255
        bound = dict(re.findall(r"\n([a-z]+): ([a-z]+)\.", head))
        assert len(bound) == 4 and set(bound) | set(bound.values()) <= words
        assert len(set(bound) | set(bound.values())) == 8
        assert sorted(tail.strip().split("\n")) == sorted(f"{k}: {v}." for k, v in bound.items())
        targets = tiny_tokenizer.decode(labels[labels != IGNORE_INDEX].tolist())
        assert sorted(targets.replace(".", " ").split()) == sorted(bound.values())
    with pytest.raises(DataError, match="template=lines is the word pairs' line format: add needles=pairs"):
        load_documents(_spec(books, ":template=lines"), tokenizer=tiny_tokenizer)


def test_pairs_need_enough_words(books, tiny_tokenizer, monkeypatch):
    import lizardlm.eval.mqar as mqar

    few = mqar.word_tokens(tiny_tokenizer)[:15]
    monkeypatch.setattr(mqar, "word_tokens", lambda tokenizer: few)
    with pytest.raises(DataError, match="needles=pairs needs at least 16 single-token words; the tokenizer has 15"):
        load_documents(_spec(books, ":needles=pairs"), tokenizer=tiny_tokenizer)


def test_backend_encoding_gives_the_tokenizers_ids(tiny_tokenizer):
    from lizardlm.data.retrieval import _encode

    texts = [" Passkey number 3 is 40918273.", "\n\nWhat are the passkeys hidden in the text?", " Key #2 is",
             "naïve café \u0085 end", "  two  spaces", ""]
    assert tiny_tokenizer.is_fast
    for text in texts:
        assert _encode(tiny_tokenizer, text) == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_without_loss_round_trip():
    ids = torch.randint(0, 1000, (3, 17), generator=torch.Generator().manual_seed(0))
    targets = torch.rand(3, 17, generator=torch.Generator().manual_seed(1)) < 0.3
    back, labels = inputs_and_labels(without_loss(ids, targets))
    assert torch.equal(back, ids) and torch.equal(labels, torch.where(targets, ids, IGNORE_INDEX))


def test_seeded_and_held_out_filler(books, tiny_tokenizer):
    first = load_documents(_spec(books), tokenizer=tiny_tokenizer)
    again = load_documents(_spec(books), tokenizer=tiny_tokenizer)
    other = load_documents(_spec(books).replace("seed=1", "seed=2"), tokenizer=tiny_tokenizer)
    assert all(torch.equal(a.token_ids, b.token_ids) for a, b in zip(first, again))
    assert not all(torch.equal(a.token_ids, b.token_ids) for a, b in zip(first, other))
    assert not any("BOOK9" in doc.text for doc in first)  # the held-out tenth never fills training documents
    held_out = load_documents(_spec(books, ":split=eval"), tokenizer=tiny_tokenizer)
    assert not any(f"BOOK{i}" in doc.text for doc in held_out for i in range(9))
    assert [doc.text[:6] for doc in load_documents(f"{books}@eval")] == ["BOOK9 "]


def test_keys_and_depths(books, tiny_tokenizer):
    pool = FillerPool(load_documents(str(books)), tiny_tokenizer)
    example = make_example(pool, random.Random(0), 400, keys=3, key_tokens=(6, 6), ask=2, depths=[0.0, 0.5, 1.0])
    assert len(example.input_ids) == 400
    assert sorted(example.depths.values()) == pytest.approx([0.0, 0.5, 1.0], abs=0.05)
    assert all(len(tiny_tokenizer(key, add_special_tokens=False)["input_ids"]) == 6 for key in example.keys.values())
    assert tiny_tokenizer.decode(example.input_ids).endswith(" Passkey number 2 is")


@pytest.mark.parametrize(
    "spec, match",
    [("retrieval:count=x", "whole number"), ("retrieval:colour=red", "KEY=VALUE"), ("retrieval:keys=0", ">= 1"),
     ("retrieval:key-tokens=8-5", "LO-HI"), ("retrieval:split=test", "split"), ("retrieval:loss=keys", "loss"),
     ("retrieval:template=fancy", "template"), ("retrieval:needles=digits", "needles")],
)
def test_bad_specs(spec, match):
    with pytest.raises(DataError, match=match):
        parse_spec(spec)


def test_defaults_are_the_paper_protocol():
    spec = parse_spec("retrieval")
    assert (spec.count, spec.length, spec.keys, spec.key_tokens, spec.filler) == (10_000, 2048, 5, (5, 8), "long-docs")


def test_needs_a_tokenizer(books):
    with pytest.raises(DataError, match="tokenizer"):
        load_documents(_spec(books))


def test_parse_mixture():
    assert parse_mixture("mix:alpaca-cleaned=0.9,retrieval:count=7:length=64=0.1") == [
        ("alpaca-cleaned", 0.9), ("retrieval:count=7:length=64", pytest.approx(0.1))]
    assert parse_mixture("mix:a=3,b=1") == [("a", 0.75), ("b", 0.25)]
    for bad in ("mix:a", "mix:a=0,b=1", "mix:a=x", "mix:a=1,a=2"):
        with pytest.raises(DataError):
            parse_mixture(bad)
    with pytest.raises(DataError, match="mixture"):
        load_documents("mix:a=1")


def test_mixture_splits(books, tiny_tokenizer):
    wiki = str(FIXTURES / "wikitext_slice.txt")
    spec = f"mix:{wiki}=0.5,{_spec(books).replace('count=6', 'count=8')}=0.5"
    splits = build_splits(spec, tiny_tokenizer, seq_len=256, train_tokens=1024, val_tokens=512, seed=0)
    parts = splits.meta["parts"]
    assert [p["share"] for p in parts] == [0.5, 0.5] and parts[1]["meta"]["num_documents"] == 8
    assert splits.meta["train_rows"] == sum(p["meta"]["train_rows"] for p in parts) == splits.train.shape[0]
    passkey_rows = [row for row in splits.train if "Passkey number" in tiny_tokenizer.decode(row.tolist())]
    assert len(passkey_rows) == parts[1]["meta"]["train_rows"] == 2
    again = build_splits(spec, tiny_tokenizer, seq_len=256, train_tokens=1024, val_tokens=512, seed=0)
    assert torch.equal(again.train, splits.train) and torch.equal(again.val, splits.val)


@pytest.mark.parametrize("shares, lanes, counts", [
    ([0.5, 0.5], 8, [4, 4]), ([0.4, 0.4, 0.2], 8, [3, 3, 2]), ([0.9, 0.1], 8, [7, 1]), ([0.98, 0.02], 4, [3, 1]),
    ([1 / 3, 1 / 3, 1 / 3], 4, [2, 1, 1]), ([0.25, 0.75], 2, [1, 1]),
])
def test_lane_counts(shares, lanes, counts):
    assert lane_counts(shares, lanes) == counts


def test_a_mixture_in_order_gives_each_part_lanes_of_its_own(books, tiny_tokenizer):
    """In order, the train rows are lanes of one length: each part's by its share, each lane consecutive
    rows of its part (as the part alone in order would give them); the validation rows as without order."""
    wiki = str(FIXTURES / "wikitext_slice.txt")
    spec = f"mix:{wiki}=0.5,{_spec(books).replace('count=6', 'count=12')}=0.5"
    kw = dict(seq_len=64, train_tokens=64 * 8, val_tokens=128, seed=0)
    splits = build_splits(spec, tiny_tokenizer, in_order=True, lanes=4, **kw)
    shuffled = build_splits(spec, tiny_tokenizer, **kw)
    assert sorted(splits.val.tolist()) == sorted(shuffled.val.tolist()) and splits.meta["train_in_order"] is True
    assert [p["lanes"] for p in splits.meta["parts"]] == [2, 2] and splits.train.shape == (8, 64)
    lanes = splits.train.view(4, 2, 64)
    alone = [build_splits(name, tiny_tokenizer, seq_len=64, train_tokens=64 * 4, val_tokens=64, seed=0, in_order=True,
                          lanes=2).train.view(2, 2, 64) for name, _ in parse_mixture(spec)]
    assert torch.equal(lanes[:2], alone[0]) and torch.equal(lanes[2:], alone[1])
    with pytest.raises(DataError, match="batch-size must be at least 2"):
        build_splits(spec, tiny_tokenizer, in_order=True, lanes=1, **kw)


def test_a_short_part_grows_the_others_shares_and_the_mixture_says_so(books, tiny_tokenizer, caplog):
    """A part with fewer rows than its weight asks keeps what it has; the trained shares are recorded
    and the mixture warns with them (the asked shares beside)."""
    spec = f"mix:{_spec(books).replace('count=6', 'count=3')}=0.5,{_spec(books).replace('seed=1', 'seed=2')}=0.5"
    with caplog.at_level("WARNING", logger="lizardlm.data.mixture"):
        splits = build_splits(spec, tiny_tokenizer, seq_len=256, train_tokens=2048, val_tokens=512, seed=0)
    short, full = splits.meta["parts"]
    assert short["meta"]["shortfall"] and not full["meta"]["shortfall"] and splits.meta["shortfall"]
    assert short["train_share"] == short["meta"]["train_rows"] / splits.train.shape[0] < 0.5 < full["train_share"]
    message = next(r.getMessage() for r in caplog.records if r.name == "lizardlm.data.mixture")
    assert f"{full['train_share']:.1%} (asked 50.0%)" in message and "count=3" in message.split("ran short")[0]
    with caplog.at_level("WARNING", logger="lizardlm.data.mixture"):
        caplog.clear()
        build_splits(spec.replace("count=3", "count=8"), tiny_tokenizer, seq_len=256, train_tokens=1024, val_tokens=512)
    assert not [r for r in caplog.records if r.name == "lizardlm.data.mixture"]


def test_filler_tokens_are_cached_and_a_bad_cache_is_passed_by(tmp_path, monkeypatch, tiny_tokenizer):
    """The books' token ids are computed once per (texts, vocabulary) and read back identically; a
    corrupt cache file is recomputed; other texts get their own entry."""
    from lizardlm.data.sources import Document

    monkeypatch.setenv("LIZARDLM_CACHE", str(tmp_path))
    tok = tiny_tokenizer
    calls = []
    real = type(tok).__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(tok), "__call__", counting)
    docs = [Document("The quick brown fox jumps over the lazy dog. " * 20, "x"), Document("Another book, shorter.", "x")]
    first = FillerPool(docs, tok)
    (entry,) = (tmp_path / "filler").iterdir()
    assert len(calls) == 1
    second = FillerPool(docs, tok)
    assert len(calls) == 1
    assert all(torch.equal(a, b) for a, b in zip(first.streams, second.streams, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first.word_starts, second.word_starts, strict=True))
    entry.write_bytes(entry.read_bytes()[:-7])
    third = FillerPool(docs, tok)
    assert len(calls) == 2 and all(torch.equal(a, b) for a, b in zip(first.streams, third.streams, strict=True))
    FillerPool(docs[:1], tok)
    assert len(list((tmp_path / "filler").iterdir())) == 2


def test_stage2_loss_counts_only_the_tokens_with_loss(tiny_llama):
    from lizardlm.train.linearize import _lm_loss_fn

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tiny_llama.config.vocab_size, (2, 24), generator=gen)
    targets = torch.rand(2, 24, generator=gen) < 0.3
    loss, _ = _lm_loss_fn(tiny_llama)(without_loss(ids, targets))
    logits = tiny_llama(ids).logits.double()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    assert loss.item() == pytest.approx(nll[targets[:, 1:]].mean().item(), rel=1e-5)
    none, _ = _lm_loss_fn(tiny_llama)(without_loss(ids, torch.zeros_like(targets)))
    assert none.item() == 0.0 and none.requires_grad  # a batch without targets steps nothing, and does not stop


@pytest.mark.parametrize("seed", [0, 1])
def test_stage2_loss_averaged_over_rows(tiny_llama, seed):
    """``rows``: each row's mean NLL over its own targets, then the mean over rows that have any (float64
    reference; the value and every gradient); a row without targets adds nothing."""
    from lizardlm.train.linearize import _lm_loss_fn

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, tiny_llama.config.vocab_size, (4, 24), generator=gen)
    targets = torch.rand(4, 24, generator=gen) < torch.tensor([[0.9], [0.1], [0.0], [0.5]])
    targets[1, 5] = True  # row 1 has at least one target, row 2 none
    batch = without_loss(ids, targets)
    params = [p for p in tiny_llama.parameters() if p.requires_grad]
    loss, _ = _lm_loss_fn(tiny_llama, "rows")(batch)
    got = torch.autograd.grad(loss, params)
    double = copy.deepcopy(tiny_llama).double()
    logits = double(ids).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    mask = targets[:, 1:].double()
    rows = [r for r in range(4) if mask[r].any()]
    expected = torch.stack([(nll[r] * mask[r]).sum() / mask[r].sum() for r in rows]).mean()
    want = torch.autograd.grad(expected, [p for p in double.parameters() if p.requires_grad])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-7)
    tokens, _ = _lm_loss_fn(tiny_llama, "tokens")(batch)
    assert tokens.item() == pytest.approx(nll[targets[:, 1:]].mean().item(), rel=1e-5)
    assert abs(tokens.item() - loss.item()) > 1e-3  # the two averages differ on uneven rows
    none, _ = _lm_loss_fn(tiny_llama, "rows")(without_loss(ids, torch.zeros_like(targets)))
    assert none.item() == 0.0 and none.requires_grad


def test_linearize_on_answer_only_retrieval_mixture(books, teacher_dir, data_file, tmp_path):
    from lizardlm.train import TrainSettings, linearize

    spec = f"mix:{data_file}=0.5,{_spec(books, ':keys=1:key-tokens=3:loss=answers').replace('length=256', 'length=128')}=0.5"
    out = tmp_path / "run"
    summary = linearize(TrainSettings(
        teacher=str(teacher_dir), data=spec, seq_len=128, batch_size=4, stage1_tokens=128 * 4 * 3,
        stage2_tokens=128 * 4 * 3, val_tokens=128 * 4, checkpoint_every=2, device="cpu", loss_average="rows",
        lizard={"window_size": 8, "feature_dim": 8, "num_meta_tokens": 2, "chunk_size": 8}), out)
    assert all(map(math.isfinite, (summary["teacher_val_loss"], summary["stage1_val_loss"], summary["student_val_loss"])))
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["data"]["parts"][1]["spec"].endswith("loss=answers")
    assert manifest["settings"]["loss_average"] == "rows"


def test_cli_loss_average_is_a_setting_of_the_run(tmp_path, teacher_dir, data_file, capsys):
    """``--loss-average rows`` reaches run.json; resuming with the other average is refused (it changes
    the gradients), and an unknown average is one line."""
    from lizardlm.cli import main as cli_main
    from lizardlm.train import TrainSettings

    out = tmp_path / "run"
    argv = ["linearize", "--teacher", str(teacher_dir), "--data", str(data_file), "--out", str(out), "--seq-len", "32",
            "--batch-size", "4", "--stage1-tokens", "128", "--stage2-tokens", "256", "--val-tokens", "128",
            "--device", "cpu", "--feature-dim", "8", "--window-size", "8"]
    assert cli_main([*argv, "--loss-average", "rows"]) == 0
    assert json.loads((out / "run.json").read_text())["settings"]["loss_average"] == "rows"
    capsys.readouterr()
    assert cli_main([*argv, "--resume"]) != 0
    assert "settings differ from the original run (loss_average: 'rows' -> 'tokens')" in capsys.readouterr().err
    with pytest.raises(ValueError, match="loss-average must be one of tokens, rows"):
        TrainSettings(loss_average="sequences")


def test_lane_starts_move_on_to_a_document_start_in_reach():
    opens = torch.zeros(40, dtype=torch.bool)
    opens[::4] = True  # documents of 4 rows
    opens[[5, 6]] = True
    assert lane_starts(opens, 1, 40) == [0]
    assert lane_starts(opens, 3, 8) == [0, 16, 32]  # spread 0, 16, 32: all at starts already
    assert lane_starts(opens, 3, 11) == [0, 12, 28]  # spots 0, 14, 29: the nearest starts in reach
    ahead = torch.zeros(40, dtype=torch.bool)
    ahead[[0, 3, 30]] = True
    assert lane_starts(ahead, 2, 20) == [0, 20]  # 30 would run past the end: the lane starts mid-document
    for lanes, span in ((2, 20), (4, 9), (5, 8), (3, 13)):
        starts = lane_starts(opens, lanes, span)
        assert all(b - a >= span for a, b in zip(starts, starts[1:])) and starts[-1] + span <= 40


def test_lanes_read_documents_longer_than_a_row_from_their_first_row(books, tiny_tokenizer):
    """Retrieval documents of 4 rows, in 3 lanes: each lane starts at a document, so a document's rows
    come in order in one lane; ``train_follows`` is False at lane starts and after a validation row
    taken out, ``train_starts_document`` marks every fourth row, and ``passes_on`` combines them."""
    spec = f"retrieval:count=40:length=512:seed=1:filler={books}"
    splits = build_splits(spec, tiny_tokenizer, seq_len=128, train_tokens=128 * 3 * 40, val_tokens=128 * 4,
                          in_order=True, lanes=3)
    span = splits.train.shape[0] // 3
    assert splits.meta["lanes_at_document_start"] == 3 and splits.train_starts_document[::span].all()
    rows = pack_tokens(load_documents(spec, tokenizer=tiny_tokenizer), tiny_tokenizer, 128)
    opens = document_starts(rows, tiny_tokenizer.eos_token_id)
    assert opens.tolist() == [i % 4 == 0 for i in range(160)]
    where = [next(i for i in range(160) if torch.equal(rows[i], row)) for row in splits.train]
    for k in range(3):
        lane = where[k * span:(k + 1) * span]
        follows = splits.train_follows[k * span:(k + 1) * span].tolist()
        assert follows == [False] + [b == a + 1 for a, b in zip(lane, lane[1:])]
        assert splits.train_starts_document[k * span:(k + 1) * span].tolist() == [i % 4 == 0 for i in lane]
    assert splits.meta["rows_after_gap"] == (~splits.train_follows).sum().item() - 3 > 0  # validation took rows out
    kept = splits.passes_on(reset_at_documents=True)
    assert torch.equal(kept, splits.train_follows & ~splits.train_starts_document)
    assert torch.equal(splits.passes_on(reset_at_documents=False), splits.train_follows)
    with pytest.raises(ValueError, match="built in order"):
        build_splits(spec, tiny_tokenizer, seq_len=128, train_tokens=128 * 40, val_tokens=128 * 4).passes_on(True)


def test_a_mixture_in_order_keeps_each_lane_s_row_flags(books, tiny_tokenizer):
    spec = f"mix:retrieval:count=20:length=512:seed=1:filler={books}=1,{books}=1"
    splits = build_splits(spec, tiny_tokenizer, seq_len=128, train_tokens=128 * 4 * 16, val_tokens=128 * 4,
                          in_order=True, lanes=4)
    span = splits.train.shape[0] // 4
    assert splits.train_follows.shape == splits.train_starts_document.shape == (splits.train.shape[0],)
    assert not splits.train_follows[::span].any()
    first = splits.train_starts_document[: 2 * span].view(2, span)  # the retrieval part's two lanes
    assert first[:, 0].all() and first.sum().item() == 2 * math.ceil(span / 4)
