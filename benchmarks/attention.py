"""Lizard attention (Triton path, and the torch chunked op at small T) vs SDPA causal (flash, cuDNN).

bf16, 32 heads, head dim 128, feature dim 128, 4 meta tokens; B*T = 32K tokens at T = 2K, 8K, 32K
(fwd and fwd+bwd), forward only at T = 128K (B = 1). Peak memory of each. Every form in FORMS
(``--forms``): ``lizard`` = our form at window 64 (meta key/value slots, shared normaliser),
``lizard-w128`` / ``-w512`` / ``-w2048`` = the same at windows 128 / 512 / 2048 (what a wider
window costs: ``--window-size`` at training and inference), ``paper`` = the paper's sum form at
window 128 (sink logits, alpha). A correctness check of each form against a float64 reference runs
first, in the same process, on shapes shorter than the window and one just past it.

    python benchmarks/attention.py [--out DIR] [--profile] [--quick]

Writes DIR/attention-<device>.json and .png (DIR defaults to benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lizardlm.ops.dispatch import lizard_attention  # noqa: E402
from lizardlm.ops.lizard import lizard_attention_chunk  # noqa: E402
from result_names import device_slug  # noqa: E402

H, D, FD, W, M = 32, 128, 128, 64, 4
TOKENS = 32 * 1024
FORMS = {"lizard": {"combine": "shared", "window": 64}, "lizard-w128": {"combine": "shared", "window": 128},
         "lizard-w512": {"combine": "shared", "window": 512}, "lizard-w2048": {"combine": "shared", "window": 2048},
         "paper": {"combine": "sum", "window": 128}}
"""op name -> (combination, window); meta key/value slots in the shared form, sink logits in the sum form."""


def inputs(B, T, dtype=torch.bfloat16, requires_grad=False, seed=0, H=H, Hk=H, D=D, FD=FD, M=M):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, device="cuda", dtype=dtype)
    x = dict(
        q=r(B, H, T, D), k=r(B, Hk, T, D), v=r(B, Hk, T, D),
        fq=(torch.rand(B, H, T, FD, generator=gen, device="cuda") * 2 / FD**0.5).to(dtype),
        fk=(torch.rand(B, Hk, T, FD, generator=gen, device="cuda") * 2 / FD**0.5).to(dtype),
        g=F.logsigmoid(torch.randn(B, H, T, generator=gen, device="cuda") + 4.0),
        meta_k=r(H, M, D), meta_v=r(H, M, D),
        sinks=torch.randn(H, M, generator=gen, device="cuda"), alpha=torch.rand(H, generator=gen, device="cuda") + 0.5,
    )
    if requires_grad:
        for t in x.values():
            t.requires_grad_()
    return x


def lizard(x, backend="triton", form="lizard"):
    f = FORMS[form]
    scale = x["q"].shape[-1] ** -0.5
    if f["combine"] == "sum":
        kw = dict(window=f["window"], scale=scale, meta_bias=x["sinks"], combine="sum", alpha=x["alpha"])
    else:
        kw = dict(window=f["window"], scale=scale, meta_k=x["meta_k"], meta_v=x["meta_v"])
    args = (x["q"], x["k"], x["v"], x["fq"], x["fk"], x["g"])
    if backend == "torch-chunk":
        return lizard_attention_chunk(*args, **kw)[0]
    return lizard_attention(*args, **kw, backend=backend)[0]


def sdpa(x):
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(x["q"], x["k"], x["v"], is_causal=True)


def sdpa_cudnn(x):
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(x["q"], x["k"], x["v"], is_causal=True)


# CFG key of each launch -> its kernel's name in the profile (the linear backward's two launches,
# query side and key side, are one kernel: they are tuned together)
KNAME = {"win_fwd": "win_fwd", "lin_h": "lin_fwd_h", "lin_o": "lin_fwd_o", "pre": "bwd_pre",
         "lin_dh": "lin_bwd_dh", "lin_bwd_q": "lin_bwd", "lin_bwd_k": "lin_bwd", "win_pairs": "win_bwd_pairs",
         "win_bwd": "win_bwd"}
KERNELS = tuple(KNAME)


def kernel_times(B, T, iters=5, form="lizard", **shape):
    """ms per fwd+bwd of each Triton kernel (torch profiler), plus the whole op with do_bench;
    ``shape``: :func:`inputs`' H, Hk, D, FD."""
    from triton.testing import do_bench

    x = inputs(B, T, requires_grad=True, **shape)
    dy = torch.randn_like(x["q"])
    grads = list(x.values())

    def step():
        lizard(x, form=form).backward(dy)

    step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            for t in grads:
                t.grad = None
            step()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        name = e.key.lstrip("_")
        out[name] = out.get(name, 0.0) + t / iters / 1000
    total = do_bench(step, warmup=30, rep=200, grad_to_none=grads, return_mode="median")
    del x
    torch.cuda.empty_cache()
    return out, total


def compiled_resources():
    """Registers and spills of every compiled Triton kernel of the op."""
    from lizardlm.ops.triton import kernels as K

    res = {}
    try:
        _collect_resources(K, res)
    except Exception as e:  # the cache layout differs between Triton versions
        return {"error": [[str(e)[:80]]]}
    return {k: sorted(v) for k, v in res.items()}


def _collect_resources(K, res):
    for name in dir(K):
        fn = getattr(K, name)
        caches = getattr(fn, "device_caches", None)
        if not caches:
            continue
        for dc in caches.values():
            cache = dc[0] if isinstance(dc, tuple) else dc
            for ck in cache.values():
                res.setdefault(name, set()).add((getattr(ck, "n_regs", -1), getattr(ck, "n_spills", -1),
                                                 getattr(getattr(ck, "metadata", None), "shared", -1)))


# Launch settings tried per kernel, one per round (a kernel with fewer options keeps its last).
TUNE_ROUNDS = {
    "win_fwd": [(4, 1), (4, 2), (8, 1), (8, 2)],
    "lin_h": [(4, 2), (4, 3), (4, 4), (4, 1)],
    "lin_o": [(4, 1), (4, 2), (8, 1), (8, 2)],
    "pre": [(4, 1), (8, 1), (2, 1), (4, 1)],
    "lin_dh": [(4, 2), (4, 3), (4, 4), (4, 1)],
    "lin_bwd_q": [(4, 1), (4, 2), (8, 1), (8, 2)],
    "lin_bwd_k": [(4, 1), (4, 2), (8, 1), (8, 2)],
    "win_pairs": [(4, 1), (4, 2), (8, 1), (8, 2)],
}
TUNE_SHAPES = ((16, 2048), (1, 32768))


def round_cfg(r):
    return {k: {"num_warps": v[min(r, len(v) - 1)][0], "num_stages": v[min(r, len(v) - 1)][1]}
            for k, v in TUNE_ROUNDS.items()}


def tune_child(cfg_json):
    """One tuning measurement in this process (a crash loses only this one)."""
    import lizardlm.ops.triton.lizard as tlz

    tlz.CFG.update(json.loads(cfg_json))
    per = [kernel_times(B, T) for B, T in TUNE_SHAPES]
    print("TUNE_JSON " + json.dumps({"kernels": [p[0] for p in per], "total": [p[1] for p in per],
                                     "resources": {k: [list(r) for r in v] for k, v in compiled_resources().items()}}))


def tune_measure(cfg):
    import subprocess

    try:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--tune-child", json.dumps(cfg)],
                             capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    for line in out.stdout.splitlines():
        if line.startswith("TUNE_JSON "):
            return json.loads(line[len("TUNE_JSON "):]), None
    return None, (out.stderr.strip().splitlines() or ["?"])[-1][:200]


def tune():
    """Per-kernel launch settings, each round in a child process; then variants (32 x 128 scan
    tiles, 64-wide value steps in the linear backward, whole value rows in the output kernel, the
    linear backward in one launch) on top of the best. Sets lizard CFG to the winner."""
    import lizardlm.ops.triton.lizard as tlz

    log = {"rounds": {}}
    best = {k: (float("inf"), None) for k in KERNELS}
    for r in range(4):
        cfg = round_cfg(r)
        m, err = tune_measure(cfg)
        if m is None:
            print(f"tune round {r}: failed: {err}", flush=True)
            continue
        row = {k: sum(p.get(KNAME[k], float("nan")) for p in m["kernels"]) for k in KERNELS}
        for k in KERNELS:
            if row[k] < best[k][0]:
                best[k] = (row[k], cfg[k])
        log["rounds"][r] = {"cfg": cfg, "per_kernel_2k_plus_32k": row, "total": m["total"], "resources": m["resources"]}
        print(f"tune round {r}: total {m['total'][0]:.3f} / {m['total'][1]:.3f} ms  " +
              " ".join(f"{k}[{cfg[k]['num_warps']},{cfg[k]['num_stages']}] {v:.3f}" for k, v in row.items()), flush=True)
        print("   resources (regs, spills, smem):", m["resources"], flush=True)
    cur = {k: c for k, (t, c) in best.items() if c is not None}
    m, err = tune_measure(cur)
    cur_total = sum(m["total"]) if m else float("inf")
    print(f"tune best-per-kernel: {m and m['total']} {cur}", flush=True)
    for extra in ({"h_block": (32, 128), "dh_block": (32, 128)}, {"bvl_bwd": 64}, {"bvl_o": 128}, {"lin_bwd_split": False}):
        trial = {**cur, **extra}
        m, err = tune_measure(trial)
        if m is None:
            print(f"tune +{extra}: failed: {err}", flush=True)
            continue
        print(f"tune +{extra}: total {m['total'][0]:.3f} / {m['total'][1]:.3f} ms  " + " ".join(
            f"{k} {sum(p.get(KNAME[k], 0) for p in m['kernels']):.3f}" for k in KERNELS), flush=True)
        log[json.dumps(extra)] = m["total"]
        if sum(m["total"]) < 0.98 * cur_total:
            cur, cur_total = trial, sum(m["total"])
    tlz.CFG.clear()
    tlz.CFG.update(cur)
    log["chosen"] = cur
    print("tune chosen:", cur, flush=True)
    return log


def bench(fn, x, backward: bool):
    """Median ms of fn (and a backward of a fixed cotangent) and peak extra memory in MiB."""
    from triton.testing import do_bench

    grads = [t for t in x.values() if t.requires_grad]
    if backward:
        dy = torch.randn_like(fn(x))

        def step():
            fn(x).backward(dy)
    else:
        def step():
            with torch.no_grad():
                fn(x)
    step()
    torch.cuda.synchronize()
    for t in grads:
        t.grad = None
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    ms = do_bench(step, warmup=30, rep=200, grad_to_none=grads or None, return_mode="median")
    for t in grads:
        t.grad = None
    return ms, peak


# the last case has enough (b, h) for the chunk scans to take whole value rows per program
CHECK_CASES = ((torch.bfloat16, (2, 8, 4, 1000, 128)), (torch.float32, (1, 4, 4, 777, 64)),
               (torch.bfloat16, (1, 4, 4, 777, 64)), (torch.bfloat16, (8, 32, 32, 321, 128)))


def correctness(cases=CHECK_CASES, forms=tuple(FORMS)):
    """Output and all gradients vs float64 (torch chunked op), bf16 and fp32, odd T, GQA, each form."""
    out = {}
    for form in forms:  # and a case just past the form's window: shorter ones check only that its linear side is 0
        for dtype, (B, Hq, Hk, T, Dh) in (*cases, (torch.bfloat16, (1, 4, 2, FORMS[form]["window"] + 300, 64))):
            x = inputs(B, T, dtype=torch.float32, seed=1, H=Hq, Hk=Hk, D=Dh, FD=Dh)
            ref = {n: t.double().requires_grad_() for n, t in x.items()}
            y_ref = lizard(ref, backend="torch-chunk", form=form)
            dy = torch.randn_like(y_ref)
            (y_ref * dy).sum().backward()
            inp = {n: (t.to(dtype) if n not in ("g", "sinks", "alpha") else t).requires_grad_() for n, t in x.items()}
            import lizardlm.ops.triton.lizard as tlz
            tlz.POISON = True
            y = lizard(inp, backend="triton", form=form)
            (y.double() * dy).sum().backward()
            tlz.POISON = False
            # relative error, absolute where the reference is 0 (a linear branch with no key past the window)
            rel = lambda a, b: ((a.double() - b).norm() / (b.norm() if b.norm() > 0 else 1)).item()
            errs = {"y": rel(y, y_ref), **{"d" + n: rel(inp[n].grad, ref[n].grad) for n in x if ref[n].grad is not None}}
            key = f"{form} {str(dtype).split('.')[-1]} B{B} H{Hq}/{Hk} T{T} D{Dh}"
            tol = 1e-3 if dtype == torch.float32 else 1e-2
            out[key] = {"errors": errs, "tol": tol, "pass": all(v <= tol for v in errs.values())}
            print(f"check {key}: " + " ".join(f"{k} {v:.1e}" for k, v in errs.items()) + f"  pass={out[key]['pass']}", flush=True)
    return out


def profile(B, T):
    x = inputs(B, T, requires_grad=True)
    dy = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        lizard(x).backward(dy)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            lizard(x).backward(dy)
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0:
            rows.append((t / 3 / 1000, e.key[:60], e.count // 3))
    rows.sort(reverse=True)
    print(f"profile B{B} T{T} (ms per fwd+bwd):")
    for t, k, c in rows[:16]:
        print(f"  {t:8.3f}  x{c:<3d} {k}")
    return [{"ms": t, "kernel": k, "calls": c} for t, k, c in rows[:20]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--quick", action="store_true", help="skip 128K and the torch reference")
    ap.add_argument("--seqs", default="2048,8192,32768")
    ap.add_argument("--forms", default="lizard,lizard-w128,paper", help=f"comma-separated, of {', '.join(FORMS)}")
    ap.add_argument("--tune", action="store_true", help="pick per-kernel launch settings first (sets them for this run)")
    ap.add_argument("--tune-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tune_child is not None:
        return tune_child(args.tune_child)
    import triton

    dev = torch.cuda.get_device_name()
    slug = device_slug(dev)
    import lizardlm.ops.triton.lizard as tlz

    forms = [f for f in args.forms.split(",") if f]
    res = {"device": dev, "torch": torch.__version__, "triton": triton.__version__,
           "config": {"heads": H, "head_dim": D, "feature_dim": FD, "window": W, "meta": M, "dtype": "bfloat16",
                      "tokens_per_batch": TOKENS, "forms": {f: FORMS[f] for f in forms},
                      "window_by_form": {f: FORMS[f]["window"] for f in forms}}}
    if args.tune:
        res["tune"] = tune()
    res["launch_cfg"] = dict(tlz.CFG)
    res["correctness"] = correctness(forms=forms)
    res["runs"] = []
    if args.profile:
        res["profile"] = {"T2048": profile(16, 2048), "T32768": profile(1, 32768)}

    def record(name, T, B, mode, ms, peak):
        res["runs"].append({"op": name, "T": T, "B": B, "mode": mode, "ms": ms, "peak_mib": peak})
        print(f"{name:12s} T={T:6d} B={B:2d} {mode:8s} {ms:9.3f} ms  peak +{peak:8.0f} MiB", flush=True)

    for T in [int(s) for s in args.seqs.split(",")]:
        B = TOKENS // T
        x = inputs(B, T, requires_grad=True)
        for mode in ("fwd", "fwd+bwd"):
            ops = [("sdpa", sdpa), ("sdpa-cudnn", sdpa_cudnn)] + [(f, lambda x, f=f: lizard(x, form=f)) for f in forms]
            for name, fn in ops:
                try:
                    record(name, T, B, mode, *bench(fn, x, mode == "fwd+bwd"))
                except RuntimeError as e:  # a backend that refuses this shape
                    print(f"{name} T={T} {mode}: {str(e)[:120]}")
            if T <= 2048 and not args.quick and "lizard" in forms:
                record("torch-chunk", T, B, mode, *bench(lambda x: lizard(x, "torch-chunk"), x, mode == "fwd+bwd"))
        del x
        torch.cuda.empty_cache()
    if not args.quick:
        T = 128 * 1024
        x = inputs(1, T)
        for name, fn in [("sdpa", sdpa)] + [(f, lambda x, f=f: lizard(x, form=f)) for f in forms]:
            record(name, T, 1, "fwd", *bench(fn, x, False))
        del x
    # ratios
    t = {(r["op"], r["T"], r["mode"]): r["ms"] for r in res["runs"]}
    res["speedup_vs_sdpa"] = {f"{op} {mode} T={T}": t[("sdpa", T, mode)] / ms
                              for (op, T, mode), ms in t.items() if op in forms}
    res["speedup_vs_sdpa_cudnn"] = {f"{op} {mode} T={T}": t[("sdpa-cudnn", T, mode)] / ms
                                    for (op, T, mode), ms in t.items() if op in forms and ("sdpa-cudnn", T, mode) in t}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"attention-{slug}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    try:
        plot(res, os.path.join(args.out, f"attention-{slug}.png"))
    except Exception as e:  # a missing matplotlib must not lose the numbers
        print("plot failed:", e)
    print("\nform         T       mode     sdpa_ms  cudnn_ms  form_ms  sdpa/form  cudnn/form")
    for (op, T, mode), ms in sorted(t.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        if op in forms:
            c = t.get(("sdpa-cudnn", T, mode), float("nan"))
            print(f"{op:12s} {T:<7d} {mode:8s} {t[('sdpa', T, mode)]:8.3f} {c:9.3f} {ms:8.3f} "
                  f"{t[('sdpa', T, mode)] / ms:9.2f}x {c / ms:9.2f}x")
    ok = all(c["pass"] for c in res["correctness"].values())
    print("correctness:", "PASS" if ok else "FAIL", "->", path)


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
        Ts = sorted({r["T"] for r in runs if r["mode"] == mode})
        ops = [o for o in ("sdpa", "sdpa-cudnn", *FORMS, "torch-chunk") if any(r["op"] == o and r["mode"] == mode for r in runs)]
        wdt = 0.8 / len(ops)
        for i, op in enumerate(ops):
            xs, ys = [], []
            for j, T in enumerate(Ts):
                m = [r["ms"] for r in runs if r["op"] == op and r["T"] == T and r["mode"] == mode]
                if m:
                    xs.append(j + i * wdt)
                    ys.append(m[0])
            bars = ax.bar(xs, ys, wdt, label=op)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks([j + wdt * (len(ops) - 1) / 2 for j in range(len(Ts))])
        ax.set_xticklabels([f"T={T // 1024}K\nB={max(1, TOKENS // T)}" for T in Ts])
        ax.set_yscale("log")
        ax.set_ylabel("ms (median)")
        ax.set_title(f"{mode}, bf16, H=32, D=128")
        ax.legend()
    fig.suptitle(f"Lizard attention vs SDPA causal on {res['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
