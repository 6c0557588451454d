"""Compare Lizard configurations by what stage 1 (attention transfer) reaches: the embedded teacher,
the cpu-demo preset's data, one seed and token budget for every variant; the attention-transfer
validation MSE (sum over the 30 layers) at conversion and after stage 1, and each layer's.

    python benchmarks/stage1_sweep.py --name alpha-init \\
        --variant 0:mode=paper,alpha_init=0 --variant 0.25:mode=paper,alpha_init=0.25 ...
    python benchmarks/stage1_sweep.py --name paper-parts \\
        --variant paper:mode=paper --variant paper+rope:mode=paper,rope=window ...

A variant is ``NAME:FIELD=VALUE,...`` of :class:`lizardlm.LizardConfig` (numbers and words as
given); ``--seed S`` (default 0) seeds the conversion and the data order of every variant of the call, and
each run records its seed (give the variants of another seed other names). Writes DIR/<name>-<device>.json (DIR defaults to benchmarks/results) after every variant;
variants already in that file (same budget) are kept and not run again, so a sweep grows over calls.
CPU: about 1.5-3 min per variant at the default 8192 tokens.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lizardlm.train.linearize import linearize
from lizardlm.train.settings import settings_from_preset
from result_names import device_slug


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:FIELD=VALUE,...`` -> (name, LizardConfig overrides); numbers become int or float."""
    name, _, fields = text.partition(":")
    config: dict[str, Any] = {}
    for item in filter(None, fields.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: expected FIELD=VALUE, got {item!r}")
        for cast in (int, float):
            try:
                config[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            config[key] = value
    if not name:
        raise SystemExit(f"--variant {text!r}: expected NAME:FIELD=VALUE,...")
    return name, config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="result file stem")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:FIELD=VALUE,...")
    ap.add_argument("--tokens", type=int, default=8192, help="stage-1 tokens per variant")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    res: dict[str, Any] = {"device": device, "preset": "cpu-demo", "seq_len": args.seq_len,
                           "stage1_tokens": args.tokens, "runs": {}}
    path = Path(args.out) / f"{args.name}-{device_slug(device)}.json"
    if path.exists():
        earlier = json.loads(path.read_text())
        if all(earlier.get(k) == res[k] for k in ("seq_len", "stage1_tokens")):
            res["runs"] = earlier["runs"]
    for name, config in variants:
        if name in res["runs"]:
            continue
        start = time.time()
        settings = settings_from_preset("cpu-demo", seq_len=args.seq_len, stage1_tokens=args.tokens, stage2_tokens=0,
                                        val_tokens=2048, lizard=config, seed=args.seed)
        with tempfile.TemporaryDirectory() as run:
            summary = linearize(settings, run)
        res["runs"][name] = {"config": config, "seed": args.seed, "mse_init": sum(summary["stage1_val_mse_init_per_layer"]),
                             "mse_after": sum(summary["stage1_val_mse_per_layer"]),
                             "mse_after_per_layer": summary["stage1_val_mse_per_layer"],
                             "stage1_val_ppl": summary["stage1_val_ppl"], "seconds": time.time() - start}
        print(name, {k: v for k, v in res["runs"][name].items() if k != "mse_after_per_layer"}, flush=True)
        path.write_text(json.dumps(res, indent=1))
    print("->", path)


if __name__ == "__main__":
    main()
