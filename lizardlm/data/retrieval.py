"""Synthetic passkey-retrieval documents (the paper's training protocol), generated from a seed.

Spec: ``retrieval[:KEY=VALUE]...`` (parameters joined by ``:`` so that they survive inside a
``mix:`` spec, whose entries are joined by ``,``)::

    retrieval                                  10,000 documents of 2048 tokens, 5 keys of 5-8 tokens
    retrieval:count=700:length=4096:seed=3
    retrieval:filler=my_books.jsonl:split=eval

``count`` (10000), ``length`` (2048: tokens per document including the eos that packing appends,
so a document fills one row when ``length == seq_len``; at ``seq_len = k * length`` a row packs k
documents, each asked after the earlier ones' tokens as history, where a reused wording binds a
phrase twice and the answer is the later binding), ``keys`` (5 passkeys per document),
``key-tokens`` (5-8: the length of each key in tokens, drawn uniformly), ``seed`` (0), ``filler``
(``long-docs``: the Gutenberg books of the shared data directory, or any data spec), ``split``
(``train``: the filler documents without the held-out tenth; ``eval``: only the held-out tenth,
see :func:`lizardlm.data.sources.held_out_split`), ``loss`` (``all`` or ``answers``, below), ``template`` (``numbered``,
below, or ``varied``: each document draws one of :data:`WORDINGS` for its needles and answers and
one of :data:`QUESTIONS`, so that a lookup is not learned as one sentence; none of them uses the
evaluation template's words; or ``lines``, word pairs only, below), ``needles`` (``passkeys``, the
paper's digit keys behind a numbered phrase, or ``pairs``: associative recall of word pairs, below).

``needles=pairs`` binds arbitrary words instead: each needle ties a key word to a value word (``The
word lamp goes with wheat.``, :data:`PAIR_WORDINGS`) and the answers give each key's value (``The
word lamp goes with`` -> `` wheat.``). Keys and values are distinct single-token words of the
tokenizer's vocabulary, drawn per document; the words of the MQAR evaluation
(:data:`lizardlm.eval.mqar.WORDS`) and its wording are left out, so MQAR measures recall of pairs
never trained on. ``key-tokens`` does not apply (a value is one token). The passkey lookup does not
carry to MQAR (``benchmarks/NOTES.md``): it is learned as a task of its own, and this is the general one.
``template=lines`` writes the pairs in MQAR's own format instead, one ``key: value.`` line a needle
(``\nlamp: wheat.``), and asks for them as lines after a question of its own (:data:`PAIR_LINES_QUESTION`,
not MQAR's header words): word pairs in sentences taught little and cost the language model much
(``mixr2k-pairs``, ``benchmarks/NOTES.md``).

A document (the training template; the evaluation template of :mod:`lizardlm.eval.passkey` is
another one)::

    <book text> Passkey number 3 is 40918273. <book text> Passkey number 1 is 55102. <book text> ...
    <book text>

    What are the passkeys hidden in the text? Passkey number 2 is 7730461. Passkey number 5 is ...

Needles sit at uniform random depths of a contiguous span of one book, cut at word boundaries;
they are numbered in random order and asked for in another random order. Keys are digit strings.
Documents carry their exact token ids (:attr:`Document.token_ids`), so ``length`` holds exactly.

Loss: with ``loss=all`` (the default) stage 2 trains on the next-token loss of every token: the
filler is ordinary book text whose loss is ordinary language modelling, and only the answer tokens
(about 30 of 2048) teach retrieval, which is why all keys are asked for in every document. In a
mixture that is about 1% of the loss. ``loss=answers`` keeps only the answers (each key and its
full stop, after "Passkey number j is") as targets and marks every other token input-only
(:func:`lizardlm.data.packing.without_loss`): all of the document's gradient then teaches retrieval,
and the filler still passes through the model (and stage 1's attention transfer) as input. In a
mixture, stage 2's default token average still gives such a row (~43 answer tokens) 1/48 the weight
of a row of text (2,047 targets): with ``--loss-average rows`` each row weighs the same.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from lizardlm.data.packing import without_loss
from lizardlm.data.sources import Document, held_out_split, load_documents
from lizardlm.errors import CheckpointError, DataError

QUESTION = "\n\nWhat are the passkeys hidden in the text?"
ANSWER_PROMPT = " Passkey number {index} is"
"""The training template's needle and answer prompt, each followed by `` {key}.``."""
WORDINGS = (
    (ANSWER_PROMPT, ANSWER_PROMPT),
    (" The secret code {index} is", " The secret code {index} is"),
    (" Remember that key #{index} is", " Key #{index} is"),
    (" Magic number {index}:", " Magic number {index}:"),
    (" The access code for door {index} is", " Door {index} opens with"),
    (" Note {index} says", " Note {index} says"),
)
"""``template=varied``: (needle, answer prompt) pairs, the needle followed by `` {key}.``, the answer
prompt by the same; none uses the evaluation template's words (:mod:`lizardlm.eval.passkey`)."""
QUESTIONS = (
    QUESTION,
    "\n\nWhich numbers were hidden in the text above?",
    "\n\nRecall every code from the text.",
    "\n\nList the hidden numbers.",
)
PAIR_WORDINGS = (
    (" The word {index} goes with", " The word {index} goes with"),
    (" Remember: {index} pairs with", " {index} pairs with"),
    (" Link {index} to", " Link {index} to"),
    (" Whenever you read {index}, think of", " {index} makes you think of"),
    (" Tie {index} to", " {index} is tied to"),
)
"""``needles=pairs``: (needle, answer prompt) pairs, ``{index}`` the key word, each followed by
`` {value}.``; none uses the MQAR evaluation's ``word: value`` lines or its "partner" wording."""
PAIR_QUESTIONS = (
    "\n\nWhich word goes with each word above?",
    "\n\nRecall the linked words.",
    "\n\nName each match from the text.",
)
PAIR_LINES = ("\n{index}:", "\n{index}:")
"""``needles=pairs:template=lines``: MQAR's own ``key: value`` lines as (needle, answer prompt), each
followed by `` {value}.``, the answers asked after :data:`PAIR_LINES_QUESTION` (not MQAR's header words)."""
PAIR_LINES_QUESTION = "\n\nEach word above and its match:"
SPLITS = ("train", "eval")
LOSSES = ("all", "answers")
TEMPLATES = ("numbered", "varied", "lines")
NEEDLES = ("passkeys", "pairs")
WORD_STARTS = ("Ġ", "Ċ", "▁", " ", "\n")  # byte-level BPE, sentencepiece and plain spellings of a leading space


@dataclass(frozen=True)
class RetrievalSpec:
    """Parameters of a ``retrieval`` data spec (see the module docstring)."""

    count: int = 10_000
    length: int = 2048
    keys: int = 5
    key_tokens: tuple[int, int] = (5, 8)
    seed: int = 0
    filler: str = "long-docs"
    split: str = "train"
    loss: str = "all"
    template: str = "numbered"
    needles: str = "passkeys"

    def __post_init__(self) -> None:
        if self.count < 1 or self.keys < 1 or self.length < 2:
            raise DataError(f"retrieval: count and keys must be >= 1 and length >= 2, got {self}")
        lo, hi = self.key_tokens
        if not 1 <= lo <= hi:
            raise DataError(f"retrieval: key-tokens must be LO-HI with 1 <= LO <= HI, got {lo}-{hi}")
        if self.split not in SPLITS:
            raise DataError(f"retrieval: split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.loss not in LOSSES:
            raise DataError(f"retrieval: loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.template not in TEMPLATES:
            raise DataError(f"retrieval: template must be one of {', '.join(TEMPLATES)}, got {self.template!r}")
        if self.needles not in NEEDLES:
            raise DataError(f"retrieval: needles must be one of {', '.join(NEEDLES)}, got {self.needles!r}")
        if self.template == "lines" and self.needles != "pairs":
            raise DataError("retrieval: template=lines is the word pairs' line format: add needles=pairs")


def is_retrieval_spec(spec: str) -> bool:
    return spec == "retrieval" or spec.startswith("retrieval:")


def parse_spec(spec: str) -> RetrievalSpec:
    """``retrieval[:KEY=VALUE]...`` -> :class:`RetrievalSpec`; DataError on unknown or bad values."""
    names = {f.name.replace("_", "-"): f.name for f in fields(RetrievalSpec)}
    values: dict[str, Any] = {}
    for part in spec.split(":")[1:]:
        key, sep, value = part.partition("=")
        if not sep or key not in names:
            raise DataError(f"data spec {spec!r}: expected KEY=VALUE with KEY one of {', '.join(names)}, got {part!r}")
        name = names[key]
        try:
            if name == "key_tokens":
                lo, _, hi = value.partition("-")
                values[name] = (int(lo), int(hi or lo))
            elif name in ("filler", "split", "loss", "template", "needles"):
                values[name] = value
            else:
                values[name] = int(value)
        except ValueError:
            raise DataError(f"data spec {spec!r}: {key} must be a whole number{' or LO-HI' if key == 'key-tokens' else ''}, got {value!r}") from None
    return RetrievalSpec(**values)


@dataclass
class RetrievalExample:
    """One document's token ids, its keys, where each needle starts and the share of the filler
    before it (its depth), all by passkey number; ``answers``: the ``[start, end)`` token span of each
    asked key's answer in the question part (the training template's; empty for a prompt);
    ``continuation``: a prompt's right continuation, the tokens training scores as its answer."""

    input_ids: list[int]
    keys: dict[int, str]
    needle_starts: dict[int, int]
    depths: dict[int, float]
    answers: dict[int, tuple[int, int]] = field(default_factory=dict)
    continuation: list[int] = field(default_factory=list)


class FillerPool:
    """Token streams of long documents to cut filler from, with the positions where words start."""

    def __init__(self, documents: list[Document], tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        starts = torch.tensor([bool(t) and t.startswith(WORD_STARTS) for t in vocab])
        self.streams = [ids for ids in _encoded_streams(documents, tokenizer, vocab) if ids.numel()]
        self.word_starts = [torch.nonzero(starts[ids]).flatten() for ids in self.streams]
        if not self.streams:
            raise DataError("retrieval filler has no text")

    def span(self, rng: random.Random, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` consecutive tokens of one document starting at a word, and the word starts within
        them (offsets from the span start); a document shorter than ``n`` is repeated."""
        pick = rng.randrange(len(self.streams))
        ids, words = self.streams[pick], self.word_starts[pick]
        if ids.numel() < n + 1:
            reps = n // ids.numel() + 2
            ids = ids.repeat(reps)
            words = torch.cat([words + i * self.streams[pick].numel() for i in range(reps)])
        # word starts are sorted: binary searches instead of masks over a whole book's words
        last = int(torch.searchsorted(words, ids.numel() - n, right=True))  # candidates: words[:last]
        start = int(words[rng.randrange(last)]) if last else 0
        lo, hi = torch.searchsorted(words, torch.tensor([start, start + n])).tolist()
        return ids[start:start + n], words[lo:hi] - start


def _encoded_streams(documents: list[Document], tokenizer: Any, vocab: list[str]) -> list[torch.Tensor]:
    """Each document's token ids (no special tokens), cached under ``<lizardlm cache>/filler/``: the
    books take tens of seconds to tokenize and every run, resumed run and evaluation needs them again.
    The key hashes the texts and the tokenizer's vocabulary; a cache that cannot be read or written
    is passed by (the ids are computed)."""
    from lizardlm.teachers import cache_dir
    from lizardlm.train.checkpoint import atomic_save, load_checked

    digest = hashlib.sha256("\x00".join(map(str, vocab)).encode())
    for doc in documents:
        digest.update(hashlib.sha256(doc.text.encode()).digest())
    path = cache_dir() / "filler" / f"{digest.hexdigest()[:32]}.safetensors"
    try:
        tensors = load_checked(path)[0]
        return list(tensors["ids"].long().split(tensors["lengths"].tolist()))
    except (CheckpointError, KeyError, RuntimeError):
        pass
    encoded = tokenizer([doc.text for doc in documents], add_special_tokens=False, verbose=False)["input_ids"]
    streams = [torch.tensor(ids, dtype=torch.long) for ids in encoded]
    if not streams:
        return streams
    lengths = torch.tensor([ids.numel() for ids in streams], dtype=torch.long)
    try:
        atomic_save({"ids": torch.cat(streams).to(torch.int32), "lengths": lengths}, path)
    except CheckpointError:
        pass
    return streams


def pair_words(tokenizer: Any) -> list[str]:
    """The words ``needles=pairs`` draws keys and values from: lowercase words of 3-10 letters that the
    tokenizer holds as one token with a leading space (:func:`lizardlm.eval.mqar.word_tokens`), less the
    MQAR evaluation's words; sorted, without the space."""
    from lizardlm.eval.mqar import WORDS, word_tokens

    held_out = set(WORDS)
    words = sorted({w for w in (tokenizer.decode([i]).strip() for i in word_tokens(tokenizer)) if w not in held_out})
    if len(words) < 16:
        raise DataError(f"retrieval: needles=pairs needs at least 16 single-token words; the tokenizer has {len(words)}")
    return words


def make_key(tokenizer: Any, rng: random.Random, num_tokens: int) -> str:
    """A random digit string of ``num_tokens`` tokens (counted without a leading space)."""
    key = str(rng.randint(1, 9))
    while len(_encode(tokenizer, key)) < num_tokens:
        key += str(rng.randint(0, 9))
    return key


def make_example(
    pool: FillerPool,
    rng: random.Random,
    length: int,
    keys: int = 5,
    key_tokens: tuple[int, int] = (5, 8),
    ask: int | None = None,
    depths: list[float] | None = None,
    template: str = "numbered",
    words: list[str] | None = None,
) -> RetrievalExample:
    """A document of exactly ``length`` tokens: filler with ``keys`` needles, the question, then
    every answer (``ask=None``, training) or only the prompt for passkey number ``ask`` (evaluation,
    the key is the continuation). ``depths[i - 1]`` places passkey number i (default: uniform random).
    ``template="varied"`` draws the document's wording from :data:`WORDINGS` and :data:`QUESTIONS`;
    ``template="lines"`` (pairs only) writes :data:`PAIR_LINES`.
    With ``words`` (``needles=pairs``) each needle ties a key word to a value word, all drawn from
    ``words`` without repeats (:data:`PAIR_WORDINGS`, :data:`PAIR_QUESTIONS`); ``example.keys`` holds
    the values by needle number."""
    tok = pool.tokenizer
    wordings, questions = (WORDINGS, QUESTIONS) if words is None else (PAIR_WORDINGS, PAIR_QUESTIONS)
    needle_at, prompt_at, question = wordings[0] + (questions[0],)
    if template == "varied":
        (needle_at, prompt_at), question = rng.choice(wordings), rng.choice(questions)
    elif template == "lines":
        (needle_at, prompt_at), question = PAIR_LINES, PAIR_LINES_QUESTION
    if words is None:
        names = {i: str(i) for i in range(1, keys + 1)}
        secrets = {i: make_key(tok, rng, rng.randint(*key_tokens)) for i in range(1, keys + 1)}
    else:
        drawn = rng.sample(words, 2 * keys)
        names, secrets = dict(zip(range(1, keys + 1), drawn[:keys])), dict(zip(range(1, keys + 1), drawn[keys:]))
    wanted = dict(zip(rng.sample(range(1, keys + 1), keys), (rng.random() for _ in range(keys))))
    if depths is not None:
        wanted.update(zip(range(1, keys + 1), depths))
    numbers = sorted(wanted, key=wanted.get)  # needle order in the text
    needles = [_encode(tok, f"{needle_at.format(index=names[i])} {secrets[i]}.") for i in numbers]
    asked = rng.sample(range(1, keys + 1), keys) if ask is None else [ask]
    tail = _encode(tok, question)
    answers: dict[int, tuple[int, int]] = {}  # offsets in the tail for now
    continuation: list[int] = []
    for i in asked:
        given, answer = answer_tokens(tok, names[i], secrets[i], prompt_at)
        if ask is None:
            answers[i] = (len(tail) + len(given), len(tail) + len(given) + len(answer))
            tail += given + answer
        else:
            tail += _encode(tok, prompt_at.format(index=names[i]))
            continuation = continuation_tokens(tok, prompt_at, secrets[i], names[i])
    n_filler = length - sum(map(len, needles)) - len(tail)
    if n_filler < 1:
        raise DataError(f"retrieval: length {length} leaves no room for filler ({length - n_filler} tokens of needles and answers)")
    filler, words = pool.span(rng, n_filler)
    cuts = [_snap(words, round(wanted[i] * n_filler), n_filler) for i in numbers]
    ids: list[int] = []
    starts: dict[int, int] = {}
    placed: dict[int, float] = {}
    prev = 0
    for number, needle, cut in zip(numbers, needles, cuts):
        ids += filler[prev:cut].tolist()
        starts[number] = len(ids)
        placed[number] = cut / n_filler
        ids += needle
        prev = cut
    ids += filler[prev:].tolist()
    answers = {i: (len(ids) + a, len(ids) + b) for i, (a, b) in answers.items()}
    ids += tail
    return RetrievalExample(ids, secrets, starts, placed, answers, continuation)


def answer_tokens(tokenizer: Any, index: int | str, key: str, prompt_at: str = ANSWER_PROMPT) -> tuple[list[int], list[int]]:
    """The answer sentence of passkey ``index`` split into what is given (``prompt_at``, e.g.
    ``" Passkey number {index} is"``) and the answer (the key and its full stop); all answer where
    the tokenizer merges across that cut."""
    piece = _encode(tokenizer, f"{prompt_at.format(index=index)} {key}.")
    prompt = _encode(tokenizer, prompt_at.format(index=index))
    given = len(prompt) if piece[: len(prompt)] == prompt else 0
    return piece[:given], piece[given:]


def continuation_tokens(tokenizer: Any, prompt_at: str, key: str, index: int | str = 0) -> list[int]:
    """The tokens that continue ``prompt_at`` (formatted with ``index``) with the key and its full stop,
    as :func:`answer_tokens` splits them; `` {key}.`` alone where the tokenizer merges across the cut."""
    given, answer = answer_tokens(tokenizer, index, key, prompt_at)
    return answer if given else _encode(tokenizer, f" {key}.")


def retrieval_documents(spec: str, tokenizer: Any) -> list[Document]:
    """The documents of a ``retrieval`` spec, each with exact token ids (``length - 1`` of them:
    packing appends the eos); with ``loss=answers`` all but the answers are input-only."""
    if tokenizer is None:
        raise DataError(f"data spec {spec!r} is generated in tokens: pass a tokenizer")
    params = parse_spec(spec)
    pool = FillerPool(held_out_split(load_documents(params.filler), params.split), tokenizer)
    words = pair_words(tokenizer) if params.needles == "pairs" else None
    rng = random.Random(params.seed)
    docs = []
    for _ in range(params.count):
        example = make_example(pool, rng, params.length - 1, params.keys, params.key_tokens, template=params.template,
                               words=words)
        ids = torch.tensor(example.input_ids, dtype=torch.long)
        if params.loss == "answers":
            targets = torch.zeros_like(ids, dtype=torch.bool)
            for start, end in example.answers.values():
                targets[start:end] = True
            ids = without_loss(ids, targets)
        docs.append(Document(tokenizer.decode(example.input_ids), spec, token_ids=ids))
    return docs


def _encode(tokenizer: Any, text: str) -> list[int]:
    """``text``'s token ids without special tokens; through the fast tokenizer's Rust backend where there
    is one (the same ids; Python's per-call overhead was half of building the paper's 10,000 documents)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        return backend.encode(text, add_special_tokens=False).ids
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _snap(words: torch.Tensor, pos: int, n: int) -> int:
    """The word start nearest ``pos`` (``pos`` itself at either end or without word starts)."""
    if pos <= 0 or pos >= n or words.numel() == 0:
        return max(0, min(pos, n))
    return int(words[(words - pos).abs().argmin()])
