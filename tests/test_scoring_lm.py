"""Fast multiple-choice scoring (``ScoringLM``) gives lm-eval HFLM's log-likelihoods and greedy flags
on every task's requests, at any batch size, with truncation; ``run_harness`` metrics match; the
Python prompt functions give the requests lm-eval's jinja templates gave."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))
from eval_stubs import DATA_DIR, tiny_llama, tiny_tokenizer  # noqa: E402

from lizardlm.errors import LizardError  # noqa: E402
from lizardlm.eval import run_harness  # noqa: E402
from lizardlm.eval.harness import make_lm  # noqa: E402
from lizardlm.eval.tasks import MC_TASKS, load_local_task_data, task_configs  # noqa: E402

pytest.importorskip("lm_eval")

# lm-eval 0.4's jinja templates, which the task configs replaced with Python functions
JINJA = {
    "piqa": {"doc_to_text": "Question: {{goal}}\nAnswer:", "doc_to_choice": "{{[sol1, sol2]}}"},
    "arc_easy": {"doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{choices.label.index(answerKey)}}",
                 "doc_to_choice": "{{choices.text}}"},
    "hellaswag": {"doc_to_text": "{{query}}", "doc_to_target": "{{label}}"},
    "mmlu": {"doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. "
                            "{{choices[3]}}\nAnswer:"},
}
JINJA["arc_challenge"] = JINJA["arc_easy"]


def _recorder():
    """An lm-eval LM that keeps the requests it is asked (and scores a continuation by a hash of it)."""
    from lm_eval.api.model import LM

    class Recorder(LM):
        def __init__(self):
            super().__init__()
            self.requests: list = []

        def loglikelihood(self, requests, disable_tqdm=False):
            self.requests += requests
            return [(-float(zlib.crc32(r.args[1].encode()) % 97), False) for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError

    return Recorder()


@pytest.fixture(scope="module")
def model_and_tok():
    tok = tiny_tokenizer()
    return tiny_llama(len(tok)).eval(), tok


@pytest.fixture(scope="module")
def requests(model_and_tok):
    """Every task's requests on 3 documents (MMLU: 3 per subject, 5-shot), plus hand-made ones:
    shared contexts with multi-token continuations, a repeated request, an empty context, a context
    ending in spaces, and a continuation the model itself would generate (greedy)."""
    from lm_eval.api.instance import Instance

    rec = _recorder()
    run_harness(rec, None, MC_TASKS, data_dir=DATA_DIR, limit=3)
    model, tok = model_and_tok
    ctx = "Question: what comes after the cat?\nAnswer:"
    ids = tok(ctx, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    greedy = tok.decode(out[0, ids.shape[1]:])
    assert tok(ctx + greedy).input_ids == out[0].tolist()  # the text encodes back to the generated tokens
    extra = [(ctx, greedy), (ctx, " the dog sat on it"), (ctx, " the dog"), (ctx, " the dog"), ("", "An empty context."),
             ("Ends in spaces  ", "x y")]
    made = [Instance("loglikelihood", {}, args, i, metadata=("extra", 0, 1)) for i, args in enumerate(extra)]
    return rec.requests + made


def _scores(lm, reqs):
    return lm.loglikelihood(reqs, disable_tqdm=True)


@pytest.mark.parametrize("max_length", [None, 40])
def test_fast_scores_equal_hflm_on_every_task(model_and_tok, requests, max_length):
    model, tok = model_and_tok
    ref = _scores(make_lm(model, tok, batch_size="auto", max_length=max_length, backend="hflm"), requests)
    tasks = {r.task_name for r in requests}
    assert set(MC_TASKS) - {"mmlu"} <= tasks and any(t.startswith("mmlu_") for t in tasks)
    assert len({round(ll, 3) for ll, _ in ref}) > len(ref) // 2  # the requests really differ
    assert any(g for _, g in ref)  # the greedy continuation is flagged
    for bs, pad in ((1, 1), (3, 64), ("auto", 64), ("auto", 1)):  # right padding to multiples of 64, as on CUDA
        lm = make_lm(model, tok, batch_size=bs, max_length=max_length)
        lm.pad_multiple = pad
        fast = _scores(lm, requests)
        assert [g for _, g in fast] == [g for _, g in ref], bs
        assert [ll for ll, _ in fast] == pytest.approx([ll for ll, _ in ref], abs=1e-4), bs


def test_truncation_cuts_rows_to_max_length(model_and_tok, requests):
    """With max length 40 the 5-shot MMLU rows are left-truncated to 40 tokens and their scores move."""
    model, tok = model_and_tok
    mmlu = [r for r in requests if r.task_name.startswith("mmlu_")]
    lm = make_lm(model, tok, max_length=40)
    enc = [(r.args, *lm._encode_pair(*r.args)) for r in mmlu]
    assert min(len(ctx) for _, ctx, _ in enc) > 40
    assert {len(row.tokens) for row in lm._rows(enc)} == {40}
    full = _scores(make_lm(model, tok), mmlu)
    diffs = sorted(abs(a - b) for (a, _), (b, _) in zip(full, _scores(lm, mmlu)))
    assert diffs[len(diffs) // 2] > 1e-3


def test_one_forward_per_shared_context(model_and_tok, requests):
    """The one-token answers of an MMLU question share one row (model input = context + answer[:-1])."""
    model, tok = model_and_tok
    lm = make_lm(model, tok)
    mmlu = [r for r in requests if r.task_name.startswith("mmlu_")]
    enc = [(r.args, *lm._encode_pair(*r.args)) for r in mmlu]
    one_token = sum(len(cont) == 1 for _, _, cont in enc)
    questions = len(mmlu) // 4
    assert one_token > len(mmlu) // 2
    assert len(lm._rows(enc)) == questions + (len(mmlu) - one_token)


def test_run_harness_metrics_equal_between_backends(model_and_tok):
    model, tok = model_and_tok
    slow = run_harness(model, tok, MC_TASKS, data_dir=DATA_DIR, limit=4, lm_backend="hflm")
    fast = run_harness(model, tok, MC_TASKS, data_dir=DATA_DIR, limit=4)
    for task in MC_TASKS:
        assert fast[task]["status"] == "ok", fast[task]
        assert fast[task]["metrics"] == slow[task]["metrics"], task
        assert fast[task]["n"] == slow[task]["n"]
    assert fast["mmlu"]["subjects"] == slow["mmlu"]["subjects"]


def test_batches_pad_to_multiples_of_64_within_budget(model_and_tok):
    from lizardlm.eval.scoring_lm import TOKEN_CAP, _Row

    model, tok = model_and_tok
    rows = [_Row(list(range(n)), [(i, [1])]) for i, n in enumerate(range(300, 0, -7))]
    lm = make_lm(model, tok)
    assert lm.pad_multiple == 8  # on CPU
    lm.pad_multiple = 64
    for batch_size in ("auto", 5):
        lm.batch_size = batch_size
        batches = list(lm._batches(rows))
        assert [r for b in batches for r in b] == rows
        for b in batches:
            width = lm._padded(len(b[0].tokens))
            assert width % 64 == 0 and {lm._padded(len(r.tokens)) for r in b} == {width}
            assert len(b) * width <= TOKEN_CAP["cpu"] and (batch_size == "auto" or len(b) <= 5)
        assert len(batches) == (5 if batch_size == "auto" else 10)


def test_a_model_whose_logits_are_not_the_head_of_the_hidden_states_is_refused(model_and_tok):
    model, tok = model_and_tok

    class Capped(type(model)):
        def forward(self, *args, **kw):
            out = super().forward(*args, **kw)
            out.logits = 0.1 * torch.tanh(out.logits)
            return out

    capped = Capped(model.config).eval()
    with pytest.raises(LizardError, match="hflm backend"):
        make_lm(capped, tok)
    with pytest.raises(LizardError, match="unknown lm backend"):
        make_lm(model, tok, backend="vllm")


def test_cli_lm_flag():
    from lizardlm.cli import build_parser
    from lizardlm.cli.eval import LM_BACKENDS
    from lizardlm.eval.harness import LM_BACKENDS as HARNESS_BACKENDS

    parse = lambda *a: build_parser().parse_args(["eval", "--model", "m", *a])  # noqa: E731
    assert LM_BACKENDS == HARNESS_BACKENDS
    assert parse().lm_backend == "fast" and parse("--lm", "hflm").lm_backend == "hflm"


@pytest.mark.parametrize("task", MC_TASKS)
def test_prompt_functions_give_the_jinja_requests_and_targets(task, monkeypatch):
    """Same requests (task, document, choice, context, continuation) and metrics (so the same gold
    answers) from the task configs and from the configs with lm-eval's jinja templates put back."""
    import lizardlm.eval.harness as harness

    def run():
        rec = _recorder()
        res = run_harness(rec, None, [task], data_dir=DATA_DIR)[task]
        return [(r.task_name, r.doc_id, r.idx, r.args) for r in rec.requests], res["metrics"]

    requests, metrics = run()
    jinja = JINJA.get(task, {})
    monkeypatch.setattr(harness, "task_configs", lambda t, data: [{**c, **jinja} for c in task_configs(t, data)])
    assert run() == (requests, metrics)
    assert len(requests) > 10 and 0 < metrics["acc"] < 1
    ours = task_configs(task, load_local_task_data(task, DATA_DIR))[0]
    assert all(callable(ours[k]) for k in jinja) and (task == "winogrande" or jinja)
