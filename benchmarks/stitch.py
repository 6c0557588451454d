"""The off-the-shelf stitch vs the Lizard op: flash-linear-attention's ``chunk_gla`` (the gated
linear branch, scalar gate broadcast over the feature dim) plus a FlexAttention sliding window
(the window branch), each in its preferred layout, their outputs summed. That is a lower bound on
the stitch's cost: it leaves out the shifted keys, meta tokens and the shared normaliser. Timed side
by side with the Lizard op and SDPA causal (cuDNN) in one process, same shapes as attention.py.

    python benchmarks/stitch.py [--out DIR] [--seqs 2048,8192,32768]

Needs ``fla`` (pip install flash-linear-attention). Each (T, mode) runs in a child process with a
time limit (FlexAttention compiles; fla's backward may refuse on Hopper), and the two halves of the
stitch are also timed alone; DIR/attention-stitch-<device>.json is rewritten after every child, so a
run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from attention import TOKENS, W, bench, inputs, lizard, sdpa_cudnn  # noqa: E402
from result_names import device_slug  # noqa: E402


def stitch_inputs(x: dict) -> dict:
    """The same tensors as leaves in fla's (B, T, H, .) layout, the gate expanded per feature."""
    t = lambda a: a.detach().transpose(1, 2).contiguous().requires_grad_()
    g = x["g"].detach()[..., None].expand(*x["fk"].shape[:3], x["fk"].shape[-1])
    return {"q": x["q"], "k": x["k"], "v": x["v"], "fq": t(x["fq"]), "fk": t(x["fk"]), "vt": t(x["v"]),
            "g": t(g.float())}


OPS = ("sdpa-cudnn", "lizard", "fla-chunk_gla", "flex-window", "fla+flex")


def make_ops(T: int) -> dict:
    """Each op with the inputs it takes: the stitch's two halves alone, then together."""
    from fla.ops.gla import chunk_gla
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    window = create_block_mask(lambda b, h, q, kv: (q >= kv) & (q - kv < W), None, None, T, T, device="cuda")
    flex = torch.compile(flex_attention)
    gla = lambda s: chunk_gla(s["fq"], s["fk"], s["vt"], s["g"], scale=1.0)[0]
    win = lambda s: flex(s["q"], s["k"], s["v"], block_mask=window)
    return {"sdpa-cudnn": (sdpa_cudnn, False), "lizard": (lizard, False), "fla-chunk_gla": (gla, True),
            "flex-window": (win, True), "fla+flex": (lambda s: win(s) + gla(s).transpose(1, 2), True)}


def child(T: int, mode: str, path: str) -> None:
    """Time every op at one (T, mode) in this process, appending a JSON line per op to ``path``."""
    B = TOKENS // T
    x = inputs(B, T, requires_grad=True)
    s = stitch_inputs(x)
    for name, (fn, stitched) in make_ops(T).items():
        try:
            ms, peak = bench(fn, s if stitched else x, mode == "fwd+bwd")
            row = {"op": name, "T": T, "B": B, "mode": mode, "ms": ms, "peak_mib": peak}
            print(f"{name:14s} T={T:6d} {mode:8s} {ms:8.3f} ms  peak +{peak:6.0f} MiB", flush=True)
        except Exception as e:  # a kernel that refuses: record why
            row = {"op": name, "T": T, "mode": mode, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            print(name, T, mode, "failed:", str(e)[:200], flush=True)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--seqs", default="2048,8192,32768")
    ap.add_argument("--timeout", type=float, default=240, help="seconds for each (T, mode) child process")
    ap.add_argument("--merge", action="store_true", help="keep the other sequence lengths of an existing result file")
    ap.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(int(args.child[0]), args.child[1], args.child[2])
    import subprocess
    import tempfile

    import fla
    import triton

    dev = torch.cuda.get_device_name()
    slug = device_slug(dev)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"attention-stitch-{slug}.json")
    res = {"device": dev, "torch": torch.__version__, "triton": triton.__version__, "fla": fla.__version__,
           "note": "fla+flex is a lower bound on a stitched Lizard: no shifted keys, meta tokens or shared normaliser",
           "runs": []}
    seqs = [int(s) for s in args.seqs.split(",")]
    if args.merge and os.path.exists(path):
        with open(path) as f:
            res["runs"] = [r for r in json.load(f)["runs"] if r["T"] not in seqs]
    for T in seqs:
        for mode in ("fwd", "fwd+bwd"):
            rows = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False).name
            try:  # a child per (T, mode): a hang or crash loses only its own rows
                subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(T), mode, rows],
                               timeout=args.timeout, check=False)
            except subprocess.TimeoutExpired:
                print(f"T={T} {mode}: timed out after {args.timeout:.0f} s", flush=True)
            with open(rows) as f:
                got = [json.loads(line) for line in f]
            done = {r["op"] for r in got}
            got += [{"op": op, "T": T, "mode": mode, "error": f"not reached in {args.timeout:.0f} s"}
                    for op in OPS if op not in done]
            res["runs"] += got
            t = {(r["op"], r["T"], r["mode"]): r["ms"] for r in res["runs"] if "ms" in r}
            res["stitch_over_lizard"] = {f"{m} T={T}": t[("fla+flex", T, m)] / t[("lizard", T, m)]
                                         for (op, T, m) in t if op == "lizard" and ("fla+flex", T, m) in t}
            with open(path, "w") as f:
                json.dump(res, f, indent=1)
    print(json.dumps(res["stitch_over_lizard"], indent=1))


if __name__ == "__main__":
    main()
