"""Ray Train: data-parallel DiSC (or ``ft`` / ``ft_kl``) with FSDP2, checkpoints, resume and export.

``launch(cfg)`` runs on the driver: validates, builds the Ray Data pipeline, starts a ``TorchTrainer``
whose workers run :func:`train_loop_per_worker`, then copies the exported Hugging Face directory
to ``run.output_dir``. The worker loop reuses the plain-torch pieces (``train_step``, the packed
objectives); this module only adds distribution:

* student and frozen teacher are both sharded with FSDP2 (``fully_shard`` per decoder layer, then
  the root); on GPU with a bf16 ``MixedPrecisionPolicy`` (fp32 master weights); they are built on the meta
  device and each rank reads only its slices of the weights (:mod:`disc_ray.loading`);
* the loss of a step is divided by the GLOBAL document (or token) count, all-reduced once per
  step, and FSDP's gradient division is turned off, so 2 ranks == 1 rank;
* every rank calls ``ray.train.report`` at the same steps (it is a barrier); checkpoints are torch
  distributed checkpoints (one ``__<rank>_0.distcp`` file per rank) of an :class:`AppState` (model,
  optimizer, LR scheduler and loop state, as in Ray's FSDP2 example);
* resume (after a worker failure, or a driver restart with the same ``run.name``) restores model,
  optimizer, scheduler and the number of batches consumed, so no optimizer step is repeated or skipped.

The worker reads setup -> restore -> loop -> export (:func:`train_loop_per_worker`). ``launch`` is the one
driver: ``jobs/adapt.py`` and every sweep trial (``disc_ray/tuning/trial.py``) call it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

from disc_ray.config import AdaptConfig, build_dataclass, to_dict
from disc_ray.console import configure_console, quiet_train_worker, ray_logging_level, train_log_level
from disc_ray.loading import all_fsdp_modules, build_sharded_models, decoder_layers, resolve_teacher_dtype, shard_model  # noqa: F401
from disc_ray.loop import (build_lr_scheduler, build_optimizer, format_progress, group_by_token_budget, normalizer_of, pack_with_replay,
                           train_step)
from disc_ray.lora import parameter_counts, wrap_student_for_objective
from disc_ray.objectives import pack_batch
from disc_ray.records import load_jsonl
from disc_ray.splits import batch_to_examples

CHECKPOINT_LOOP_KEY = "app.loop"  # the DCP entry holding the scheduler and loop state (see AppState)
# The loop state of a fresh run; a checkpoint's saved state is read over it, so a key added later (or
# missing from an older checkpoint) has its initial value instead of failing the resumed run.
INITIAL_TRAIN_STATE = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "documents_seen": 0, "resumed_from_steps": []}
EXPORT_MARKER = "disc_ray_export.json"


# --------------------------------------------------------------------------- FSDP2


def all_reduce_sum(values: list[float], device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_min(value: int, device) -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


# --------------------------------------------------------------------------- checkpoints


class AppState(Stateful):
    """Everything a training checkpoint restores, saved and loaded through DCP as in Ray's FSDP2 example:
    the student's and the optimizer's sharded state (each rank writes its own ``__<rank>_0.distcp``), the LR
    scheduler and the loop position (:data:`INITIAL_TRAIN_STATE`'s keys, in ``loop``).

    The scheduler and loop state are one JSON string, a single DCP entry (``app.loop``): on restore each is
    read over its current/initial value, so a key added later, or missing from an older checkpoint, never
    fails a resumed run (DCP raises on a key of the target that the checkpoint lacks).
    """

    def __init__(self, model: torch.nn.Module, optimizer, scheduler, loop: dict | None = None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.loop = copy.deepcopy(INITIAL_TRAIN_STATE) if loop is None else loop

    def state_dict(self) -> dict:
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        loop = json.dumps({"train_state": self.loop, "scheduler": self.scheduler.state_dict()})
        return {"model": model_state, "optim": optim_state, "loop": loop}

    def load_state_dict(self, state: dict) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        saved = json.loads(state["loop"])
        self.scheduler.load_state_dict({**self.scheduler.state_dict(), **saved.get("scheduler", {})})
        self.loop = {**copy.deepcopy(INITIAL_TRAIN_STATE), **saved.get("train_state", {})}


def is_training_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint written by :func:`save_training_checkpoint` (model, optimizer, loop state)."""
    if not (Path(directory) / ".metadata").exists():
        return False
    return CHECKPOINT_LOOP_KEY in dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata


def save_training_checkpoint(directory: Path, app: AppState) -> None:
    """A collective: every rank calls it with its shard; DCP writes one file per rank plus ``.metadata``."""
    dcp.save({"app": app}, checkpoint_id=str(directory))


def load_training_checkpoint(directory: Path, app: AppState) -> dict:
    """Restore ``app`` (model, optimizer, scheduler, loop state) in place; returns the loop state.

    Raises ValueError for a checkpoint without disc-ray's loop state (another trainer's, or an older layout)."""
    if not is_training_checkpoint(directory):
        raise ValueError(f"checkpoint {directory} has no loop state ({CHECKPOINT_LOOP_KEY}): it was not written by "
                         "this version of disc-ray's trainer; start a new run.name")
    dcp.load({"app": app}, checkpoint_id=str(directory))
    return app.loop


def load_checkpoint_weights(directory: Path, model: torch.nn.Module) -> torch.nn.Module:
    """The student's weights of a training checkpoint loaded into ``model`` (a full, unsharded model) in this single
    process, without optimizer or loop state (the sweep's drift measurement). Returns ``model``."""
    state = {"app": {"model": model.state_dict()}}
    with warnings.catch_warnings():  # "no process group": a single-process load on purpose
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(directory))
    model.load_state_dict(state["app"]["model"])
    return model


def iterate_examples(shard, cfg: AdaptConfig, skip_batches: int):
    """Micro-batches of DocumentExamples from this rank's dataset shard, skipping the ``skip_batches`` already trained on:
    ``train.batch_size`` documents each, or with ``train.max_tokens_per_step`` documents up to the per-micro-batch
    token budget (:func:`disc_ray.loop.group_by_token_budget`)."""
    if cfg.train.max_tokens_per_step > 0:
        rows = shard.iter_batches(batch_size=64, batch_format="numpy", prefetch_batches=2)
        examples = (example for batch in rows for example in batch_to_examples(batch))
        budget = cfg.train.max_tokens_per_step // cfg.train.grad_accum_steps
        batches = group_by_token_budget(examples, budget, cfg.objective)
    else:
        rows = shard.iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy", prefetch_batches=2)
        batches = (batch_to_examples(batch) for batch in rows)
    for index, batch in enumerate(batches):
        if index >= skip_batches:
            yield batch


def append_metrics_log(run_dir: str | None, metrics: dict, restored_step: int | None) -> None:
    """Rank 0 keeps ``metrics.jsonl`` in a local run directory. On the first log after a (re)start, entries
    past the restored step are dropped: those steps were lost with the failed workers and run again."""
    if not run_dir:
        return
    path = Path(run_dir) / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    if restored_step is not None and path.exists():
        kept = [json.dumps(row) for row in load_jsonl(path) if row.get("step", 0) <= restored_step]
        path.write_text("".join(k + "\n" for k in kept))
    with path.open("a") as f:
        f.write(json.dumps(metrics) + "\n")


# --------------------------------------------------------------------------- the worker: setup -> restore -> loop -> export


@dataclasses.dataclass
class Worker:
    """One Ray Train rank's training objects; ``app`` holds what a checkpoint saves (student, optimizer, scheduler, loop)."""

    rank: int
    device: torch.device
    app: AppState
    teacher: torch.nn.Module | None
    tokenizer: object
    """Rank 0's (it writes the export); None on other ranks with lean loading."""


def set_up_worker(cfg: AdaptConfig, model_source: str, total_steps: int) -> Worker:
    """Build the student (fp32 master weights) and the frozen teacher (``model.teacher_dtype``) sharded with FSDP2
    (bf16 compute on GPU when ``workers.mixed_precision``), memory-lean unless ``model.lean_loading`` is off
    (:mod:`disc_ray.loading`), and the optimizer and LR scheduler."""
    device = ray.train.torch.get_device()
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(cfg.train.seed)
    # lora: PEFT adapters on the frozen base, initialised on the loaded weights, before sharding
    wrap = (lambda student: wrap_student_for_objective(student, cfg.objective, cfg.train.seed)) if cfg.objective.name == "lora" else None
    models = build_sharded_models(
        model_source, needs_teacher=cfg.objective.needs_teacher, device=device,
        teacher_dtype=resolve_teacher_dtype(cfg.model.teacher_dtype, device),
        mixed_precision=device.type == "cuda" and cfg.workers.mixed_precision,
        activation_checkpointing=cfg.workers.activation_checkpointing, trust_remote_code=cfg.model.trust_remote_code,
        lean=cfg.model.lean_loading, with_tokenizer=rank == 0, compile_blocks=cfg.train.compile,  # only rank 0 exports
        wrap_student=wrap)
    if rank == 0 and models.fallback_reason and cfg.model.lean_loading:
        print(f"[disc-ray] loading the whole model on every worker: {models.fallback_reason}", flush=True)
    optimizer = build_optimizer(models.student, cfg.train)
    app = AppState(models.student, optimizer, build_lr_scheduler(optimizer, cfg.train, total_steps))
    return Worker(rank=rank, device=device, app=app, teacher=models.teacher, tokenizer=models.tokenizer)


def restore_worker(worker: Worker, checkpoint: Checkpoint | None) -> None:
    """Resume from Ray Train's latest checkpoint (after a worker failure or a driver restart), if any:
    model, optimizer, scheduler and loop position, so no optimizer step is repeated or skipped."""
    if checkpoint is None:
        return
    with checkpoint.as_directory() as directory:
        state = load_training_checkpoint(Path(directory), worker.app)
    state["resumed_from_steps"] = state["resumed_from_steps"] + [state["step"]]
    if worker.rank == 0:
        print(f"[disc-ray] resumed from step {state['step']} (epoch {state['epoch']}, {state['batches_in_epoch']} batches in)", flush=True)


def take_micro_batches(examples, cfg: AdaptConfig, device, replay: dict | None = None) -> list:
    """Up to ``train.grad_accum_steps`` packed micro-batches from the ``examples`` iterator (fewer at its end).
    ``replay`` (``objective.replay``): ``pool``, ``rank``, ``world_size`` and this rank's ``documents`` so far, which
    is advanced (:func:`disc_ray.loop.pack_with_replay`)."""
    micro = []
    for batch in examples:
        if replay is None:
            micro.append(pack_batch(batch, cfg.objective).to(device))
        else:
            micro.append(pack_with_replay(batch, cfg.objective, replay["pool"], replay["documents"], replay["rank"],
                                          replay["world_size"]).to(device))
            replay["documents"] += len(batch)
        if len(micro) == cfg.train.grad_accum_steps:
            break
    return micro


def run_step(worker: Worker, micro: list, cfg: AdaptConfig, epoch: int) -> dict:
    """One optimizer step over this rank's ``micro`` batches, the loss divided by the GLOBAL document (or token)
    count; advances the loop state and returns the step's metrics summed over ranks."""
    app, device, state = worker.app, worker.device, worker.app.loop
    started = time.perf_counter()
    (global_units,) = all_reduce_sum([normalizer_of(micro, cfg.objective)], device)
    metrics = train_step(app.model, worker.teacher, micro, app.optimizer, app.scheduler, cfg.objective,
                         cfg.train.max_grad_norm, normalizer=global_units)
    loss, ce, kl, replay_loss, tokens, documents = all_reduce_sum(
        [metrics["loss"], metrics["ce"], metrics["kl"], metrics["replay_loss"], metrics["tokens"], metrics["documents"]], device)
    state.update(step=state["step"] + 1, epoch=epoch, batches_in_epoch=state["batches_in_epoch"] + len(micro),
                 documents_seen=state["documents_seen"] + int(documents))
    step_time_s = time.perf_counter() - started
    metrics.update(loss=loss, ce=ce, kl=kl, replay_loss=replay_loss, tokens=tokens, documents=documents, step=state["step"], epoch=epoch,
                   documents_seen=state["documents_seen"], step_time_s=step_time_s, tokens_per_s=tokens / step_time_s)
    return metrics


def report_step(worker: Worker, metrics: dict, with_checkpoint: bool) -> None:
    """``ray.train.report`` on every rank (a barrier), with a DCP checkpoint of the worker's state when asked."""
    with tempfile.TemporaryDirectory(prefix="disc-ray-ckpt-") as tmp:
        checkpoint = None
        if with_checkpoint:
            save_training_checkpoint(Path(tmp), worker.app)
            checkpoint = Checkpoint.from_directory(tmp)
        name = f"checkpoint_{worker.app.loop['step']:06d}" if checkpoint else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
    if checkpoint is not None and worker.rank == 0:
        print(f"[disc-ray] checkpoint {name} saved (step {worker.app.loop['step']})", flush=True)


def run_training_loop(worker: Worker, cfg: AdaptConfig, total_steps: int, run_dir: str | None, replay_pool: list = ()) -> None:
    """Epochs of optimizer steps from the restored loop position up to ``total_steps``; read top to bottom.
    ``replay_pool``: ``(input_ids, response_start)`` pairs (``objective.replay``, tokenized on the driver)."""
    state = worker.app.loop
    restored_step = state["step"]  # the metrics log is cut back to this on the first write
    shard = ray.train.get_dataset_shard("train")
    replay = None
    if cfg.objective.replay:  # this rank's documents so far: exact with train.batch_size (equal shards), else an estimate
        from disc_ray.replay import ReplayExample

        world_size = ray.train.get_context().get_world_size()
        replay = {"pool": [ReplayExample(*item) for item in replay_pool], "rank": worker.rank, "world_size": world_size,
                  "documents": state["documents_seen"] // world_size}
    for epoch in range(state["epoch"], cfg.train.epochs):
        if state["step"] >= total_steps:
            break
        examples = iterate_examples(shard, cfg, skip_batches=state["batches_in_epoch"])
        exhausted = False
        while not exhausted and state["step"] < total_steps:
            micro = take_micro_batches(examples, cfg, worker.device, replay)
            exhausted = len(micro) < cfg.train.grad_accum_steps
            # Every rank must take the same steps (FSDP collectives): stop when any rank has nothing.
            if all_reduce_min(len(micro), worker.device) == 0:
                break
            metrics = run_step(worker, micro, cfg, epoch)
            finished = state["step"] >= total_steps
            should_log = state["step"] % cfg.train.log_every_n_steps == 0 or finished
            should_checkpoint = state["step"] % cfg.run.checkpoint_every_n_steps == 0 and not finished
            if should_log or should_checkpoint:
                if worker.rank == 0:
                    print(format_progress(metrics, total_steps), flush=True)
                    append_metrics_log(run_dir, metrics, restored_step)
                    restored_step = None
                report_step(worker, metrics, with_checkpoint=should_checkpoint)
        if state["step"] < total_steps:
            state.update(epoch=epoch + 1, batches_in_epoch=0)


def export_from_worker(worker: Worker, cfg: AdaptConfig) -> None:
    """Gather the full weights (a collective); rank 0 writes a Hugging Face directory reported as the ``export`` checkpoint
    (a ``lora`` student merged into a plain model). The trainable / total parameter counts go into its ``run.json`` and
    the final report's metrics."""
    from disc_ray.export import export_model

    state = worker.app.loop
    counts = parameter_counts(worker.app.model)
    full_state = get_model_state_dict(worker.app.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    with tempfile.TemporaryDirectory(prefix="disc-ray-export-") as tmp:
        checkpoint = None
        if worker.rank == 0:
            export_model(worker.app.model, worker.tokenizer, tmp, {"config": to_dict(cfg), "train_state": state, "parameters": counts},
                         state_dict=full_state)
            (Path(tmp) / EXPORT_MARKER).write_text(json.dumps({"step": state["step"]}))
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report({"step": state["step"], "exported": 1, **counts}, checkpoint=checkpoint,
                         checkpoint_dir_name="export" if checkpoint else None)


def is_exported(checkpoint: Checkpoint | None) -> bool:
    """Whether Ray Train's latest checkpoint is the final export: the run finished, nothing is left to do."""
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as directory:
        return (Path(directory) / EXPORT_MARKER).exists()


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker: setup -> restore -> loop -> export."""
    cfg = build_dataclass(AdaptConfig, config["cfg"])
    checkpoint = ray.train.get_checkpoint()
    if is_exported(checkpoint):
        return
    if not config.get("verbose", True):
        quiet_train_worker()
    worker = set_up_worker(cfg, config["model_source"], config["total_steps"])
    restore_worker(worker, checkpoint)
    run_training_loop(worker, cfg, config["total_steps"], config["run_dir"], config.get("replay_pool", ()))
    export_from_worker(worker, cfg)


# --------------------------------------------------------------------------- the driver


def ensure_ray(cfg: AdaptConfig, verbose: bool = True) -> None:
    """Connect to a cluster (``run.ray_address`` or ``RAY_ADDRESS``, as set by ``ray job submit``) or start a
    local one. A local cluster gets enough logical CPUs for the training workers AND the Ray Data tasks
    that feed them (otherwise streaming data would wait forever for a CPU), and its dashboard listens
    on ``run.dashboard_host`` (localhost unless configured)."""
    needed = cfg.workers.num_workers * cfg.workers.cpus_per_worker + (cfg.data.concurrency or 1) * cfg.data.num_cpus_per_worker
    init_ray(cfg.run.ray_address, needed, cfg.run.dashboard_host, logging_level=ray_logging_level(verbose))


def init_ray(address: str | None, cpus_needed: float, dashboard_host: str, num_cpus: int | None = None,
             logging_level: int = logging.INFO, resources: dict[str, float] | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) if set, else start a local cluster with ``num_cpus`` logical CPUs
    (default: the machine's cores, at least ``cpus_needed``), the custom ``resources`` and its dashboard on
    ``dashboard_host``. ``logging_level`` is the driver's ``ray`` logger level. No-op when Ray is already
    initialised."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging_level)
        return
    ray.init(num_cpus=num_cpus or max(os.cpu_count() or 1, math.ceil(cpus_needed)), dashboard_host=dashboard_host,
             logging_level=logging_level, resources=resources)


def plan_total_steps(num_examples: int, cfg: AdaptConfig, student_tokens: int = 0) -> int:
    """Optimizer steps for the run: per rank, examples / (batch * accum), ceil, times epochs (or max_steps).

    With ``train.max_tokens_per_step``, steps hold a varying number of documents: the plan is an upper bound
    (greedy packing fills each pair of consecutive micro-batches past the budget, so at most
    ``2 * ceil(tokens / budget)`` of them, and never more than one per document), ``student_tokens`` being the
    corpus's student tokens. An epoch ends when a rank's shard runs out, so no document is dropped by the plan;
    a decaying LR schedule may then stop short of 0."""
    per_rank = num_examples // cfg.workers.num_workers
    batches = -(-per_rank // cfg.train.batch_size)
    if cfg.train.max_tokens_per_step > 0:
        budget = cfg.train.max_tokens_per_step // cfg.train.grad_accum_steps
        batches = min(per_rank, 2 * -(-student_tokens // (cfg.workers.num_workers * budget)) + 1)
    steps = -(-batches // cfg.train.grad_accum_steps) * cfg.train.epochs
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps > 0 else steps


def build_trainer(cfg: AdaptConfig, dataset, total_steps: int, model_source: str, callbacks=(),
                  verbose: bool = True, replay_pool: list = ()) -> TorchTrainer:
    """A ``TorchTrainer`` running :func:`train_loop_per_worker` on ``cfg.workers`` over ``dataset`` (rows of
    ``splits.example_to_row``); ``callbacks`` are Ray Train callbacks (a sweep trial's Tune report callback);
    ``verbose=False`` keeps Ray Train's INFO lines off the console (see ``disc_ray/console.py``)."""
    storage = cfg.run.resolved_storage_path()
    run_dir = None if "://" in storage else str(Path(storage) / cfg.run.name)
    scaling = ScalingConfig(num_workers=cfg.workers.num_workers, use_gpu=cfg.workers.use_gpu,
                            resources_per_worker=cfg.workers.resources_per_worker())
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "total_steps": total_steps, "model_source": model_source, "run_dir": run_dir,
                           "verbose": verbose, "replay_pool": [(e.input_ids, e.response_start) for e in replay_pool]},
        scaling_config=scaling,
        torch_config=TorchConfig(backend="nccl" if cfg.workers.use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.num_checkpoints_to_keep + 1),
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level=train_log_level(verbose)),
        ),
        datasets={"train": dataset},
    )


def log_line(message: str) -> None:
    """The default ``log`` of :func:`launch`: one ``[disc-ray]`` line on stdout."""
    print(f"[disc-ray] {message}", flush=True)


def launch(cfg: AdaptConfig, *, model_source: str | None = None, callbacks=(), run_info: dict | None = None,
           log=log_line, verbose: bool = False) -> dict:
    """The one training driver: data pipeline -> step plan -> ``TorchTrainer.fit`` -> copy of the export to
    ``run.output_dir`` -> its ``run.json``. ``jobs/adapt.py`` and every sweep trial call it.

    ``model_source``: the model as a local directory (resolved from ``cfg.model`` when None, converting once);
    ``callbacks``: Ray Train callbacks for the run; ``run_info``: extra keys for ``run.json``; ``log``: where
    the driver's lines go (without the ``[disc-ray]`` prefix); ``verbose``: Ray's own INFO lines on the console too
    (by default they go only to Ray's log files, see ``disc_ray/console.py``). Connects to (or starts) Ray when
    not initialised.

    Returns the run summary (also ``run.json``): config, data counts, final metrics, total_steps, paths.
    Raises ValueError when the data cannot feed the workers, and the run's error when training failed.
    """
    from disc_ray.data import build_training_dataset
    from disc_ray.export import write_run_manifest
    from disc_ray.model_check import check_model_source
    from disc_ray.models import resolve_model_source

    model_source = model_source or resolve_model_source(cfg.model.name_or_path, cfg.model.cache_dir)  # fails fast
    configure_console(verbose)
    # The exact loss, or one error line before anything starts (ModelCheckError is a ValueError).
    log(f"model check: {check_model_source(model_source, trust_remote_code=cfg.model.trust_remote_code).format()}")
    ensure_ray(cfg, verbose)
    generation = None
    if cfg.objective.generation_task:  # rephrase / cd_base: the initial model's text, generated (or cached) before training
        from disc_ray.data.generation import GenerationPlan

        generation = GenerationPlan(cfg.objective.generation_task, cfg.objective.generation, model_source, cfg.objective.max_transfer_tokens)
    dataset, report = build_training_dataset(cfg.data, cfg.split, with_splits=cfg.objective.name == "disc",
                                             tokenizer=model_source, generation=generation)
    log(f"data: {report.format()}")
    if report.examples == 0:
        raise ValueError(f"no trainable documents in {cfg.data.path}: {report.format()}")
    if report.examples < cfg.workers.num_workers:
        raise ValueError(f"{report.examples} training examples cannot feed {cfg.workers.num_workers} workers")
    student_tokens = report.split_tokens + report.splits if cfg.objective.packs_splits else report.tokens
    total_steps = plan_total_steps(report.examples, cfg, student_tokens)
    log(f"training {cfg.objective.name} on {cfg.workers.num_workers} worker(s) for {total_steps} steps; "
        f"run '{cfg.run.name}' in {cfg.run.resolved_storage_path()}")
    replay_pool = []
    if cfg.objective.replay:  # tokenized (``self``: generated, cached) once on the driver, sent to every worker
        from disc_ray.models import load_tokenizer
        from disc_ray.replay import build_replay_pool

        replay_pool = build_replay_pool(cfg.objective, load_tokenizer(model_source), cfg.data.max_length, model_source=model_source,
                                        log=lambda line: log(line.removeprefix("[disc-ray] ")))
    result = build_trainer(cfg, dataset, total_steps, model_source, callbacks, verbose, replay_pool).fit()
    if result.error:
        raise result.error
    output_dir = Path(cfg.run.resolved_output_dir())
    if output_dir.exists():
        shutil.rmtree(output_dir)
    result.checkpoint.to_directory(str(output_dir))
    summary = {"config": to_dict(cfg), "data": report.to_dict(), "metrics": result.metrics, "total_steps": total_steps,
               "checkpoint_path": result.checkpoint.path, "output_dir": str(output_dir), **(run_info or {})}
    write_run_manifest(output_dir, summary)
    log(f"done: step {result.metrics.get('step')}; model exported to {output_dir}")
    return summary
