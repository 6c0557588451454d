"""Would a sharper read help the copy? A CPU pilot on one trained run, before any knob is built.

The nearest passkey runs of issue 19 miss ~5% of keys by copy slips, half of them a digit replaced by the
key's next one: a read that half-matches the key one position on. This scales the query's Hedgehog logits
by ``t`` (``phi_q(u) = [softmax(t u W), softmax(-t u W)]``; keys and the window branch untouched; ``t = 1``
is the model as trained), which sharpens what each query reads from the linear memory, and runs the passkey
evaluation (seed 0: the evaluation's own prompts) at the run's decay scale and write contrast::

    python benchmarks/read_sharpness_pilot.py --run RUN_DIR --lengths 4096 --trials 20 --sharpness 1,1.5,2 \
        --decay-scale 0.125 --write-contrast 5 --out benchmarks/results/read-sharpness-pilot-cpu.json

writes ``{"run", "settings", "results": {t: {length: {"acc", "answer_nll", "misses", "seconds"}}}}``, the file
rewritten after each setting. Few trials on CPU: the answer NLL (teacher-forced, per token) is the finer
signal; exact match needs the GPU's hundreds of trials.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lizardlm.eval.knobs import at_knobs
from lizardlm.eval.passkey import passkey_eval
from lizardlm.layers.attention import LizardAttention
from lizardlm.layers.feature_map import HedgehogFeatureMap
from lizardlm.loading import load_with_tokenizer


class SharpenedQuery(torch.nn.Module):
    """A query feature map whose logits are scaled by ``sharpness`` before the two softmaxes."""

    def __init__(self, inner: HedgehogFeatureMap, sharpness: float) -> None:
        super().__init__()
        self.inner, self.sharpness = inner, sharpness

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.inner(u * self.sharpness)  # (t u) W = t (u W): the logits scaled


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--lengths", default="4096")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--sharpness", default="1,1.5,2")
    p.add_argument("--decay-scale", type=float, default=1.0)
    p.add_argument("--write-contrast", type=float, default=1.0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    model, tok = load_with_tokenizer(args.run)
    layers = [m for m in model.modules() if isinstance(m, LizardAttention)]
    plain = [m.feature_map_q for m in layers]
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k not in ("run", "out")}
    record = {"run": Path(args.run).name, "device": "cpu", "dtype": "float32", "settings": settings, "results": {}}
    for t in (float(s) for s in args.sharpness.split(",")):
        for m, fm in zip(layers, plain):
            m.feature_map_q = fm if t == 1 else SharpenedQuery(fm, t)
        t0 = time.perf_counter()
        with at_knobs(model, args.decay_scale, args.write_contrast):
            res = passkey_eval(model, tok, lengths=[int(x) for x in args.lengths.split(",")], trials=args.trials,
                               seed=0, depths=10, progress=False)
        record["results"][f"{t:g}"] = {str(r["length"]): {k: r.get(k) for k in ("acc", "answer_nll", "misses")}
                                       | {"seconds": round(time.perf_counter() - t0, 1)} for r in res["lengths"]}
        out.write_text(json.dumps(record, indent=1))
        print(f"t={t:g}", json.dumps(record["results"][f"{t:g}"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
