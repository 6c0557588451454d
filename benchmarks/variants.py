"""Launch-setting variants of the Triton Lizard op timed side by side in one process.

Each variant is a dict merged into ``lizardlm.ops.triton.lizard.CFG`` (kernel launch settings,
tiles, one or two linear-backward launches). For each: a float64 check (bf16 cases of ``attention.py``; with
``--fp32`` also its float32 case), registers/spills of the compiled kernels, the fwd and fwd+bwd
time of the op at each T (B*T = 32K tokens, the shape of ``attention.py``), with cuDNN SDPA in the
same process, and a per-kernel profile. The first variant is timed again at the end (drift).

    python benchmarks/variants.py --variants '{"base": {}, "one-launch": {"lin_bwd_split": false}}' [--seqs 2048,8192]
        [--form paper] [--name variants-paper] [--feature-dim 512] [--heads 9/3 --head-dim 64]

Writes DIR/<name>-<device>.json (DIR defaults to benchmarks/results, name to ``variants``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attention as A  # noqa: E402
from result_names import device_slug  # noqa: E402

import lizardlm.ops.triton.lizard as tlz  # noqa: E402


def run_variant(name: str, cfg: dict, seqs: list[int], fp32: bool, form: str, shape: dict) -> dict:
    """``shape``: the timed op's heads, key/value heads, head and feature widths (``attention.inputs``)."""
    tlz.CFG.clear()
    tlz.CFG.update(cfg)
    cases = [c for c in A.CHECK_CASES if fp32 or c[0] != torch.float32]
    out = {"cfg": cfg, "form": form, "correctness": A.correctness(cases, forms=(form,)), "runs": {}, "kernels": {}}
    for T in seqs:
        B = A.TOKENS // T
        x = A.inputs(B, T, requires_grad=True, **shape)
        for mode in ("fwd", "fwd+bwd"):
            out["runs"][f"{mode} T={T}"] = A.bench(lambda x: A.lizard(x, form=form), x, mode == "fwd+bwd")[0]
        del x
        torch.cuda.empty_cache()
        out["kernels"][f"T={T}"] = A.kernel_times(B, T, form=form, **shape)[0]
    out["resources"] = {k: [list(r) for r in v] for k, v in A.compiled_resources().items()}
    print(f"{name}: " + "  ".join(f"{k} {v:.3f}" for k, v in out["runs"].items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variants", required=True, help="JSON object: name -> CFG overrides (or a .json file holding one)")
    ap.add_argument("--seqs", default="2048,8192")
    ap.add_argument("--form", default="lizard", choices=list(A.FORMS), help="the op's form and window (attention.FORMS)")
    ap.add_argument("--name", default="variants", help="result file stem: DIR/<name>-<device>.json")
    ap.add_argument("--feature-dim", type=int, default=A.FD,
                    help=f"features per head of the timed op (default {A.FD}; 512 is feature_dim 256); the "
                    "correctness check keeps attention.py's cases")
    ap.add_argument("--heads", default=f"{A.H}/{A.H}", help="query/key-value heads of the timed op (9/3: SmolLM2-135M)")
    ap.add_argument("--head-dim", type=int, default=A.D, help=f"head width of the timed op (default {A.D})")
    ap.add_argument("--fp32", action="store_true", help="also check each variant's float32 build (slow to compile)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    import triton

    spec = args.variants
    variants = json.loads(open(spec).read() if spec.endswith(".json") else spec)
    seqs = [int(s) for s in args.seqs.split(",")]
    dev = torch.cuda.get_device_name()
    heads, kv_heads = (int(n) for n in args.heads.split("/"))
    shape = dict(H=heads, Hk=kv_heads, D=args.head_dim, FD=args.feature_dim)
    res = {"device": dev, "torch": torch.__version__, "triton": triton.__version__, "feature_dim": args.feature_dim,
           "shape": shape,
           "sdpa_cudnn": {}, "variants": {}}
    for T in seqs:
        x = A.inputs(A.TOKENS // T, T, requires_grad=True, H=heads, Hk=heads, D=args.head_dim)  # SDPA: heads repeated
        for mode in ("fwd", "fwd+bwd"):
            res["sdpa_cudnn"][f"{mode} T={T}"] = A.bench(A.sdpa_cudnn, x, mode == "fwd+bwd")[0]
        del x
    print("sdpa-cudnn: " + "  ".join(f"{k} {v:.3f}" for k, v in res["sdpa_cudnn"].items()), flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{args.name}-{device_slug(dev)}.json")
    first = next(iter(variants))
    for name, cfg in [*variants.items(), (first + " (again)", variants[first])]:
        res["variants"][name] = run_variant(name, cfg, seqs, args.fp32 and name in variants, args.form, shape)
        with open(path, "w") as f:  # after every variant: a run cut short keeps what it measured
            json.dump(res, f, indent=1)
    print("->", path)


if __name__ == "__main__":
    main()
