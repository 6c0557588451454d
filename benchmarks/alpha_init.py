"""Pick the paper form's initial alpha by measurement: stage 1 (attention transfer) of the embedded
teacher in ``mode="paper"`` for several ``alpha_init``, same data, seed and token budget; the
attention-transfer validation MSE (sum over layers) before and after is what alpha should lower.

    python benchmarks/alpha_init.py [--alphas 0,0.1,0.25,0.5,1] [--tokens 8192] [--out DIR]

Writes DIR/alpha-init-<device>.json (DIR defaults to benchmarks/results). CPU: about 3 min per alpha.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from lizardlm.train.linearize import linearize
from lizardlm.train.settings import settings_from_preset
from result_names import device_slug


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alphas", default="0,0.1,0.25,0.5,1")
    ap.add_argument("--tokens", type=int, default=8192, help="stage-1 tokens per alpha")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    res = {"device": device, "preset": "cpu-demo", "seq_len": 256, "stage1_tokens": args.tokens, "runs": {}}
    for alpha in (float(a) for a in args.alphas.split(",")):
        start = time.time()
        settings = settings_from_preset("cpu-demo", seq_len=256, stage1_tokens=args.tokens, stage2_tokens=0,
                                        val_tokens=2048, lizard={"mode": "paper", "alpha_init": alpha})
        with tempfile.TemporaryDirectory() as run:
            summary = linearize(settings, run)
        res["runs"][str(alpha)] = {"mse_init": sum(summary["stage1_val_mse_init_per_layer"]),
                                   "mse_after": sum(summary["stage1_val_mse_per_layer"]), "seconds": time.time() - start}
        print(alpha, res["runs"][str(alpha)], flush=True)
    path = Path(args.out) / f"alpha-init-{device_slug(device)}.json"
    path.write_text(json.dumps(res, indent=1))
    print("->", path)


if __name__ == "__main__":
    main()
