"""The training step and a single-process adaptation loop (plain torch, no Ray).

``train_step`` is the whole optimizer step in one screen: forward/backward over the micro-batches
(the loss of each divided by the step's total document or token count, so gradient accumulation
4x1 equals 1x4), clip, step. The Ray trainer calls the same function on every worker;
``run_adaptation`` wires it into a local loop for debugging, GPU checks and small jobs.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch

from disc_ray.config import TrainConfig
from disc_ray.objectives import ObjectiveConfig, PackedBatch, compute_loss, pack_batch
from disc_ray.splits import DocumentExample, DocumentSkipped, SplitConfig, prepare_document


def build_teacher(student: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the initial model. A separate copy, so ``.eval()`` never touches the student."""
    teacher = copy.deepcopy(student)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (norm gains and biases are not decayed)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), foreach=False)


def build_lr_scheduler(optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then constant (paper), cosine or linear decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min((step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def normalizer_of(batches: Iterable[PackedBatch], cfg: ObjectiveConfig) -> int:
    """What the summed loss of an optimizer step is divided by: documents or scored tokens (replay examples' included)."""
    return sum(b.num_units[0 if cfg.normalization == "document" else 1] for b in batches)


def train_step(student, teacher, micro_batches: list[PackedBatch], optimizer, scheduler, obj_cfg: ObjectiveConfig,
               max_grad_norm: float = 0.0, normalizer: float | None = None) -> dict[str, float]:
    """One optimizer step over ``micro_batches``; returns loss, kl, ce, replay_loss, grad_norm, lr, tokens, documents.
    ``ce``, ``kl`` and ``replay_loss`` are the terms of ``loss`` (each divided by ``normalizer``; with replay the
    normaliser counts replay examples too, so ``ce`` is then the documents' share of ``loss``, not their mean CE).

    ``normalizer`` is the step's global document (or token) count; under data parallelism the caller
    all-reduces it so every rank divides by the same number.
    """
    if normalizer is None:
        normalizer = normalizer_of(micro_batches, obj_cfg)
    loss = ce_sum = kl_sum = replay_sum = 0.0
    for batch in micro_batches:
        out = compute_loss(student, teacher, batch, obj_cfg, normalizer)
        out.loss.backward()
        loss += out.loss.item()
        ce_sum += out.ce_sum
        kl_sum += out.kl_sum
        replay_sum += out.replay_sum
    params = [p for p in student.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "loss": loss,
        "ce": ce_sum / normalizer,
        "kl": kl_sum / normalizer,
        "replay_loss": replay_sum / normalizer,
        "grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
        "lr": lr,
        "tokens": float(sum(b.student_input_ids.numel() + (b.teacher_input_ids.numel() if obj_cfg.needs_teacher else 0) for b in micro_batches)),
        "documents": float(sum(b.num_documents for b in micro_batches)),
    }


def pack_with_replay(examples: list[DocumentExample], obj_cfg: ObjectiveConfig, replay_pool: list | None, documents_before: int,
                     rank: int = 0, world_size: int = 1) -> PackedBatch:
    """:func:`pack_batch`, plus the replay examples due after ``documents_before`` documents of this rank
    (:func:`disc_ray.replay.replay_due`) when ``replay_pool`` is given."""
    batch = pack_batch(examples, obj_cfg)
    if replay_pool:
        from disc_ray.replay import pack_replay_batch, replay_due, take_replay

        first, count = replay_due(documents_before, len(examples), obj_cfg.replay_ratio)
        batch.replay = pack_replay_batch(take_replay(replay_pool, first, count, rank, world_size), obj_cfg.normalization)
    return batch


def student_tokens(example: DocumentExample, obj_cfg: ObjectiveConfig) -> int:
    """Tokens ``example`` adds to the student's packed row: its splits, each with the special prefix (``disc``,
    ``cd_base``), or the whole document (``ft``, ``ft_kl``, ...). What ``train.max_tokens_per_step`` counts."""
    if not obj_cfg.packs_splits:
        return len(example.input_ids)
    return sum(example.num_special_prefix + end - start for start, end in example.split_spans)


def group_by_token_budget(examples: Iterable[DocumentExample], max_tokens: int,
                          obj_cfg: ObjectiveConfig) -> Iterator[list[DocumentExample]]:
    """Consecutive examples grouped into micro-batches of at most ``max_tokens`` student tokens
    (:func:`student_tokens`), in order; an example larger than the budget alone is a micro-batch of its own
    (never cut: its splits are the paper's units). Deterministic, so a resumed run skips the same groups."""
    group, used = [], 0
    for example in examples:
        cost = student_tokens(example, obj_cfg)
        if group and used + cost > max_tokens:
            yield group
            group, used = [], 0
        group.append(example)
        used += cost
    if group:
        yield group


@dataclass
class PreparedCorpus:
    examples: list[DocumentExample]
    documents_read: int
    skipped: Counter = field(default_factory=Counter)
    generation: dict | None = None
    """``rephrase`` / ``cd_base``: :class:`disc_ray.data.config.GenerationCounts` as a dict."""

    def summary(self) -> str:
        skipped = ", ".join(f"{reason}={n}" for reason, n in sorted(self.skipped.items())) or "none"
        return f"documents read={self.documents_read} examples={len(self.examples)} skipped: {skipped}"


def prepare_corpus(documents: Iterable, tokenizer, split_cfg: SplitConfig, obj_cfg: ObjectiveConfig, max_length: int = 2048,
                   strict: bool = False) -> PreparedCorpus:
    """Documents -> training examples; unusable documents are counted by reason (or raise, if ``strict``).
    ``cd_base``: ``documents`` are ``(document, continuation)`` pairs (:func:`generate_training_texts`)."""
    prepared = PreparedCorpus(examples=[], documents_read=0)
    if obj_cfg.name == "cd_base":
        from disc_ray.data.prepare import prepare_transfer_documents

        pairs = list(documents)
        results = prepare_transfer_documents([d for d, _ in pairs], [c for _, c in pairs], tokenizer, max_length, obj_cfg.max_transfer_tokens)
        for index, result in enumerate(results):
            prepared.documents_read += 1
            if isinstance(result, DocumentSkipped):
                if strict:
                    raise DocumentSkipped(result.reason, f"document {index}: {result}")
                prepared.skipped[result.reason] += 1
            else:
                prepared.examples += result
        return prepared
    for index, text in enumerate(documents):
        prepared.documents_read += 1
        try:
            prepared.examples += prepare_document(text, tokenizer, split_cfg, max_length, with_splits=obj_cfg.name == "disc")
        except DocumentSkipped as skip:
            if strict:
                raise DocumentSkipped(skip.reason, f"document {index}: {skip}") from None
            prepared.skipped[skip.reason] += 1
    return prepared


def generate_training_texts(model, tokenizer, documents: list[str], obj_cfg: ObjectiveConfig, skipped: Counter,
                            counts=None) -> list:
    """The in-process generation stage (:mod:`disc_ray.data.generation`) with ``model`` (a frozen copy generates):
    ``rephrase``: the rewrites; ``cd_base``: ``(document, continuation)`` pairs. Empty generations (and truncated ones
    under ``on_truncated: skip``) are left out and counted in ``skipped`` (``generation_empty`` / ``generation_truncated``)."""
    from disc_ray.data.cleaning import clean_text
    from disc_ray.data.generation import generate_for_documents, module_identity
    from disc_ray.evaluation.backends import HFBackend

    settings = obj_cfg.generation
    backend = HFBackend(build_teacher(model), tokenizer, batch_size=1, progress=False)
    generations = generate_for_documents(list(documents), backend, obj_cfg.generation_task, settings, module_identity(model),
                                         clean=lambda text: clean_text(text)[0], counts=counts)
    texts = []
    for document, generation in zip(documents, generations):
        if generation.empty or (generation.truncated and settings.on_truncated == "skip"):
            skipped["generation_empty" if generation.empty else "generation_truncated"] += 1
        else:
            texts.append(generation.text if obj_cfg.name == "rephrase" else (document, generation.text))
    return texts


def iterate_micro_batches(examples: list[DocumentExample], batch_size: int, seed: int, epoch: int) -> list[list[DocumentExample]]:
    """Shuffle (seeded per epoch) and cut into micro-batches of ``batch_size`` examples."""
    order = list(range(len(examples)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return [[examples[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]


@dataclass
class AdaptResult:
    history: list[dict[str, float]]
    output_dir: Path | None
    corpus: PreparedCorpus
    model: torch.nn.Module | None = None
    """The trained model: ``student`` itself, or for ``lora`` the PEFT model wrapping it (adapters not merged)."""


def run_adaptation(student, tokenizer, documents: Iterable, *, train_cfg: TrainConfig = TrainConfig(),
                   split_cfg: SplitConfig = SplitConfig(), obj_cfg: ObjectiveConfig = ObjectiveConfig(),
                   max_length: int = 2048, output_dir: str | Path | None = None, run_info: dict | None = None,
                   log=print) -> AdaptResult:
    """Adapt ``student`` on ``documents`` in this process; export a Hugging Face directory if ``output_dir``.

    For ``lora`` the student is wrapped with LoRA adapters first (:func:`disc_ray.lora.wrap_student_for_objective`, modifying
    ``student`` in place) and the export is merged; ``AdaptResult.model`` is the model that was trained."""
    from disc_ray.lora import parameter_counts, wrap_student_for_objective
    from disc_ray.replay import build_replay_pool

    torch.manual_seed(train_cfg.seed)
    skipped_by_generation, counts = Counter(), None
    if obj_cfg.generation_task:  # rephrase / cd_base: the initial model's text, before any training
        from disc_ray.data.config import GenerationCounts

        counts = GenerationCounts()
        documents = generate_training_texts(student, tokenizer, list(documents), obj_cfg, skipped_by_generation, counts)
        log(f"[disc-ray] {counts.format()}")
    corpus = prepare_corpus(documents, tokenizer, split_cfg, obj_cfg, max_length)
    corpus.documents_read += sum(skipped_by_generation.values())
    corpus.skipped.update(skipped_by_generation)
    corpus.generation = counts.as_dict() if counts else None
    log(f"[disc-ray] {corpus.summary()}")
    if not corpus.examples:
        raise ValueError(f"no trainable documents: {corpus.summary()}")
    replay_pool = build_replay_pool(obj_cfg, tokenizer, max_length, model=student, log=log) if obj_cfg.replay else None
    teacher = build_teacher(student) if obj_cfg.needs_teacher else None
    student = wrap_student_for_objective(student, obj_cfg, train_cfg.seed)
    student.train()
    optimizer = build_optimizer(student, train_cfg)
    steps_per_epoch = math.ceil(len(corpus.examples) / (train_cfg.batch_size * train_cfg.grad_accum_steps))
    total_steps = steps_per_epoch * train_cfg.epochs if train_cfg.max_steps < 0 else train_cfg.max_steps
    scheduler = build_lr_scheduler(optimizer, train_cfg, total_steps)
    history: list[dict[str, float]] = []
    documents_seen, step = 0, 0
    for epoch in range(train_cfg.epochs):
        micro = iterate_micro_batches(corpus.examples, train_cfg.batch_size, train_cfg.seed, epoch)
        for first in range(0, len(micro), train_cfg.grad_accum_steps):
            if step >= total_steps:
                break
            started = time.perf_counter()
            batches = []
            for m in micro[first : first + train_cfg.grad_accum_steps]:
                batches.append(pack_with_replay(m, obj_cfg, replay_pool, documents_seen + sum(b.num_documents for b in batches)))
            metrics = train_step(student, teacher, batches, optimizer, scheduler, obj_cfg, train_cfg.max_grad_norm)
            step += 1
            documents_seen += int(metrics["documents"])
            metrics.update(step=step, epoch=epoch, documents_seen=documents_seen,
                           tokens_per_s=metrics["tokens"] / (time.perf_counter() - started))
            history.append(metrics)
            if step % train_cfg.log_every_n_steps == 0 or step == total_steps:
                log(format_progress(metrics, total_steps))
    exported = None
    if output_dir is not None:
        from disc_ray.export import export_model

        info = dict(run_info or {}, data={"documents_read": corpus.documents_read, "examples": len(corpus.examples),
                                          "skipped": dict(corpus.skipped)}, metrics=history[-1] if history else {},
                    parameters=parameter_counts(student))
        exported = export_model(student, tokenizer, output_dir, info)
        log(f"[disc-ray] exported the adapted model to {exported}")
    return AdaptResult(history=history, output_dir=exported, corpus=corpus, model=student)


def format_progress(metrics: dict[str, float], total_steps: int) -> str:
    parts = [f"step {int(metrics['step'])}/{total_steps}", f"loss {metrics['loss']:.4f}"]
    if metrics.get("kl"):
        parts.append(f"kl {metrics['kl']:.4f}")
    if metrics.get("ce"):
        parts.append(f"ce {metrics['ce']:.4f}")
    if metrics.get("replay_loss"):
        parts.append(f"replay {metrics['replay_loss']:.4f}")
    parts += [f"grad_norm {metrics['grad_norm']:.3f}", f"lr {metrics['lr']:.2e}",
              f"docs {int(metrics['documents_seen'])}", f"{metrics.get('tokens_per_s', 0):.0f} tok/s"]
    return "[disc-ray] " + " | ".join(parts)
