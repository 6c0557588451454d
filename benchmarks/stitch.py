"""The off-the-shelf stitch vs the Lizard op: flash-linear-attention's ``chunk_gla`` (the gated
linear branch, scalar gate broadcast over the feature dim) plus a FlexAttention sliding window
(the window branch), each in its preferred layout, their outputs summed. That is a lower bound on
the stitch's cost: it leaves out the shifted keys, meta tokens and the shared normaliser. Timed side
by side with the Lizard op and SDPA causal (cuDNN) in one process, same shapes as attention.py.

    python benchmarks/stitch.py [--out DIR] [--seqs 2048,8192,32768]

Needs ``fla`` (pip install flash-linear-attention); writes DIR/attention-stitch-<device>.json after
every measurement, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from attention import TOKENS, W, bench, inputs, lizard, sdpa_cudnn  # noqa: E402


def stitch_inputs(x: dict) -> dict:
    """The same tensors as leaves in fla's (B, T, H, .) layout, the gate expanded per feature."""
    t = lambda a: a.detach().transpose(1, 2).contiguous().requires_grad_()
    g = x["g"].detach()[..., None].expand(*x["fk"].shape[:3], x["fk"].shape[-1])
    return {"q": x["q"], "k": x["k"], "v": x["v"], "fq": t(x["fq"]), "fk": t(x["fk"]), "vt": t(x["v"]),
            "g": t(g.float())}


def make_stitch(T: int):
    from fla.ops.gla import chunk_gla
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    window = create_block_mask(lambda b, h, q, kv: (q >= kv) & (q - kv < W), None, None, T, T, device="cuda")
    flex = torch.compile(flex_attention)

    def stitch(s: dict) -> torch.Tensor:
        lin, _ = chunk_gla(s["fq"], s["fk"], s["vt"], s["g"], scale=1.0)
        win = flex(s["q"], s["k"], s["v"], block_mask=window)
        return win + lin.transpose(1, 2)

    return stitch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--seqs", default="2048,8192,32768")
    args = ap.parse_args()
    import fla
    import triton

    dev = torch.cuda.get_device_name()
    slug = re.sub(r"[^a-z0-9]+", "-", dev.lower()).strip("-")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"attention-stitch-{slug}.json")

    def save() -> None:
        t = {(r["op"], r["T"], r["mode"]): r["ms"] for r in res["runs"] if "ms" in r}
        res["stitch_over_lizard"] = {f"{m} T={T}": t[("fla+flex", T, m)] / t[("lizard", T, m)]
                                     for (op, T, m) in t if op == "lizard" and ("fla+flex", T, m) in t}
        with open(path, "w") as f:
            json.dump(res, f, indent=1)

    res = {"device": dev, "torch": torch.__version__, "triton": triton.__version__, "fla": fla.__version__, "runs": []}
    for T in [int(s) for s in args.seqs.split(",")]:
        B = TOKENS // T
        x = inputs(B, T, requires_grad=True)
        s = stitch_inputs(x)
        stitch = make_stitch(T)
        for mode in ("fwd", "fwd+bwd"):
            for name, fn, arg in (("sdpa-cudnn", sdpa_cudnn, x), ("lizard", lizard, x), ("fla+flex", stitch, s)):
                try:
                    ms, peak = bench(fn, arg, mode == "fwd+bwd")
                except Exception as e:  # a kernel that refuses: record why
                    res["runs"].append({"op": name, "T": T, "mode": mode, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                    print(name, T, mode, "failed:", str(e)[:200], flush=True)
                    save()
                    continue
                res["runs"].append({"op": name, "T": T, "B": B, "mode": mode, "ms": ms, "peak_mib": peak})
                print(f"{name:10s} T={T:6d} {mode:8s} {ms:8.3f} ms  peak +{peak:6.0f} MiB", flush=True)
                save()
        del x, s
        torch.cuda.empty_cache()
    save()
    print(json.dumps(res["stitch_over_lizard"], indent=1))


if __name__ == "__main__":
    main()
