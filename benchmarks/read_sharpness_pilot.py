"""Would a sharper read help the copy? A CPU pilot on one trained run, before any knob is built.

The nearest passkey runs of issue 19 miss ~5% of keys by copy slips, half of them a digit replaced by the
key's next one: a read that half-matches the key one position on. This scales the query's Hedgehog logits
by ``t`` (``phi_q(u) = [softmax(t u W), softmax(-t u W)]``; keys and the window branch untouched; ``t = 1``
is the model as trained), which sharpens what each query reads from the linear memory, and runs the passkey
evaluation (seed 0: the evaluation's own prompts) at the run's decay scale and write contrast::

    python benchmarks/read_sharpness_pilot.py --run RUN_DIR --lengths 4096 --trials 20 --sharpness 1,1.5,2 \
        --decay-scale 0.125 --write-contrast 5 --out benchmarks/results/read-sharpness-pilot-cpu.json

writes ``{"run", "device", "dtype", "settings", "results": {t: {length: {"acc", "answer_nll", "misses", "seconds"}}}}``,
the file rewritten after each setting. Few trials on CPU: the answer NLL (teacher-forced, per token) is the finer
signal; exact match needs the GPU's hundreds of trials::

    python benchmarks/read_sharpness_pilot.py --run RUN_DIR --device cuda --batch-size 8 --lengths 2048,4096,8192 \
        --trials 100 --sharpness 1,1.5,2,3 --decay-scale 0.125 --write-contrast 5 --out $OUT/pilot.json

(bfloat16 on CUDA, as ``lizardlm eval`` runs). ``--tasks piqa,arc_easy,...`` adds the zero-shot tasks at each
``t`` (``results[t]["zero_shot"]``: ``{task: accuracy}``, ARC-c and HellaSwag length-normalised as the README
reports them); ``--lengths ''`` skips the passkey.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lizardlm.eval.harness import run_harness
from lizardlm.eval.knobs import at_knobs
from lizardlm.eval.passkey import passkey_eval
from lizardlm.layers.attention import LizardAttention
from lizardlm.layers.feature_map import HedgehogFeatureMap
from lizardlm.loading import load_with_tokenizer
from readme_table import PRESET_METRICS, zero_shot_mean


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
    p.add_argument("--tasks", default="", help="zero-shot tasks to run at every sharpness too")
    p.add_argument("--limit", type=int, default=None, help="examples a zero-shot task (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1, help="passkey prompts a batch (the zero-shot tasks: auto)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, tok = load_with_tokenizer(args.run, device=args.device, dtype=dtype)
    lengths = [int(x) for x in args.lengths.split(",") if x]
    tasks = [t for t in args.tasks.split(",") if t]
    layers = [m for m in model.modules() if isinstance(m, LizardAttention)]
    plain = [m.feature_map_q for m in layers]
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k not in ("run", "out")}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    record = {"run": Path(args.run).name, "device": device, "dtype": str(dtype).removeprefix("torch."),
              "settings": settings, "results": {}}
    for t in (float(s) for s in args.sharpness.split(",")):
        for m, fm in zip(layers, plain):
            m.feature_map_q = fm if t == 1 else SharpenedQuery(fm, t)
        t0 = time.perf_counter()
        with at_knobs(model, args.decay_scale, args.write_contrast):
            res = passkey_eval(model, tok, lengths=lengths, trials=args.trials, seed=0, depths=10, progress=False,
                               batch_size=args.batch_size) if lengths else {"lengths": []}
            row = {str(r["length"]): {k: r.get(k) for k in ("acc", "answer_nll", "misses")}
                   | {"seconds": round(time.perf_counter() - t0, 1)} for r in res["lengths"]}
            if tasks:
                entries = run_harness(model, tok, tasks, limit=args.limit)
                scores = {task: entries[task]["metrics"].get(metric) for task, metric, _ in PRESET_METRICS
                          if entries.get(task, {}).get("status") == "ok"}
                row["zero_shot"] = scores | {"mean": zero_shot_mean(scores)}
        record["results"][f"{t:g}"] = row
        out.write_text(json.dumps(record, indent=1))
        print(f"t={t:g}", json.dumps(record["results"][f"{t:g}"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
