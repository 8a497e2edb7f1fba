"""Ray Train: data-parallel DiSC (or ``ft`` / ``ft_kl``) with FSDP2, checkpoints, resume and export.

``launch(cfg)`` runs on the driver: validates, builds the Ray Data pipeline, starts a ``TorchTrainer``
whose workers run :func:`train_loop_per_worker`, then copies the exported Hugging Face directory
to ``run.output_dir``. The worker loop reuses the plain-torch pieces (``train_step``, the packed
objectives); this module only adds distribution:

* student and frozen teacher are both sharded with FSDP2 (``fully_shard`` per decoder layer, then
  the root); on GPU with a bf16 ``MixedPrecisionPolicy`` (fp32 master weights);
* the loss of a step is divided by the GLOBAL document (or token) count, all-reduced once per
  step, and FSDP's gradient division is turned off, so 2 ranks == 1 rank;
* every rank calls ``ray.train.report`` at the same steps (it is a barrier); checkpoints are torch
  distributed checkpoints (one ``__<rank>_0.distcp`` file per rank) plus ``train_state.json``;
* resume (after a worker failure, or a driver restart with the same ``run.name``) restores model,
  optimizer, scheduler and the number of batches consumed, so no optimizer step is repeated or skipped.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from disc_ray.config import AdaptConfig, build_dataclass, to_dict
from disc_ray.loop import build_lr_scheduler, build_optimizer, build_teacher, format_progress, train_step
from disc_ray.objectives import pack_batch
from disc_ray.records import load_jsonl
from disc_ray.splits import batch_to_examples

TRAIN_STATE_FILE = "train_state.json"
# The loop state of a fresh run; a checkpoint's saved state is read over it, so a key added later (or
# missing from an older checkpoint) has its initial value instead of failing the resumed run.
INITIAL_TRAIN_STATE = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "documents_seen": 0, "resumed_from_steps": []}
EXPORT_MARKER = "disc_ray_export.json"


# --------------------------------------------------------------------------- FSDP2


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (``model.model.layers`` for Llama/Qwen/Mistral/Gemma)."""
    base = getattr(model, model.base_model_prefix, model)
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard")
    return list(layers)


def shard_model(model: torch.nn.Module, *, mixed_precision: bool, reshard_after_forward: bool = True) -> torch.nn.Module:
    """FSDP2 as torchtitan does it: each decoder layer is a unit, then the root (embeddings, norm, head)."""
    mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=mp_policy)
    return model


def all_fsdp_modules(model: torch.nn.Module):
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def all_reduce_sum(values: list[float], device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_min(value: int, device) -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


# --------------------------------------------------------------------------- checkpoints


def save_training_checkpoint(directory: Path, student, optimizer, scheduler, state: dict, rank: int) -> None:
    """Sharded DCP of model + optimizer (each rank writes its own file) and, on rank 0, the loop state."""
    model_state, optim_state = get_state_dict(student, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(directory))
    if rank == 0:
        (directory / TRAIN_STATE_FILE).write_text(json.dumps(dict(state, scheduler=scheduler.state_dict())))


def load_training_checkpoint(directory: Path, student, optimizer, scheduler) -> dict:
    model_state, optim_state = get_state_dict(student, optimizer)
    loaded = {"model": model_state, "optim": optim_state}
    dcp.load(loaded, checkpoint_id=str(directory))
    set_state_dict(student, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    path = directory / TRAIN_STATE_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    if "step" not in saved or "scheduler" not in saved:
        raise ValueError(f"checkpoint {directory} has no loop state ({TRAIN_STATE_FILE} without step/scheduler): "
                         "it was not written by disc-ray's trainer; start a new run.name")
    scheduler.load_state_dict(saved.pop("scheduler"))
    return {**copy.deepcopy(INITIAL_TRAIN_STATE), **saved}


def rows_to_batches(shard, cfg: AdaptConfig, skip_batches: int):
    """Iterate micro-batches of DocumentExamples from this rank's dataset shard, skipping those already trained on."""
    for index, batch in enumerate(shard.iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy", prefetch_batches=2)):
        if index >= skip_batches:
            yield batch_to_examples(batch)


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


# --------------------------------------------------------------------------- the worker loop


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker; read top to bottom."""
    from disc_ray.models import load_model_and_tokenizer

    cfg = build_dataclass(AdaptConfig, config["cfg"])
    total_steps, model_source, run_dir = config["total_steps"], config["model_source"], config["run_dir"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    use_bf16 = device.type == "cuda" and cfg.workers.mixed_precision

    # Resume point first: a finished run (its export is the latest checkpoint) has nothing left to do.
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            if (Path(directory) / EXPORT_MARKER).exists():
                return

    # Models: the student (fp32 master weights) and the frozen teacher, both sharded.
    torch.manual_seed(cfg.train.seed)
    student, tokenizer = load_model_and_tokenizer(model_source, dtype=torch.float32, trust_remote_code=cfg.model.trust_remote_code)
    teacher = build_teacher(student) if cfg.objective.needs_teacher else None
    if cfg.workers.activation_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.to(device)
    shard_model(student, mixed_precision=use_bf16)
    for module in all_fsdp_modules(student):
        module.set_gradient_divide_factor(1.0)  # the loss is already divided by the global count
        module.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    if teacher is not None:
        teacher.to(device)
        shard_model(teacher, mixed_precision=use_bf16)
    optimizer = build_optimizer(student, cfg.train)
    scheduler = build_lr_scheduler(optimizer, cfg.train, total_steps)

    state = copy.deepcopy(INITIAL_TRAIN_STATE)
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_training_checkpoint(Path(directory), student, optimizer, scheduler)
        state["resumed_from_steps"] = state["resumed_from_steps"] + [state["step"]]
        if rank == 0:
            print(f"[disc-ray] resumed from step {state['step']} (epoch {state['epoch']}, {state['batches_in_epoch']} batches in)")
    restored_step = state["step"]  # the metrics log is cut back to this on the first write

    shard = ray.train.get_dataset_shard("train")
    accum, normalization = cfg.train.grad_accum_steps, cfg.objective.normalization
    finished = state["step"] >= total_steps
    for epoch in range(state["epoch"], cfg.train.epochs):
        if finished:
            break
        skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
        batches_in_epoch = skip
        iterator = rows_to_batches(shard, cfg, skip)
        exhausted = False
        while not exhausted and not finished:
            micro = []
            for examples in iterator:
                micro.append(pack_batch(examples, cfg.objective).to(device))
                if len(micro) == accum:
                    break
            exhausted = len(micro) < accum
            # Every rank must take the same steps (FSDP collectives): stop when any rank has nothing.
            if all_reduce_min(len(micro), device) == 0:
                break
            started = time.perf_counter()
            units = sum(b.num_documents if normalization == "document" else b.num_target_tokens for b in micro)
            (global_units,) = all_reduce_sum([units], device)
            metrics = train_step(student, teacher, micro, optimizer, scheduler, cfg.objective,
                                 cfg.train.max_grad_norm, normalizer=global_units)
            loss, ce, kl, tokens, documents = all_reduce_sum(
                [metrics["loss"], metrics["ce"], metrics["kl"], metrics["tokens"], metrics["documents"]], device)
            batches_in_epoch += len(micro)
            state.update(step=state["step"] + 1, epoch=epoch, batches_in_epoch=batches_in_epoch,
                         documents_seen=state["documents_seen"] + int(documents))
            finished = state["step"] >= total_steps
            step_time_s = time.perf_counter() - started
            metrics.update(loss=loss, ce=ce, kl=kl, tokens=tokens, documents=documents, step=state["step"], epoch=epoch,
                           documents_seen=state["documents_seen"], step_time_s=step_time_s, tokens_per_s=tokens / step_time_s)
            should_log = state["step"] % cfg.train.log_every_n_steps == 0 or finished
            should_checkpoint = state["step"] % cfg.run.checkpoint_every_n_steps == 0 and not finished
            if should_log or should_checkpoint:
                if rank == 0:
                    print(format_progress(metrics, total_steps), flush=True)
                    append_metrics_log(run_dir, metrics, restored_step)
                    restored_step = None
                with tempfile.TemporaryDirectory(prefix="disc-ray-ckpt-") as tmp:
                    ckpt = None
                    if should_checkpoint:
                        save_training_checkpoint(Path(tmp), student, optimizer, scheduler, state, rank)
                        ckpt = Checkpoint.from_directory(tmp)
                    ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{state['step']:06d}" if ckpt else None)
        if not finished:
            state.update(epoch=epoch + 1, batches_in_epoch=0)

    # Export: gather the full weights (a collective), rank 0 writes a Hugging Face directory.
    full_state = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    with tempfile.TemporaryDirectory(prefix="disc-ray-export-") as tmp:
        ckpt = None
        if rank == 0:
            from disc_ray.export import export_model

            export_model(student, tokenizer, tmp, {"config": to_dict(cfg), "train_state": state}, state_dict=full_state)
            (Path(tmp) / EXPORT_MARKER).write_text(json.dumps({"step": state["step"]}))
            ckpt = Checkpoint.from_directory(tmp)
        ray.train.report({"step": state["step"], "exported": 1}, checkpoint=ckpt, checkpoint_dir_name="export" if ckpt else None)


# --------------------------------------------------------------------------- the driver


def ensure_ray(cfg: AdaptConfig) -> None:
    """Connect to a cluster (``run.ray_address`` or ``RAY_ADDRESS``, as set by ``ray job submit``) or start a
    local one. A local cluster gets enough logical CPUs for the training workers AND the Ray Data tasks
    that feed them (otherwise streaming data would wait forever for a CPU), and its dashboard listens
    on ``run.dashboard_host`` (localhost unless configured)."""
    needed = cfg.workers.num_workers * cfg.workers.cpus_per_worker + (cfg.data.concurrency or 1) * cfg.data.num_cpus_per_worker
    init_ray(cfg.run.ray_address, needed, cfg.run.dashboard_host)


def init_ray(address: str | None, cpus_needed: float, dashboard_host: str, num_cpus: int | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) if set, else start a local cluster with ``num_cpus`` logical CPUs
    (default: the machine's cores, at least ``cpus_needed``) and its dashboard on ``dashboard_host``.
    No-op when Ray is already initialised."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    ray.init(num_cpus=num_cpus or max(os.cpu_count() or 1, math.ceil(cpus_needed)), dashboard_host=dashboard_host)


def plan_total_steps(num_examples: int, cfg: AdaptConfig) -> int:
    """Optimizer steps for the run: per rank, examples / (batch * accum), ceil, times epochs (or max_steps)."""
    per_rank = num_examples // cfg.workers.num_workers
    batches = -(-per_rank // cfg.train.batch_size)
    steps = -(-batches // cfg.train.grad_accum_steps) * cfg.train.epochs
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps > 0 else steps


def build_trainer(cfg: AdaptConfig, dataset, total_steps: int, model_source: str) -> TorchTrainer:
    storage = cfg.run.resolved_storage_path()
    run_dir = None if "://" in storage else str(Path(storage) / cfg.run.name)
    scaling = ScalingConfig(num_workers=cfg.workers.num_workers, use_gpu=cfg.workers.use_gpu,
                            resources_per_worker=cfg.workers.resources_per_worker())
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "total_steps": total_steps, "model_source": model_source, "run_dir": run_dir},
        scaling_config=scaling,
        torch_config=TorchConfig(backend="nccl" if cfg.workers.use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.num_checkpoints_to_keep + 1),
        ),
        datasets={"train": dataset},
    )


def launch(cfg: AdaptConfig, log=print) -> dict:
    """Validate, build the data pipeline, train on Ray, export. Returns a summary dict (also in run.json)."""
    from disc_ray.data import build_training_dataset
    from disc_ray.export import write_run_manifest
    from disc_ray.models import resolve_model_source

    model_source = resolve_model_source(cfg.model.name_or_path, cfg.model.cache_dir)  # fails fast, converts once
    ensure_ray(cfg)
    storage = cfg.run.resolved_storage_path()
    if cfg.data.output_dir is None and "://" not in storage:  # processed rows + rejects live with the run
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, output_dir=str(Path(storage) / cfg.run.name / "data")))
    dataset, report = build_training_dataset(cfg.data, cfg.split, with_splits=cfg.objective.name == "disc",
                                             tokenizer=model_source)
    log(f"[disc-ray] data: {report.format()}")
    if report.examples == 0:
        raise ValueError(f"no trainable documents in {cfg.data.path}: {report.format()}")
    if report.examples < cfg.workers.num_workers:
        raise ValueError(f"{report.examples} training examples cannot feed {cfg.workers.num_workers} workers")
    total_steps = plan_total_steps(report.examples, cfg)
    log(f"[disc-ray] training {cfg.objective.name} on {cfg.workers.num_workers} worker(s) for {total_steps} steps; "
        f"run '{cfg.run.name}' in {cfg.run.resolved_storage_path()}")
    trainer = build_trainer(cfg, dataset, total_steps, model_source)
    result = trainer.fit()
    if result.error:
        raise result.error
    output_dir = Path(cfg.run.resolved_output_dir())
    if output_dir.exists():
        shutil.rmtree(output_dir)
    result.checkpoint.to_directory(str(output_dir))
    summary = {"config": to_dict(cfg), "data": report.to_dict(), "metrics": result.metrics, "total_steps": total_steps,
               "checkpoint_path": result.checkpoint.path, "output_dir": str(output_dir)}
    write_run_manifest(output_dir, summary)
    log(f"[disc-ray] done: step {result.metrics.get('step')}; model exported to {output_dir}")
    return summary
