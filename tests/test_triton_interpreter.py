"""The Triton kernels' logic on CPU: Triton's interpreter (``TRITON_INTERPRET=1``) runs the training
op's kernels on fresh random float32 inputs, and the output and every gradient are checked against
the float64 naive reference, output buffers poisoned with NaN. The kernels run in a child process,
since the interpreter is chosen when they are defined. Skipped where triton is not installed; the
pair window backward (``_win_bwd_pairs``, bfloat16 builds only on a device) is forced here in
float32; real launches are checked on a GPU by ``tests/gpu``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from kernel_check import FORMS, NAMES, make_inputs, reference, reference_from_state, relerr

from lizardlm.ops.lizard import linear_state, lizard_attention_chunk

pytest.importorskip("triton")

# B, H, Hk, T, D, V, F, window, meta slots, gate
CASES = {
    "gqa-window16-meta": (1, 2, 1, 150, 32, 64, 32, 16, 3, True),
    "window64-chunk-aligned": (1, 2, 2, 200, 32, 32, 64, 64, 4, True),
    "wide-window-no-gate-no-meta": (2, 2, 1, 70, 16, 96, 16, 100, 0, False),
    "shorter-than-window": (1, 1, 1, 40, 16, 16, 16, 64, 2, True),
    "features-not-a-power-of-two": (1, 2, 1, 90, 16, 32, 40, 32, 2, True),
    "window300-blocks-back": (1, 2, 1, 420, 16, 16, 16, 300, 2, True),  # a wide window: 5 key blocks, 4 chunks back
}
# lizardlm.ops.triton.lizard.CFG per variant, and the forms it runs in (the sum form shares every
# other kernel path); the scans' tiles are forced (picking them asks the GPU)
VARIANTS = {
    "split-backward": ({}, ("shared", "paper")),
    "one-launch-backward": ({"lin_bwd_split": False}, ("shared", "paper")),
    "whole-value-rows": ({"bvl_bwd": 128}, ("shared",)),
    "scan-tiles-32x128": ({"h_block": (32, 128), "dh_block": (32, 128)}, ("shared",)),
    "window-backward-one-launch": ({"win_bwd_split": False}, ("shared", "paper")),
    "window-backward-128-rows": ({"win_bwd_bm": 128}, ("paper",)),
    "window-backward-pairs": ({"win_bwd_pairs": True}, ("shared", "paper")),
    "linear-backward-feature-tiles": ({"lin_bwd_bf": 16}, ("shared", "paper")),
    "one-launch-feature-tiles": ({"lin_bwd_split": False, "lin_bwd_bf": 16}, ("shared",)),
}
TILES = {"h_block": (64, 64), "dh_block": (64, 64)}
MAPPED = {"value-map": {}, "value-map-window-pairs": {"win_bwd_pairs": True},
          "value-map-feature-tiles": {"lin_bwd_bf": 16}}
"""CFG of the value-map runs: the default kernels, the pair window backward, the linear backward in tiles."""
MAPPED_CASES = {**CASES, "two-groups-of-two": (1, 4, 2, 100, 16, 16, 16, 16, 2, True)}
"""The value-map runs' cases: a map per key/value head needs two of them, each serving a group, to show
that grouped heads expanded to the query heads (a prefilled state's prefix) get their own group's map."""


def errors(case: tuple, seed: int, form: str, value_map: bool = False) -> dict[str, float]:
    """Relative errors of the Triton op (interpreted, float32) against float64, output and gradients."""
    import lizardlm.ops.triton.lizard as tlz

    B, H, Hk, T, D, V, F, w, m, use_g = case
    x = make_inputs(B, H, Hk, T, D, V, F, m, use_g, seed, form=form, value_map=value_map)
    dy = torch.randn(B, H, T, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y_ref, dy, ref = reference(x, w, D**-0.5, dy)
    inp = {n: (t.clone().requires_grad_() if t is not None else None) for n, t in x.items()}
    tlz.POISON = True
    try:  # below the public entry point, which refuses CPU tensors
        y, _ = tlz.apply_op(*(inp[n] for n in NAMES[:6]), window=w, scale=D**-0.5, meta_k=inp["meta_k"],
                            meta_v=inp["meta_v"], meta_bias=inp["meta_bias"], chunk_size=64, alpha=inp["alpha"],
                            value_map=inp["value_map"])
        (y.double() * dy).sum().backward()
    finally:
        tlz.POISON = False
    errs = {"y": relerr(y, y_ref)}
    errs.update({"d" + n: relerr(inp[n].grad, ref[n].grad) for n in NAMES if inp[n] is not None})
    return errs


def state_errors(case: tuple, seed: int, form: str, value_map: bool = False) -> dict[str, float]:
    """The op started from a linear memory (stage 2's state passing) and asked for the state it
    leaves: output and gradients against the float64 naive reference with that memory, the state
    (memory and window part) against the float64 torch op's."""
    import lizardlm.ops.triton.lizard as tlz

    B, H, Hk, T, D, V, F, w, m, use_g = case
    x = make_inputs(B, H, Hk, T, D, V, F, m, use_g, seed, form=form, value_map=value_map)
    gen = torch.Generator().manual_seed(seed + 100)
    s0 = torch.rand(B, H, F, V + 1, generator=gen, dtype=torch.float64) * 3.0
    dy = torch.randn(B, H, T, V, generator=gen, dtype=torch.float64)
    y_ref, ref, after_ref = reference_from_state(x, s0, w, D**-0.5, dy)
    inp = {n: (t.clone().requires_grad_() if t is not None else None) for n, t in x.items()}
    tlz.POISON = True
    try:
        y, after = tlz.run_from_state(*(inp[n] for n in NAMES[:6]), window=w, scale=D**-0.5, meta_k=inp["meta_k"],
                                      meta_v=inp["meta_v"], meta_bias=inp["meta_bias"], chunk_size=64,
                                      alpha=inp["alpha"], combine="shared" if x["alpha"] is None else "sum",
                                      value_map=inp["value_map"],
                                      state=linear_state(s0.float(), x["q"], x["k"], x["v"], x["fk"]), need_state=True)
        (y.double() * dy).sum().backward()
    finally:
        tlz.POISON = False
    errs = {"y": relerr(y, y_ref)}
    errs.update({"d" + n: relerr(inp[n].grad, ref[n].grad) for n in NAMES if inp[n] is not None})
    for name, a, b in zip(("final_state", "keys", "values", "key_features", "log_gates"), after.tensors(),
                          after_ref.tensors()):
        errs[name] = relerr(a, b) if a.shape == b.shape else float("inf")
    return errs


def prefilled_errors(case: tuple, seed: int, form: str, value_map: bool = False) -> dict[str, float]:
    """A chunked prefill going on: the op continued from the state (memory and window tokens) that the
    float64 torch op leaves after the first third of the sequence. Output, the gradients of the chunk's
    inputs and the state it leaves against the float64 torch op's continuation."""
    import lizardlm.ops.triton.lizard as tlz

    B, H, Hk, T, D, V, F, w, m, use_g = case
    x = make_inputs(B, H, Hk, T, D, V, F, m, use_g, seed, form=form, value_map=value_map)
    combine = "shared" if x["alpha"] is None else "sum"
    kw = dict(window=w, scale=D**-0.5, combine=combine)
    const = {n: x[n] for n in NAMES[6:]}
    seq = [None if x[n] is None else x[n].double() for n in NAMES[:6]]
    cut = T // 3
    with torch.no_grad():
        _, state = lizard_attention_chunk(*(None if t is None else t[:, :, :cut] for t in seq), **kw,
                                          **{n: None if t is None else t.double() for n, t in const.items()})
    row = [None if t is None else t[:, :, cut:].clone().requires_grad_() for t in seq]
    y_ref, after_ref = lizard_attention_chunk(*row, state=state, **kw,
                                              **{n: None if t is None else t.double() for n, t in const.items()})
    dy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(seed + 200), dtype=torch.float64)
    graded = [(n, t) for n, t in zip(NAMES, row) if t is not None]
    ref_grads = torch.autograd.grad((y_ref * dy).sum(), [t for _, t in graded])
    inp = [None if t is None else t.detach().float().requires_grad_() for t in row]
    tlz.POISON = True
    try:
        y, after = tlz.run_from_state(*inp, **kw, **const, state=state.map(lambda t: t.float()), need_state=True,
                                      chunk_size=64)
        (y.double() * dy).sum().backward()
    finally:
        tlz.POISON = False
    errs = {"y": relerr(y, y_ref)}
    errs.update({"d" + n: relerr(t.grad, r) for (n, _), t, r in
                 zip(graded, [t for t in inp if t is not None], ref_grads)})
    for name, a, b in zip(("final_state", "keys", "values", "key_features", "log_gates"), after.tensors(),
                          after_ref.tensors()):
        errs[name] = relerr(a, b) if a.shape == b.shape else float("inf")
    return errs


def padded_errors(case: tuple, seed: int, form: str) -> dict[str, float]:
    """A left-padded batch in inference (``key_start``): the whole sequence from no state, and its last
    two thirds continued from the state the float64 torch op leaves after the first third, against the
    float64 torch op over the whole sequence (itself checked against each row alone in test_ops)."""
    import lizardlm.ops.triton.lizard as tlz

    B, H, Hk, T, D, V, F, w, m, use_g = case
    x = make_inputs(B, H, Hk, T, D, V, F, m, use_g, seed, form=form)
    kw = dict(window=w, scale=D**-0.5, combine="shared" if x["alpha"] is None else "sum")
    const = {n: x[n] for n in NAMES[6:]}
    const64 = {n: None if t is None else t.double() for n, t in const.items()}
    seq = [None if x[n] is None else x[n].double() for n in NAMES[:6]]
    pads = torch.tensor([T // 2, 0][:B]) if B > 1 else torch.tensor([T // 2])
    cut = T // 3
    errs = {}
    with torch.no_grad():
        y_ref, after_ref = lizard_attention_chunk(*seq, **kw, **const64, key_start=pads)
        _, state = lizard_attention_chunk(*(None if t is None else t[:, :, :cut] for t in seq), **kw, **const64,
                                          key_start=pads)
        tlz.POISON = True
        try:
            y, after = tlz.run_from_state(*(x[n] for n in NAMES[:6]), **kw, **const, state=None, need_state=True,
                                          chunk_size=64, key_start=pads)
            y_rest, _ = tlz.run_from_state(*(None if x[n] is None else x[n][:, :, cut:] for n in NAMES[:6]), **kw,
                                           **const, state=state.map(lambda t: t.float()), need_state=True,
                                           chunk_size=64, key_start=pads - (cut - state.keys.shape[2]))
        finally:
            tlz.POISON = False
    errs["y"] = relerr(y, y_ref)
    errs["y_continued"] = relerr(y_rest, y_ref[:, :, cut:])
    for name, a, b in zip(("final_state", "keys", "values", "key_features", "log_gates"), after.tensors(),
                          after_ref.tensors()):
        errs[name] = relerr(a, b) if a.shape == b.shape else float("inf")
    return errs


def step_errors(form: str, padded: bool, value_map: bool = False) -> dict[str, float]:
    """The fused decoding step against the float64 torch step, token by token across the window filling
    up and then folding its oldest token in; ``padded``: a left-padded batch (row 1 starts 6 tokens late)."""
    from lizardlm.ops.lizard import lizard_attention_step
    from lizardlm.ops.triton.step import lizard_step_cuda

    B, H, Hk, T0, steps, D, V, F, w, m = 2, 4, 2, 10, 10, 32, 32, 16, 16, 3
    x = make_inputs(B, H, Hk, T0 + steps, D, V, F, m, True, 7, form=form, value_map=value_map)
    kw = dict(window=w, scale=D**-0.5, combine="shared" if x["alpha"] is None else "sum", meta_k=x["meta_k"],
              meta_v=x["meta_v"], meta_bias=x["meta_bias"], alpha=x["alpha"], value_map=x["value_map"])
    kw64 = {n: t.double() if isinstance(t, torch.Tensor) else t for n, t in kw.items()}
    pads = torch.tensor([0, 6]) if padded else None
    seq = [x[n] for n in NAMES[:6]]
    errs = {"y": 0.0, "state": 0.0}
    with torch.no_grad():
        _, state = lizard_attention_chunk(*(t[:, :, :T0] for t in seq), **kw, key_start=pads)
        ref = state.map(lambda t: t.double())
        for t in range(T0, T0 + steps):
            held = state.keys.shape[2]
            start = None if pads is None else (pads - (t - held)).clamp(min=0)
            start = start if start is not None and bool(start.any()) else None
            x1 = [u[:, :, t:t + 1] for u in seq]
            y, state = lizard_step_cuda(*x1, state=state, **kw, key_start=start)
            y_ref, ref = lizard_attention_step(*(u.double() for u in x1), state=ref, **kw64, key_start=start)
            errs["y"] = max(errs["y"], relerr(y, y_ref))
            errs["state"] = max(errs["state"], *(relerr(a, b) if a.shape == b.shape else float("inf")
                                                 for a, b in zip(state.tensors(), ref.tensors())))
    return errs


def underflow_finite() -> dict[str, bool]:
    """The sum form where ``phi_q . z`` underflows (feature maps with disjoint supports, a gate that
    forgets at once): is the output, and each gradient, finite (the normaliser's eps)?"""
    import lizardlm.ops.triton.lizard as tlz

    B, H, T, D, F, w = 1, 2, 70, 16, 16, 16
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=gen).requires_grad_() for _ in range(3))
    logits = torch.full((B, H, T, F), -120.0)
    fq = logits.clone().index_fill_(-1, torch.tensor([0]), 0.0).softmax(-1).requires_grad_()
    fk = logits.clone().index_fill_(-1, torch.tensor([1]), 0.0).softmax(-1).requires_grad_()
    g = torch.full((B, H, T), -100.0).requires_grad_()
    alpha = torch.ones(H).requires_grad_()
    tlz.POISON = True
    try:
        y, _ = tlz.apply_op(q, k, v, fq, fk, g, window=w, scale=D**-0.5, meta_k=None, meta_v=None, meta_bias=None,
                            chunk_size=64, alpha=alpha)
        y.square().sum().backward()
    finally:
        tlz.POISON = False
    named = dict(q=q, k=k, v=v, fq=fq, fk=fk, g=g, alpha=alpha)
    return {"y": bool(torch.isfinite(y).all()), **{"d" + n: bool(torch.isfinite(t.grad).all()) for n, t in named.items()}}


class Cramped:
    """A kernel whose launches with ``size`` over ``limit`` raise ``OutOfResources``, as on a GPU with
    less shared memory; ``ran`` collects the sizes that launched."""

    def __init__(self, kernel, size: str, limit: int):
        self.kernel, self.size, self.limit, self.ran = kernel, size, limit, set()

    def __getitem__(self, grid):
        from triton.runtime.errors import OutOfResources

        def launch(*args, **kw):
            if kw[self.size] > self.limit:
                raise OutOfResources(kw[self.size] * 1024, self.limit * 1024, "shared memory")
            self.ran.add(kw[self.size])
            return self.kernel[grid](*args, **kw)
        return launch


def fallback_errors(case: tuple, seed: int, form: str) -> dict:
    """Errors of the op when 64-row chunks of the output kernel and feature tiles over 16 of the
    linear backward run out of shared memory, and the sizes that ran instead."""
    import lizardlm.ops.triton.lizard as tlz

    fwd_o, lin_bwd = tlz.K._lin_fwd_o, tlz.K._lin_bwd
    tlz.K._lin_fwd_o, tlz.K._lin_bwd = cramped = Cramped(fwd_o, "BT", 32), Cramped(lin_bwd, "BF", 16)
    tlz._FITTING.clear()
    try:
        errs = errors(case, seed, form)
    finally:
        tlz.K._lin_fwd_o, tlz.K._lin_bwd = fwd_o, lin_bwd
        tlz._FITTING.clear()
    return {"errors": errs, "chunks": sorted(cramped[0].ran), "feature_tiles": sorted(cramped[1].ran)}


def child(only: list[str]) -> None:
    """Every (case, variant) of the forms ``only``: one JSON line of errors; the shared-memory fallback; the
    underflow check (paper form)."""
    import lizardlm.ops.triton.lizard as tlz

    for seed, (case_name, case) in enumerate(CASES.items()):
        for form in only:
            for variant, (cfg, forms) in VARIANTS.items():
                if form not in forms:
                    continue
                tlz.CFG.clear()
                tlz.CFG.update({**TILES, **cfg})
                errs = errors(case, seed, form)
                print(json.dumps({"case": case_name, "form": form, "variant": variant, "errors": errs}), flush=True)
    tlz.CFG.clear()
    tlz.CFG.update(TILES)
    for seed, (case_name, case) in enumerate(CASES.items()):
        for form in only:
            errs = state_errors(case, seed, form)
            print(json.dumps({"case": case_name, "form": form, "variant": "linear-state", "errors": errs}), flush=True)
    for seed, (case_name, case) in enumerate(CASES.items()):
        for form in only:
            errs = prefilled_errors(case, seed, form)
            print(json.dumps({"case": case_name, "form": form, "variant": "prefilled", "errors": errs}), flush=True)
    for seed, (case_name, case) in enumerate(CASES.items()):
        for form in only:
            errs = padded_errors(case, seed, form)
            print(json.dumps({"case": case_name, "form": form, "variant": "left-padded", "errors": errs}), flush=True)
    for form in only:
        for padded in (False, True):
            print(json.dumps({"case": f"step-padded-{padded}", "form": form, "variant": "step",
                              "errors": step_errors(form, padded)}), flush=True)
    for seed, (case_name, case) in enumerate(MAPPED_CASES.items()):  # a value map: the linear kernels read v W
        for form in only:
            for variant, cfg in MAPPED.items():
                tlz.CFG.clear()
                tlz.CFG.update({**TILES, **cfg})
                print(json.dumps({"case": case_name, "form": form, "variant": variant,
                                  "errors": errors(case, seed, form, value_map=True)}), flush=True)
            tlz.CFG.clear()
            tlz.CFG.update(TILES)
            print(json.dumps({"case": case_name, "form": form, "variant": "value-map-linear-state",
                              "errors": state_errors(case, seed, form, value_map=True)}), flush=True)
            print(json.dumps({"case": case_name, "form": form, "variant": "value-map-prefilled",
                              "errors": prefilled_errors(case, seed, form, value_map=True)}), flush=True)
    for form in only:
        print(json.dumps({"case": "step-padded-False", "form": form, "variant": "value-map-step",
                          "errors": step_errors(form, False, value_map=True)}), flush=True)
    for seed, (case_name, case) in enumerate(CASES.items()):
        for form in only:
            row = fallback_errors(case, seed, form)
            print(json.dumps({"case": case_name, "form": form, "variant": "shared-memory-fallback", **row}), flush=True)
    if "paper" in only:
        print(json.dumps({"case": "underflow", "form": "paper", "variant": "default", "errors": underflow_finite()}),
              flush=True)


@pytest.fixture(scope="module")
def interpreted() -> dict[tuple[str, str, str], dict]:
    """(case, form, variant) -> the children's rows: the errors, and for the fallback the sizes that ran. One
    child per form, at once (the interpreter is single-threaded Python; CI has two cores)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:  # files, not pipes: a child never waits on its reader
        logs = [(Path(tmp) / f"{form}.out", Path(tmp) / f"{form}.err") for form in FORMS]
        children = []
        for form, (out, err) in zip(FORMS, logs):
            with out.open("w") as stdout, err.open("w") as stderr:  # the child holds its own copies
                children.append(subprocess.Popen([sys.executable, __file__, form], env=env, stdout=stdout,
                                                 stderr=stderr))
        try:
            for proc in children:
                proc.wait(timeout=600)
        finally:
            for proc in children:
                proc.kill()
        for proc, (out, err) in zip(children, logs):
            assert proc.returncode == 0, err.read_text()[-3000:]
        rows = [json.loads(line) for out, _ in logs for line in out.read_text().splitlines() if line.startswith("{")]
    return {(row["case"], row["form"], row["variant"]): row for row in rows}


@pytest.mark.parametrize("form, variant", [(f, v) for v, (_, forms) in VARIANTS.items() for f in forms])
@pytest.mark.parametrize("case", CASES)
def test_kernels_match_float64_in_the_interpreter(interpreted, case, form, variant):
    errs = interpreted[(case, form, variant)]["errors"]
    assert set(errs) >= {"y", "dq", "dk", "dv", "dfq", "dfk"} | ({"dalpha"} if form == "paper" else set()), errs
    bad = {k: v for k, v in errs.items() if not v <= 1e-5}  # float32 arithmetic throughout
    assert not bad, f"{case} {form} {variant}: {bad}"


@pytest.mark.parametrize("variant", MAPPED)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", MAPPED_CASES)
def test_kernels_with_a_value_map_match_float64(interpreted, case, form, variant):
    """The linear kernels read ``v W`` and the window kernels ``v``: the output and every gradient,
    the map's and v's (both branches' shares) included, from no state and from a linear memory; from a
    prefilled state (the map a constant there) the output, the chunk's gradients and the state it leaves."""
    for run in (variant, "value-map-linear-state", "value-map-prefilled"):
        errs = interpreted[(case, form, run)]["errors"]
        assert {"y", "dv"} | ({"dvalue_map"} if run != "value-map-prefilled" else {"final_state"}) <= set(errs), errs
        bad = {k: v for k, v in errs.items() if not v <= 1e-5}
        assert not bad, f"{case} {form} {run}: {bad}"


@pytest.mark.parametrize("form", FORMS)
def test_fused_decoding_step_with_a_value_map(interpreted, form):
    errs = interpreted[("step-padded-False", form, "value-map-step")]["errors"]
    bad = {k: v for k, v in errs.items() if not v <= 1e-5}
    assert not bad, f"{form}: {bad}"


def test_sum_form_kernels_stay_finite_where_the_normaliser_underflows(interpreted):
    finite = interpreted[("underflow", "paper", "default")]["errors"]
    assert finite and all(finite.values()), finite


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES)
def test_kernels_start_from_a_linear_state_and_return_the_state_they_leave(interpreted, case, form):
    """State passing on the Triton path: the memory a row starts from enters every chunk's state,
    the gradients need nothing more for it, and the state after the last token (memory and window)
    is the torch op's."""
    errs = interpreted[(case, form, "linear-state")]["errors"]
    assert set(errs) >= {"y", "final_state", "dq", "dfq", "dfk", "keys", "log_gates"}, errs
    bad = {k: v for k, v in errs.items() if not v <= 1e-5}
    assert not bad, f"{case} {form}: {bad}"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES)
def test_kernels_continue_a_prefilled_state(interpreted, case, form):
    """A chunked prefill going on (``state_as_prefix``): the window tokens the state holds run before the
    chunk, its output, gradients and the state it leaves are the torch op's."""
    errs = interpreted[(case, form, "prefilled")]["errors"]
    assert set(errs) >= {"y", "final_state", "dq", "dk", "dv", "dfq", "dfk", "keys", "key_features", "log_gates"}, errs
    bad = {k: v for k, v in errs.items() if not v <= 1e-5}
    assert not bad, f"{case} {form}: {bad}"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES)
def test_kernels_take_a_left_padded_batch_in_inference(interpreted, case, form):
    """Left padding (``key_start``) on the kernels, from no state and from a prefilled one: the torch op's
    outputs and state."""
    errs = interpreted[(case, form, "left-padded")]["errors"]
    assert set(errs) >= {"y", "y_continued", "final_state", "keys", "key_features"}, errs
    bad = {k: v for k, v in errs.items() if not v <= 1e-5}
    assert not bad, f"{case} {form}: {bad}"


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("form", FORMS)
def test_fused_decoding_step_matches_the_torch_step(interpreted, form, padded):
    """The one-kernel decoding step, both forms (meta slots, sink logits and alpha), while the window
    fills and once it folds, and in a left-padded batch: the float64 torch step's outputs and states."""
    errs = interpreted[(f"step-padded-{padded}", form, "step")]["errors"]
    bad = {k: v for k, v in errs.items() if not v <= 1e-5}
    assert not bad, f"{form} padded={padded}: {bad}"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES)
def test_kernels_fall_back_to_smaller_tiles_where_shared_memory_runs_out(interpreted, case, form):
    """Where 64-row chunks and feature tiles over 16 do not fit, the op runs 32-row chunks and
    16-feature tiles, and still matches float64."""
    row = interpreted[(case, form, "shared-memory-fallback")]
    assert row["chunks"] == [32] and row["feature_tiles"] == [16], row
    bad = {k: v for k, v in row["errors"].items() if not v <= 1e-5}
    assert not bad, f"{case} {form}: {bad}"


def test_first_fitting_remembers_the_size_that_fitted_and_names_the_shapes_when_none_does():
    from triton.runtime.errors import OutOfResources

    import lizardlm.ops.triton.lizard as tlz

    tried = []

    def launch(n: int) -> int:
        tried.append(n)
        if n > 32:
            raise OutOfResources(n * 4096, 32 * 4096, "shared memory")
        return -n

    key = ("test-first-fitting", torch.initial_seed())
    assert tlz._first_fitting(key, tlz._halvings(128), launch) == -32 and tried == [128, 64, 32]
    assert tlz._first_fitting(key, tlz._halvings(128), launch) == -32 and tried == [128, 64, 32, 32]
    with pytest.raises(RuntimeError, match=r"no size in \[64\] fits .*test-too-big"):
        tlz._first_fitting(("test-too-big",), [64], launch)
    assert tlz._halvings(64) == [64, 32, 16] and tlz._halvings(8) == [8]


if __name__ == "__main__":
    child(sys.argv[1:])
