"""Multi-query associative recall (MQAR), as in Zoology / "Simple linear attention language models"
(Arora et al. 2023/2024), built from the model's own vocabulary so pretrained LMs can be probed.

A prompt holds ``num_pairs`` key-value pairs of single tokens (keys and values are disjoint sets of
ordinary word tokens such as " apple"), then queries of keys seen earlier. The model must predict
the value bound to each queried key. Queries are teacher-forced (each query is followed by its
value), so all queries of a prompt are scored in one forward pass: score = accuracy of the greedy
(argmax) next-token prediction at each query position.

Formats (``fmt``):

* ``"lines"`` (default, few-shot style a small pretrained LM can solve)::

      Memorize each word and its partner.
      apple: orange
      table: river
      ...

      Recall the partner of each word.
      table: river      <- scored: the prediction after "table:" must be " river"
      apple: orange

* ``"zoology"``: the synthetic sequence of the paper, without separators:
  ``k1 v1 k2 v2 ... kq vq ...`` (the prediction after each query key must be its value).

``seq_len`` pads the prompt to exactly that many tokens with filler text (neutral sentences, whole
sentences spread evenly between the pairs, the gaps grow with ``seq_len``; a partial sentence goes
first); queries follow the last pair. Without ``seq_len`` the prompt is as short as the format
allows.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from lizardlm.eval._utils import call_logits, encode, is_oom, model_device, split_on_oom
from lizardlm.progress import progress

FILLER_TEXT = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
HEADER = "Memorize each word and its partner.\n"
QUERY_HEADER = "\nRecall the partner of each word.\n"
_WORD = re.compile(r"^ [a-z]{3,10}$")

# ordinary English nouns; those the tokenizer keeps as one token are the key/value pools
WORDS = """
    apple table river garden window mountain bottle pencil candle forest island doctor teacher
    market castle bridge camera guitar planet rocket violin jacket basket button carpet cookie
    dragon engine farmer finger flower hammer helmet kitten ladder lemon letter lizard magnet
    mirror monkey needle orange parrot pepper pillow pirate pocket puppet rabbit ribbon saddle
    salmon shadow silver singer spider spoon square statue sugar summer sunset tiger tomato
    tunnel turtle valley wagon winter yellow anchor banana beach bread brick cabin chair chalk
    cheese cherry cloud coast coffee copper cotton crown desert diamond dinner eagle earth
    feather field flag frog glass glove grape grass honey horse house iron jelly kettle knife
    lamp leaf lion lock meadow metal milk moon mouse music nest ocean onion owl paint paper
    pearl piano pizza plate queen radio rain ring road rock rope salt sand school sheep shell
    ship shirt shoe snake snow soap socks stone storm stove street tea tent tower train tree
    truck violet wall water whale wheel wind wolf wood wool zebra army baby bag ball band bank
    bar bath bed bell bird blade board boat body bone book boot bottom bowl box boy brain branch
    brush bucket bull cake camp car card cart cat cave chain chicken child church circle city
    clock cloth coat coin cow cup curtain deer dog door dress drink drum duck dust egg eye face
    farm fence fire fish floor fog foot fork fox fruit game gate girl goat gold gun hair hand
    hat heart hill hole hook horn hotel ice ink jar jewel key king kite lake leg library light
    line map mask match meat mine mud nail neck net nose nut oil oven pan park path pen pig pin
    pipe pot prince rat roof room root rose sail seed shop sign skin sky smoke soup star stem
    stick store sword tail thread thumb ticket toe tongue tooth town toy tray van vase vest wave
    wheat whip wire worm yard
""".split()


@dataclass
class MQARVocab:
    """Token pools for MQAR prompts: disjoint ``keys`` and ``values`` (single word tokens)."""

    keys: list[int]
    values: list[int]
    sep: list[int]  # ids between key and value ("lines": ":")
    newline: list[int]  # ids after a pair ("lines": "\n")
    filler: list[int]  # one unit of filler text
    header: list[int] = field(default_factory=list)  # before the pairs ("lines")
    query_header: list[int] = field(default_factory=list)  # between pairs and queries ("lines")


@dataclass
class MQARPrompt:
    input_ids: list[int]
    query_positions: list[int]  # positions whose next-token prediction is scored
    targets: list[int]  # the value token expected after each query position
    pairs: list[tuple[int, int]] = field(default_factory=list)
    num_pairs: int = 0
    seq_len: int = 0


def word_tokens(tokenizer: Any, min_len: int = 3, max_len: int = 10) -> list[int]:
    """Ids of ordinary lowercase word tokens with a leading space (e.g. " apple") that the tokenizer
    encodes back to exactly that single token."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = sorted(set(vocab.values())) if vocab else list(range(len(tokenizer)))
    out = []
    for i in ids:
        if i in special:
            continue
        s = tokenizer.decode([i])
        if not _WORD.match(s) or not (min_len <= len(s) - 1 <= max_len):
            continue
        if encode(tokenizer, s) != [i]:
            continue
        out.append(i)
    return out


def _single(tokenizer: Any, text: str) -> int | None:
    ids = encode(tokenizer, text)
    return ids[0] if len(ids) == 1 else None


def build_vocab(tokenizer: Any, seed: int = 0, fmt: str = "lines") -> MQARVocab:
    """Disjoint key and value token pools (deterministic per seed) and the format's glue tokens.

    Words come from :data:`WORDS` (common nouns). Values are " word" tokens; in the "lines" format
    keys start a line, so they are "word" tokens (without the space) where the tokenizer has them.
    Tokenizers with fewer than 16 such words fall back to all lowercase " word" tokens of the vocab.
    """
    if fmt not in ("lines", "zoology"):
        raise ValueError(f"unknown MQAR format {fmt!r} (lines or zoology)")
    lines = fmt == "lines"
    filler = encode(tokenizer, FILLER_TEXT.strip() + "\n") if lines else encode(tokenizer, FILLER_TEXT)
    banned = set(filler)
    rng = random.Random(seed)
    cands = []  # (key_id or None, value_id)
    for w in WORDS:
        v = _single(tokenizer, " " + w)
        if v is None or v in banned:
            continue
        k = _single(tokenizer, w) if lines else v
        cands.append((k if k not in banned else None, v))
    if len(cands) < 16:
        ids = [i for i in word_tokens(tokenizer) if i not in banned]
        cands = [(i, i) for i in ids]
    if len(cands) < 16:
        raise ValueError(f"tokenizer has only {len(cands)} usable word tokens; MQAR needs at least 16")
    rng.shuffle(cands)
    keyable = [c for c in cands if c[0] is not None]
    n_keys = min(len(keyable), len(cands) // 2)
    key_set = keyable[:n_keys]
    taken = {id(c) for c in key_set}
    values = [c[1] for c in cands if id(c) not in taken]
    keys = [c[0] for c in key_set]
    if lines:
        sep, newline = encode(tokenizer, ":"), encode(tokenizer, "\n")
        header, qheader = encode(tokenizer, HEADER), encode(tokenizer, QUERY_HEADER)
    else:
        sep, newline, header, qheader = [], [], [], []
    return MQARVocab(keys=sorted(keys), values=sorted(values), sep=sep, newline=newline, filler=filler,
                     header=header, query_header=qheader)


def min_length(num_pairs: int, vocab: MQARVocab, num_queries: int | None = None) -> int:
    q = num_pairs if num_queries is None else num_queries
    unit = 2 + len(vocab.sep) + len(vocab.newline)
    return unit * (num_pairs + q) + len(vocab.header) + len(vocab.query_header)


def make_prompt(
    vocab: MQARVocab,
    num_pairs: int,
    rng: random.Random,
    seq_len: int | None = None,
    num_queries: int | None = None,
) -> MQARPrompt:
    """One MQAR prompt (see module docstring). ``num_queries`` defaults to ``num_pairs`` (each key
    queried once, in random order); more queries than pairs repeat keys."""
    if num_pairs > min(len(vocab.keys), len(vocab.values)):
        raise ValueError(f"num_pairs={num_pairs} exceeds the key/value pools ({len(vocab.keys)}, {len(vocab.values)})")
    q = num_pairs if num_queries is None else num_queries
    keys = rng.sample(vocab.keys, num_pairs)
    values = rng.sample(vocab.values, num_pairs)
    pairs = list(zip(keys, values))
    if q <= num_pairs:
        queried = rng.sample(pairs, q)
    else:
        queried = [rng.choice(pairs) for _ in range(q)]

    def unit(k: int, v: int) -> list[int]:
        return [k, *vocab.sep, v, *vocab.newline]

    base = min_length(num_pairs, vocab, q)
    pad = 0 if seq_len is None else seq_len - base
    if pad < 0:
        raise ValueError(f"seq_len={seq_len} is shorter than the {base} tokens {num_pairs} pairs need")
    # filler between pairs (after each pair) in whole units of filler text, spread evenly; the
    # remainder (less than one unit) is the tail of a unit put at the very start
    unit_len = len(vocab.filler)
    n_units, rest = divmod(pad, unit_len)
    gaps = [n_units // num_pairs + (1 if i >= num_pairs - n_units % num_pairs else 0) for i in range(num_pairs)]
    ids: list[int] = list(vocab.filler[unit_len - rest :]) if rest else []
    ids += vocab.header
    for (k, v), g in zip(pairs, gaps):
        ids += unit(k, v)
        ids += vocab.filler * g
    ids += vocab.query_header
    qpos, targets = [], []
    for k, v in queried:
        ids.append(k)
        ids += vocab.sep
        qpos.append(len(ids) - 1)
        targets.append(v)
        ids.append(v)
        ids += vocab.newline
    return MQARPrompt(ids, qpos, targets, pairs, num_pairs, len(ids))


def make_prompts(
    tokenizer: Any,
    num_pairs: int,
    n: int,
    seq_len: int | None = None,
    fmt: str = "lines",
    seed: int = 0,
    vocab: MQARVocab | None = None,
    num_queries: int | None = None,
) -> list[MQARPrompt]:
    vocab = vocab or build_vocab(tokenizer, seed=0, fmt=fmt)
    rng = random.Random(f"{seed}-{num_pairs}-{seq_len}-{fmt}")
    return [make_prompt(vocab, num_pairs, rng, seq_len, num_queries) for _ in range(n)]


def query_hits(model: Any, prompts: Sequence[MQARPrompt]) -> list[list[bool]]:
    """Whether the greedy prediction at each query of each of ``prompts`` (equal lengths) is its target,
    in one forward."""
    x = torch.tensor([p.input_ids for p in prompts], dtype=torch.long, device=model_device(model))
    logits = call_logits(model, x)
    out = []
    for b, p in enumerate(prompts):
        pred = logits[b, torch.tensor(p.query_positions, device=logits.device)].argmax(-1).tolist()
        out.append([a == t for a, t in zip(pred, p.targets)])
    return out


def score_prompts(model: Any, prompts: Sequence[MQARPrompt], batch_size: int = 8, progress_bar: bool = False, desc: str = "mqar") -> dict:
    """Greedy next-token accuracy at the query positions of ``prompts``: one forward per batch of
    equal-length prompts (a batch that runs out of memory is split)."""
    correct = total = 0
    by_len: dict[int, list[MQARPrompt]] = {}
    for p in prompts:
        by_len.setdefault(len(p.input_ids), []).append(p)
    bar = progress(total=len(prompts), enable=progress_bar, desc=desc, unit="prompt")
    for _, group in sorted(by_len.items()):
        for i in range(0, len(group), max(1, batch_size)):
            chunk = group[i : i + batch_size]
            correct += sum(map(sum, split_on_oom(lambda ps: query_hits(model, ps), chunk)))
            total += sum(len(p.targets) for p in chunk)
            bar.update(len(chunk))
    bar.close()
    return {"acc": correct / total if total else float("nan"), "correct": correct, "queries": total, "prompts": len(prompts)}


def mqar_eval(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[int] = (2, 4, 8, 16, 32),
    lengths: Sequence[int] = (128, 256, 512, 1024),
    length_pairs: int = 8,
    n: int = 20,
    fmt: str = "lines",
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Accuracy vs number of pairs (shortest prompts) and vs sequence length (``length_pairs`` pairs
    padded with filler to each length), ``n`` prompts per setting.

    Returns ``{"format", "by_pairs": [{"pairs", "seq_len", "acc", "chance", ...}], "by_length": [...],
    "mean_acc"}`` where ``chance`` = 1/pairs (a uniform guess among the prompt's values);
    a setting that runs out of memory is recorded with ``"status": "skipped (...)"``.
    """
    vocab = build_vocab(tokenizer, seed=0, fmt=fmt)
    out: dict[str, Any] = {
        "format": fmt,
        "n_prompts": n,
        "key_pool": len(vocab.keys),
        "value_pool": len(vocab.values),
        "by_pairs": [],
        "by_length": [],
    }
    settings = [("by_pairs", p, None) for p in pairs]
    settings += [("by_length", length_pairs, L) for L in lengths]
    bar = _bar(len(settings), progress)
    for kind, p, L in settings:
        rec: dict[str, Any] = {"pairs": p, "seq_len": L, "chance": 1.0 / p}
        try:
            prompts = make_prompts(tokenizer, p, n, seq_len=L, fmt=fmt, seed=seed, vocab=vocab)
            rec["seq_len"] = len(prompts[0].input_ids)
            rec.update(score_prompts(model, prompts, batch_size=batch_size))
            rec["status"] = "ok"
        except ValueError as err:
            rec.update(status=f"skipped ({err})", acc=None)
        except (RuntimeError, MemoryError) as err:
            if not is_oom(err):
                raise
            rec.update(status="skipped (out of memory)", acc=None)
        out[kind].append(rec)
        bar.update(1)
        bar.set_postfix(last=f"{kind}:{p}p/{rec['seq_len']}t acc={rec.get('acc')}")
    bar.close()
    accs = [r["acc"] for r in out["by_pairs"] + out["by_length"] if r.get("acc") is not None]
    out["mean_acc"] = sum(accs) / len(accs) if accs else None
    return out


def _bar(total: int, enable: bool):
    return progress(total=total, enable=enable, desc="mqar", unit="setting")


__all__ = [
    "MQARPrompt",
    "MQARVocab",
    "build_vocab",
    "make_prompt",
    "make_prompts",
    "mqar_eval",
    "score_prompts",
    "word_tokens",
]
