"""The read sharpness (``LizardConfig.read_sharpness``, ``t``) on one trained run, setting by setting, paired.

``t`` scales the query's Hedgehog logits (``phi_q(u) = [softmax(t u W), softmax(-t u W)]``; keys and the
window branch untouched; ``t = 1`` is the model as trained), which sharpens what each query reads from the
linear memory; it is aimed at the copy slips of issue 19's nearest passkey runs (a digit replaced by the
key's next one: a read that half-matches the key one position on). Every ``t`` runs the evaluation's own
passkey prompts (seed 0) at the run's decay scale and write contrast, so the settings' misses pair up::

    python benchmarks/read_sharpness_pilot.py --run RUN_DIR --device cuda --batch-size 8 --lengths 2048,4096,8192 \
        --trials 200 --sharpness 1,2,3 --decay-scale 0.125 --write-contrast 5 --out $OUT/read-sharpness.json

writes ``{"run", "device", "dtype", "settings", "results": {t: {length: {"acc", "answer_nll", "misses",
"wrong", "seconds"}}}}`` (``wrong``: the indices of the trials missed; bfloat16 on CUDA, as ``lizardlm
eval`` runs, float32 on CPU), the file rewritten after each setting. ``--tasks piqa,arc_easy,...`` adds the
zero-shot tasks at each ``t`` (``results[t]["zero_shot"]``: ``{task: accuracy}`` as the README reports them,
and their mean); ``--lengths ''`` skips the passkey. ``--replay EVAL_JSON`` scores the passkey trials of an
earlier evaluation (``lizardlm eval``'s JSON, on the evaluation template) again: every one it missed and as
many of its hits (seeded), so that a few dozen prompts on CPU say which misses a setting mends and which hits
it breaks (``results[t]["replay"]``: each trial's key, length, depth, earlier and new answer). To choose the
knob for a model, ``lizardlm tune`` searches it beside the other two.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from tqdm import tqdm

from lizardlm.eval.harness import run_harness
from lizardlm.eval.knobs import at_knobs
from lizardlm.eval.passkey import depth_grid, make_prompt, passkey_eval, run_prompts
from lizardlm.loading import load_with_tokenizer
from readme_table import PRESET_METRICS, zero_shot_mean


def replay_plan(eval_json: str, seed: int = 0) -> list[dict]:
    """The passkey trials of ``eval_json`` to score again: every miss and as many hits drawn with ``seed``, each
    ``{"length", "depth", "key", "was"}`` (``was``: the earlier answer's digits), the depth put back on its
    grid (the JSON rounds it to 4 places)."""
    lengths = json.loads(Path(eval_json).read_text())["tasks"]["passkey"]["model"]["details"]["lengths"]
    plan: list[dict] = []
    for rec in lengths:
        trials = rec.get("trials", [])
        grid = depth_grid(len(rec["by_depth"]))
        misses = [t for t in trials if not t["correct"]]
        hits = random.Random(seed).sample([t for t in trials if t["correct"]], len(misses))
        plan += [{"length": rec["length"], "depth": min(grid, key=lambda g: abs(g - t["depth"])), "key": t["key"],
                  "was": t["pred"]} for t in misses + hits]
    return plan


def replay(model, tok, plan: list[dict]) -> list[dict]:
    """Each trial of ``plan`` (:func:`replay_plan`) run again: its record with ``now`` (the answer's digits)
    and ``answer_nll``."""
    out = []
    for trial in tqdm(plan, desc="replay", unit="prompt"):
        (got,) = run_prompts(model, tok, [make_prompt(tok, trial["length"], trial["depth"], key=trial["key"])])
        out.append(trial | {"now": got["pred"], "answer_nll": got["answer_nll"]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--lengths", default="4096")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--sharpness", default="1,1.5,2")
    p.add_argument("--decay-scale", type=float, default=1.0)
    p.add_argument("--write-contrast", type=float, default=1.0)
    p.add_argument("--replay", default=None, help="an evaluation's JSON whose passkey misses (and as many hits) to replay")
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
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k not in ("run", "out")}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    record = {"run": Path(args.run).name, "device": device, "dtype": str(dtype).removeprefix("torch."),
              "settings": settings, "results": {}}
    for t in (float(s) for s in args.sharpness.split(",")):
        with at_knobs(model, args.decay_scale, args.write_contrast, t):
            res = passkey_eval(model, tok, lengths=lengths, trials=args.trials, seed=0, depths=10, progress=False,
                               batch_size=args.batch_size) if lengths else {"lengths": []}
            row = {str(r["length"]): {k: r.get(k) for k in ("acc", "answer_nll", "misses")}
                   | {"wrong": [i for i, d in enumerate(r["trials"]) if not d["correct"]]}
                   | {"seconds": r.get("seconds")} for r in res["lengths"]}
            if args.replay:
                row["replay"] = replay(model, tok, replay_plan(args.replay))
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
