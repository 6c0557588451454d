"""The linearization job: teacher -> Lizard model, stage 1 (attention transfer) then stage 2 (LoRA)."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

import lizardlm
from lizardlm.convert import check_convertible, convert
from lizardlm.data.packing import IGNORE_INDEX, PackedSplits, input_ids, inputs_and_labels
from lizardlm.devices import pick_device
from lizardlm.errors import CheckpointError, LizardError, TrainingError
from lizardlm.layers import attention_transfer
from lizardlm.layers.long_adapter import LongAdapter
from lizardlm.progress import progress
from lizardlm.train.activations import checkpoint_decoder_layers
from lizardlm.train.answer_repeats import answer_repeat_weights
from lizardlm.train.answer_rows import AdapterRowGate, answer_rows
from lizardlm.train.checkpoint import atomic_save, copy_params, load_checked, writing
from lizardlm.train.distributed import batches_behind, micro_batch_size, on_main, shard, sum_over_ranks
from lizardlm.train.fingerprint import files_fingerprint, model_fingerprint, tensors_fingerprint
from lizardlm.train.hybrid import even_layers, lizard_layer_ids, parse_select, worst_layers
from lizardlm.train.lm_loss import chunked_target_nll
from lizardlm.train.loop import MetricsLog, Stage, batch_at, run_stage
from lizardlm.train.plots import plot_stage_losses
from lizardlm.train.rundir import RunDir, load_run, read_init
from lizardlm.train.settings import TrainSettings
from lizardlm.train.sharding import held_fraction, shard_model
from lizardlm.train.state_passing import StatePassing, slot_probabilities

logger = logging.getLogger(__name__)


def _rank_rows(rows: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    return shard(rows, accelerator.process_index, accelerator.num_processes)


@torch.no_grad()
def _keep_in_step(model, rows: torch.Tensor, batch_size: int, accelerator: Accelerator) -> None:
    """One-row forwards, results dropped, for the batches of ``rows`` this rank makes fewer of than
    rank 0 (:func:`batches_behind`: FSDP's all-gathers pair every rank's forwards)."""
    for _ in range(batches_behind(rows.shape[0], batch_size)):
        with accelerator.autocast():
            model(input_ids=input_ids(rows[:1]).to(accelerator.device), use_cache=False, logits_to_keep=1)


def lm_loss(model, rows: torch.Tensor, batch_size: int, accelerator: Accelerator, desc: str = "val perplexity") -> float:
    """Mean next-token negative log-likelihood over ``rows`` (each row one scoring window; every token
    scored, input-only ones too, so validation losses compare across data options), the rows shared
    out over the processes."""
    from lizardlm.eval.perplexity import perplexity

    mine = _rank_rows(rows, accelerator)
    nll_sum, tokens = 0.0, 0
    if mine.shape[0]:
        with accelerator.autocast():
            res = perplexity(model, None, input_ids(mine).reshape(-1), window=rows.shape[1], batch_size=batch_size,
                             progress=accelerator.is_main_process, desc=desc)
        nll_sum, tokens = res["nll"] * res["tokens"], res["tokens"]
    _keep_in_step(model, rows, batch_size, accelerator)
    nll_sum, tokens = sum_over_ranks([nll_sum, tokens])
    return nll_sum / tokens


@torch.no_grad()
def transfer_mse(model, rows: torch.Tensor, batch_size: int, accelerator: Accelerator,
                 desc: str = "val attention MSE") -> list[float]:
    """Per-layer validation MSE between Lizard and teacher attention outputs (mean over rows, the rows
    shared out over the processes)."""
    mine = _rank_rows(rows, accelerator)
    with attention_transfer(model) as layers:
        sums = [0.0] * len(layers)
        for start in progress(range(0, mine.shape[0], batch_size), desc=desc, leave=False,
                              enable=accelerator.is_main_process):
            batch = mine[start : start + batch_size]
            with accelerator.autocast():
                model(input_ids=input_ids(batch).to(accelerator.device), use_cache=False, logits_to_keep=1)
            sums = [s + layer.transfer_loss.item() * batch.shape[0] for s, layer in zip(sums, layers)]
        _keep_in_step(model, rows, batch_size, accelerator)
    *sums, count = sum_over_ranks([*sums, mine.shape[0]])
    return [s / count for s in sums]


def _transfer_loss_fn(model):
    """Stage 1's loss ``sum_l mse_l``, each layer's term backpropagated as soon as it is computed
    (one layer's graph alive at a time); returns it detached (:attr:`Stage.backward` is False).
    The whole model runs (the LM head on the last position only): under ``--fsdp`` a forward must
    enter through the root unit."""

    def loss_fn(batch: torch.Tensor):
        with attention_transfer(model, backward=True) as layers:
            model(input_ids=input_ids(batch), use_cache=False, logits_to_keep=1)
            losses = torch.stack([layer.transfer_loss for layer in layers])
        return losses.sum(), {"mse_mean": losses.mean()}

    return loss_fn


def _lane_resets(passing: StatePassing, splits: PackedSplits, settings: TrainSettings,
                 accelerator: Accelerator) -> Callable[[int], None]:
    """Before each step of rows in lanes: tell ``passing`` which of this process's rows may start
    from their slot's passed memory (:meth:`~lizardlm.data.packing.PackedSplits.passes_on`)."""
    passes_on = splits.passes_on(settings.reset_at_documents)

    def before_step(step: int) -> None:
        rows = batch_at(passes_on, step, settings.batch_size, settings.seed, contiguous=True)
        passing.allow(shard(rows, accelerator.process_index, accelerator.num_processes))

    return before_step


def _lm_loss_fn(model, average: str = "tokens", passing: StatePassing | None = None, chunk: int = 0,
                gate: AdapterRowGate | None = None, repeat_weight: float = 1.0):
    """Stage 2's loss: next-token cross-entropy over the tokens that carry loss (all but the input-only
    ones), averaged as :attr:`TrainSettings.loss_average` says. ``"tokens"``: their summed loss over
    their count; ``"rows"``: ``mean_r (sum_t l_rt / n_r)`` over the rows with ``n_r > 0`` targets. Counts
    are clamped to at least 1, so a batch without targets gives 0 with a gradient path, and no host
    sync decides which (a CUDA-graphed step records it once). ``passing``: the rows start from the
    memories it hands on (:mod:`lizardlm.train.state_passing`). ``chunk`` > 0: the LM head and the
    cross-entropy ``chunk`` positions at a time, recomputed in the backward (:mod:`lizardlm.train.lm_loss`).
    ``gate``: what the answer rows train of the adapter (:mod:`lizardlm.train.answer_rows`).
    ``repeat_weight`` != 1 (``"rows"`` only): an answer target equal to the one before it counts that many
    times in its row's sum (:mod:`lizardlm.train.answer_repeats`)."""

    def loss_fn(batch: torch.Tensor):
        if passing is None:
            return rows_loss(batch)
        passing.start(batch)
        loss = rows_loss(batch)
        passing.keep()
        return loss

    if passing is not None:
        loss_fn.snapshot = passing.snapshot  # a CUDA-graphed step puts the memories back after its warm-up

    def rows_loss(batch: torch.Tensor):
        if gate is not None:
            gate.freeze(answer_rows(batch))
        ids, labels = inputs_and_labels(batch)
        targets = labels[:, 1:]
        if chunk:
            nll = chunked_target_nll(model, ids, targets, chunk)
            if average == "tokens":
                return nll.sum() / (targets != IGNORE_INDEX).sum().clamp(min=1), {}
        elif average == "tokens":
            count = (targets != IGNORE_INDEX).sum().clamp(min=1)
            return model(input_ids=ids, labels=labels, use_cache=False, num_items_in_batch=count).loss, {}
        else:
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 up, float64 kept
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                                  reduction="none").view_as(targets)
        if repeat_weight != 1:
            nll = nll * answer_repeat_weights(targets, answer_rows(batch), repeat_weight).to(nll.dtype)
        count = (targets != IGNORE_INDEX).sum(1)
        has = (count > 0).to(nll.dtype)
        return (nll.sum(1) / count.clamp(min=1) * has).sum() / has.sum().clamp(min=1), {}

    return loss_fn


def save_adapter(peft_model, run: RunDir, teacher_path: str | None = None) -> None:
    """Save the LoRA adapter so that it names its real base: the run directory, which gets the Lizard
    ``config.json`` and remote code, so ``AutoPeftModelForCausalLM.from_pretrained(run/adapter,
    trust_remote_code=True)`` rebuilds teacher + Lizard parameters under it (not the plain teacher);
    for a baseline run (nothing converted), the teacher at ``teacher_path`` itself."""
    from lizardlm.models.modeling import write_remote_code

    base = peft_model.get_base_model()
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = teacher_path or str(run.path.resolve())
    config.task_type = "CAUSAL_LM"  # loaded through AutoModelForCausalLM (else peft imports our class by name)
    peft_model.save_pretrained(str(run.adapter), save_embedding_layers=False)  # embeddings are not trained
    if teacher_path is None:
        base.config.save_pretrained(str(run.path))
        write_remote_code(run.path, type(base))


@contextmanager
def _phase(name: str, *, seconds: dict[str, float], main: bool) -> Iterator[None]:
    """Time one phase of this call into ``seconds[name]`` and say it on stderr (rank 0): where a call's
    minutes went, also with progress bars off."""
    t0 = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - t0, 2)
    if main:
        print(f"lizardlm: {name}: {seconds[name]:.1f} s", file=sys.stderr, flush=True)


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def linearize(settings: TrainSettings, out: str | Path, *, resume: bool = False, merge: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole job into ``out``; returns the summary also written to summary.json.

    The run directory is locked while this runs (a second process into it is refused). Launched by
    ``torchrun``/``accelerate launch``, every process runs this: the global batch is shared out,
    gradients are averaged (:mod:`lizardlm.train.distributed`), and rank 0 alone locks, reads and
    writes ``out``; with ``settings.fsdp`` the frozen weights are sharded over the processes
    (:mod:`lizardlm.train.sharding`; the summary's ``params_held`` is rank 0's share of them all).
    """
    run = RunDir(out)
    if resume and run.is_empty():
        logger.warning("nothing to resume in %s (no %s, only temp files of an interrupted start): starting the run",
                       run.path, run.manifest.name)
        resume = False
    try:
        return _linearize(settings, run, resume, merge)
    finally:
        run.unlock()


def _linearize(settings: TrainSettings, run: RunDir, resume: bool, merge: bool) -> dict[str, Any]:
    from lizardlm.data import build_splits
    from lizardlm.teachers import load_teacher, resolve_teacher

    teacher_ref = resolve_teacher(settings.teacher).to_dict()
    device = pick_device(settings.device)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="bf16" if device == "cuda" else "no")
    main = accelerator.is_main_process
    micro_batch_size(settings.batch_size, accelerator.num_processes)
    if settings.fsdp and accelerator.num_processes == 1:
        raise LizardError("--fsdp shards the model over the processes of a launch, and this is one process: "
                          "launch with torchrun --nproc_per_node N (N >= 2), or drop --fsdp")

    def open_run() -> dict[str, Any] | None:
        if not resume:
            run.check_new()
            return None
        run.read_manifest()  # a directory that holds no run fails here, before lock() would create it
        run.lock()
        return run.check_resumable(settings)

    manifest = on_main(open_run)
    torch.manual_seed(settings.seed)

    started = time.perf_counter()
    phase_seconds: dict[str, float] = {}
    phase = partial(_phase, seconds=phase_seconds, main=main)
    with accelerator.main_process_first(), phase("teacher loaded"):
        # rank 0 fills any download / conversion cache first; --fsdp: each process loads the teacher into
        # host memory, and sharding moves its share to the device
        model, tokenizer = load_teacher(settings.teacher, dtype=torch.float32,
                                        device="cpu" if settings.fsdp else accelerator.device)
    lizard_config = settings.lizard_config()
    num_layers = model.config.num_hidden_layers
    try:
        auto_count = None  # auto:K: K layers chosen after stage 1
        if settings.softmax_select is not None:
            kind, count = parse_select(settings.softmax_select)
            spaced = even_layers(num_layers, count)  # also checks that count fits
            lizard_config.softmax_layers = spaced if kind == "even" else []
            auto_count = count if kind == "auto" else None
        if settings.baseline is None:
            check_convertible(model, lizard_config)
    except ValueError as err:
        raise LizardError(str(err)) from None
    if set(range(num_layers)) <= set(lizard_config.softmax_layers):
        raise LizardError(
            f"--softmax-layers keeps softmax in all {num_layers} layers: nothing to linearize; leave at least one out"
        )
    fingerprints = {"teacher": model_fingerprint(model)}
    with phase("data built"):  # on rank 0 alone, handed to every rank: ranks tokenizing at once slow each other
        splits = on_main(lambda: build_splits(
            settings.data, tokenizer, settings.seq_len,
            train_tokens=max(settings.stage1_tokens, settings.stage2_tokens, settings.seq_len * settings.batch_size),
            val_tokens=settings.val_tokens, seed=settings.seed, in_order=settings.contiguous_rows,
            lanes=settings.batch_size, teacher=(model, tokenizer),
        ))
    lanes = {} if splits.train_follows is None else {"follows": splits.train_follows,
                                                        "starts_document": splits.train_starts_document}
    fingerprints["data"] = tensors_fingerprint({"train": splits.train, "val": splits.val, **lanes})
    init = None  # (Lizard parameters, adapter tensors) of the run this one starts from, while it needs them
    if settings.init_from is not None and (manifest is None or "stage2" not in manifest["completed"]):
        lizard_init, adapter_init, fingerprints["init_from"] = read_init(settings.init_from, settings,
                                                                         fingerprints["teacher"], teacher_ref["path"])
        init = (lizard_init, adapter_init)
    if manifest is None:  # inputs are valid: only now does the run directory come into being

        def claim() -> None:
            run.lock()
            run.check_new()  # again, under the lock: another process may have started a run here meanwhile

        on_main(claim)
        manifest = {
            "teacher": teacher_ref,
            "settings": settings.to_dict(),
            "data": splits.meta,
            "fingerprints": fingerprints,
            "completed": [],
            "results": {},
            "versions": {"lizardlm": lizardlm.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        }
    else:  # every rank checks (the same manifest and fingerprints): all raise alike
        run.check_teacher(manifest, fingerprints["teacher"], teacher_ref["path"])
        run.check_data(manifest, fingerprints["data"], settings.data)
        run.check_init(manifest, fingerprints.get("init_from"), settings.init_from)
        # same teacher and data (by fingerprint), maybe spelled otherwise; settings that may change, changed
        manifest["teacher"], manifest["settings"] = teacher_ref, settings.to_dict()
        manifest.setdefault("fingerprints", {}).update(fingerprints)
    if main:
        run.write_manifest(manifest)
    results = manifest["results"]
    log = MetricsLog(run)
    graphs = settings.use_cuda_graphs(accelerator.device.type, accelerator.num_processes)
    if graphs and main:
        print("lizardlm: training steps replay from CUDA graphs (--no-cuda-graphs: eager)", file=sys.stderr, flush=True)
    train_kw = dict(
        batch_size=settings.batch_size, seed=settings.seed, warmup_fraction=settings.warmup_fraction,
        weight_decay=settings.weight_decay, checkpoint_every=settings.checkpoint_every, adam_betas=settings.adam_betas,
        run=run, accelerator=accelerator, log=log, cuda_graph=graphs,
    )

    lizard_params: dict[str, torch.nn.Parameter] = {}
    if settings.baseline is None:
        if "softmax_layers" in results:  # auto:K chose them in an earlier call
            lizard_config.softmax_layers = results["softmax_layers"]
        elif settings.softmax_select is not None and lizard_config.softmax_layers:  # even:K
            results["softmax_layers"] = lizard_config.softmax_layers
        with phase("converted"):
            model = convert(model, lizard_config)  # before sharding: it changes the model's class, as FSDP does
        lizard_params = dict(model.lizard_named_parameters())
        if init is not None and "stage1" not in manifest["completed"]:  # a long adapter added (read_init) keeps its zeros
            added = {n for n in lizard_params if n not in init[0] and isinstance(model.get_submodule(n.rpartition(".")[0]),
                                                                                 LongAdapter)}
            copy_params({n: p for n, p in lizard_params.items() if n not in added}, init[0], settings.init_from)
    model.requires_grad_(False)
    if settings.fsdp:
        shard_model(model, lizard_params.values(), accelerator.device)
    if "teacher_val_loss" not in results:
        # every Lizard layer passes its teacher's attention on: the teacher's loss
        with attention_transfer(model), phase("teacher validated"):
            results["teacher_val_loss"] = lm_loss(model, splits.val, settings.batch_size, accelerator,
                                                  "teacher: val perplexity")
    if settings.baseline is None:
        lizard_params = _stage1(model, lizard_params, settings, splits, run, manifest, train_kw, accelerator, log,
                                auto_count, phase)

    # Stage 2: LoRA on next-token loss (Lizard parameters optionally keep training).
    peft_model = get_peft_model(
        model,
        LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                   target_modules=list(settings.lora_targets)),
    )
    if init is not None:  # the adapter goes on from the run's (a resumed stage 2 then restores its checkpoint)
        loaded = set_peft_model_state_dict(peft_model, init[1])
        missing = sorted({n for n, _ in peft_model.named_parameters() if "lora_" in n} & set(loaded.missing_keys))
        if loaded.unexpected_keys or missing:
            raise CheckpointError(f"--init-from {settings.init_from}: its adapter does not fit this model "
                                  f"(unexpected {sorted(loaded.unexpected_keys)[:3]}, missing {missing[:3]})")
    for p in lizard_params.values():
        p.requires_grad_(settings.stage2_train_lizard)
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    if settings.gradient_checkpointing:
        checkpoint_decoder_layers(peft_model)
    if "stage2" not in manifest["completed"]:
        t0 = time.perf_counter()
        peft_model.train()
        passing = None
        if settings.passes_state:
            passing = StatePassing(peft_model, slot_probabilities(settings.state_passing, splits.meta,
                                                                  accelerator.process_index, accelerator.num_processes))
        keep = settings.answer_rows_lora
        gate = AdapterRowGate(peft_model, keep) if keep is not None else None
        loss_fn = _lm_loss_fn(peft_model, settings.loss_average, passing, settings.loss_chunk, gate,
                              settings.answer_repeat_weight)
        stage = Stage("stage2", settings.steps(2), settings.stage2_lr, trainable, loss_fn, label="stage 2/2: LoRA",
                      contiguous=settings.contiguous_rows,
                      before_step=_lane_resets(passing, splits, settings, accelerator) if settings.contiguous_rows else None)
        with phase("stage 2 trained"), passing or nullcontext(), gate or nullcontext():
            before = _train(stage, splits.train, run, manifest, train_kw, main)
        peft_model.eval()
        with phase("stage 2 validated"):
            results["stage2_val_loss"] = lm_loss(peft_model, splits.val, settings.batch_size, accelerator,
                                                 "stage 2: val perplexity")
        results["stage2_seconds"] = before + time.perf_counter() - t0
        if main:
            with writing(run.adapter):
                save_adapter(peft_model, run, teacher_ref["path"] if settings.baseline else None)
            if settings.stage2_train_lizard:
                atomic_save(lizard_params, run.lizard_weights)
        _complete("stage2", ("adapter", "lizard") if lizard_params else ("adapter",), run, manifest, main)
        if main:
            with writing(run.path / "stage2_loss.png"):
                plot_stage_losses(log.read("stage2"), run.path / "stage2_loss.png",
                                  "Stage 2: LoRA fine-tuning (next-token loss)")

    if merge and main:  # from the files written: the model lizardlm.load gives (whole, also after --fsdp)
        merged = load_run(run.path)[0]
        with writing(run.merged):
            merged.save_pretrained(str(run.merged))
            tokenizer.save_pretrained(str(run.merged))

    stage1 = settings.baseline is None
    summary = {
        "teacher": teacher_ref["name"],
        "mode": settings.baseline or lizard_config.mode,
        "baseline": settings.baseline,
        "softmax_layers": model.config.lizard["softmax_layers"] if stage1 else list(range(num_layers)),
        "val_tokens": int(splits.val[:, 1:].numel()),
        "teacher_val_loss": results["teacher_val_loss"],
        "teacher_val_ppl": _ppl(results["teacher_val_loss"]),
        "stage1_val_loss": results["stage1_val_loss"] if stage1 else None,
        "stage1_val_ppl": _ppl(results["stage1_val_loss"]) if stage1 else None,
        "student_val_loss": results["stage2_val_loss"],
        "student_val_ppl": _ppl(results["stage2_val_loss"]),
        "stage1_val_mse_init_per_layer": results["stage1_val_mse_init"] if stage1 else None,
        "stage1_val_mse_per_layer": results["stage1_val_mse"] if stage1 else None,
        "stage1_seconds": results["stage1_seconds"] if stage1 else 0.0,
        "stage2_seconds": results["stage2_seconds"],
        "wall_seconds_this_call": time.perf_counter() - started,
        "phase_seconds_this_call": phase_seconds,
        "device": manifest["device"],
        "processes": accelerator.num_processes,
        "params_held": held_fraction(peft_model),
    }
    if main:
        with writing(run.summary):
            run.summary.write_text(json.dumps(summary, indent=2))
    return summary


def _stage1(model, lizard_params: dict[str, torch.nn.Parameter], settings: TrainSettings, splits, run: RunDir,
            manifest: dict[str, Any], train_kw: dict[str, Any], accelerator: Accelerator, log: MetricsLog,
            auto_count: int | None, phase) -> dict[str, torch.nn.Parameter]:
    """Stage 1 (attention transfer, only the Lizard parameters train), or its recorded result; with
    ``auto_count`` K (``--softmax-layers auto:K``), the K layers of highest validation transfer MSE
    after it revert to softmax attention (:mod:`lizardlm.train.hybrid`). ``lizard_params`` are the
    converted model's Lizard parameters; returns them (those left after a revert). ``phase(name)``
    times a phase (:func:`_phase`)."""
    results, main = manifest["results"], accelerator.is_main_process
    if "stage1_val_mse_init" not in results:
        with phase("converted model validated"):
            results["stage1_val_mse_init"] = transfer_mse(model, splits.val, settings.batch_size, accelerator,
                                                          "converted: val attention MSE")
        if main:
            run.write_manifest(manifest)
    if "stage1" in manifest["completed"]:
        # with --stage2-train-lizard, a kill just before stage 2 completes leaves its Lizard weights, unrecorded;
        # the stage-2 checkpoint holds them too, so only their presence is checked then
        verify = "stage2" in manifest["completed"] or not settings.stage2_train_lizard

        def read_lizard() -> dict[str, torch.Tensor]:
            run.check_output(manifest, "lizard", verify=verify)
            return load_checked(run.lizard_weights)[0]

        copy_params(lizard_params, on_main(read_lizard), run.lizard_weights)
        return lizard_params
    t0 = time.perf_counter()
    for p in lizard_params.values():
        p.requires_grad_(True)
    model.train()
    stage = Stage("stage1", settings.steps(1), settings.stage1_lr, lizard_params, _transfer_loss_fn(model),
                  label="stage 1/2: attention transfer", steps_after=settings.steps(2), backward=False)
    with phase("stage 1 trained"):
        before = _train(stage, splits.train, run, manifest, train_kw, main)
    model.eval()
    with phase("stage 1 validated"):  # no steps (--stage1-tokens 0): the converted model's, measured above
        results["stage1_val_mse"] = transfer_mse(model, splits.val, settings.batch_size, accelerator,
                                                 "stage 1: val attention MSE") if settings.steps(1) else results["stage1_val_mse_init"]
    if auto_count is not None:
        chosen = worst_layers(results["stage1_val_mse"], lizard_layer_ids(model), auto_count)
        model.revert_to_softmax(chosen)
        results["softmax_layers"] = chosen
        lizard_params = dict(model.lizard_named_parameters())
    if main:
        atomic_save(lizard_params, run.lizard_weights)
    results["stage1_val_loss"] = lm_loss(model, splits.val, settings.batch_size, accelerator, "stage 1: val perplexity")
    results["stage1_seconds"] = before + time.perf_counter() - t0
    _complete("stage1", ("lizard",), run, manifest, main)
    if main:
        with writing(run.path / "stage1_loss.png"):
            plot_stage_losses(log.read("stage1"), run.path / "stage1_loss.png",
                              "Stage 1: attention transfer (sum of layer MSE)")
    return lizard_params


def _train(stage: Stage, rows: torch.Tensor, run: RunDir, manifest: dict[str, Any], train_kw: dict[str, Any],
           main: bool) -> float:
    """:func:`run_stage` (its return: the seconds of the steps of earlier calls); a NaN/inf stop is recorded
    in the manifest (by rank 0), so that the resume may lower the learning rate."""
    try:
        return run_stage(stage, rows, **train_kw)
    except TrainingError:
        manifest["diverged"] = stage.name
        if main:
            run.write_manifest(manifest)
        raise


def _complete(stage: str, outputs: tuple[str, ...], run: RunDir, manifest: dict[str, Any], main: bool) -> None:
    """Mark ``stage`` complete in the manifest, with the fingerprints of the outputs it wrote (rank 0
    holds the files and writes the manifest)."""
    manifest.pop("diverged", None)
    manifest["completed"].append(stage)
    if main:
        for name in outputs:
            manifest["fingerprints"][name] = files_fingerprint(*run.outputs(name))
        run.write_manifest(manifest)
