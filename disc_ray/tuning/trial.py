"""One sweep trial: a Tune function trainable that builds and fits a ``TorchTrainer``, then evaluates.

:func:`run_trial` runs in the trial's own process (a Tune actor):

1. builds the trial's AdaptConfig (base + sampled values; its Ray Train run is ``<sweep>/runs/trial_<id>``),
2. trains through :func:`disc_ray.train.launch` (the same driver as ``jobs/adapt.py``), with
   :class:`DriftReportCallback`, Ray Train's ``TuneReportCallback`` extended to measure the drift from
   the original model on every checkpoint the run reports (and on the final export), so every training
   report reaches Tune, the checkpointed ones with ``drift_kl`` / ``drift_nll``, and early stopping can act,
3. evaluates the exported model with :func:`disc_ray.evaluation.runner.evaluate` against the original's
   evaluation, which the driver ran once for the whole sweep (``<sweep>/baseline/eval.json``),
4. reports the final scores with ``ray.tune.report``.

A trial restarted after the driver died resumes its Ray Train run from its last checkpoint (same run
name); one whose model was already exported is not trained again, and one already evaluated is not
evaluated again. ``<sweep>/trial_log.jsonl`` records when each trial started, trained and was evaluated.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

from disc_ray.config import AdaptConfig, to_dict
from disc_ray.records import load_jsonl
from disc_ray.tuning.space import Sweep

logger = logging.getLogger(__name__)

TRIAL_LOG = "trial_log.jsonl"


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """What every trial needs from the driver (handed over with ``tune.with_parameters``)."""

    sweep: Sweep
    model_source: str
    """The original model as a local directory (resolved once on the driver)."""
    baseline_dir: str
    """Folder of the original's ``eval.json``."""
    drift_records: tuple
    """The original's ``{"prompt", "response"}`` references used for drift during training."""


def append_trial_log(sweep_dir: str | Path, trial_id: str, event: str, **extra) -> None:
    line = json.dumps({"trial_id": trial_id, "event": event, "time": round(time.time(), 3), "pid": os.getpid(), **extra})
    with open(Path(sweep_dir) / TRIAL_LOG, "a") as f:
        f.write(line + "\n")


def read_trial_log(sweep_dir: str | Path) -> list[dict]:
    path = Path(sweep_dir) / TRIAL_LOG
    if not path.exists():
        return []
    return load_jsonl(path)


# --------------------------------------------------------------------------- drift


def load_checkpoint_model(directory: Path, original, objective=None):
    """The student's weights from a Ray Train checkpoint of this repo: an HF export, or a training checkpoint
    (torch distributed checkpoint, loaded into a copy of ``original`` in this single process). A ``lora`` run's
    training checkpoint (``objective``: its :class:`~disc_ray.objectives.ObjectiveConfig`) holds the PEFT model's
    state: it is loaded into a LoRA-wrapped copy built from ``objective``, then merged into a plain model."""
    from transformers import AutoModelForCausalLM

    from disc_ray.train import EXPORT_MARKER, is_training_checkpoint, load_checkpoint_weights

    if (directory / EXPORT_MARKER).exists() or (directory / "config.json").exists():
        return AutoModelForCausalLM.from_pretrained(directory, dtype=next(original.parameters()).dtype)
    if not is_training_checkpoint(directory):
        return None
    if objective is not None and objective.name == "lora":
        from disc_ray.lora import apply_lora

        adapted = load_checkpoint_weights(directory, apply_lora(copy.deepcopy(original), objective))
        return adapted.merge_and_unload().eval()
    return load_checkpoint_weights(directory, copy.deepcopy(original))


class DriftMeter:
    """Holds the original model and the tokenized references; measures a model's drift from the original."""

    def __init__(self, original_dir: str, records: list[dict]):
        from disc_ray.evaluation.drift import build_drift_batches
        from disc_ray.models import load_model_and_tokenizer

        import torch

        self.original, tokenizer = load_model_and_tokenizer(original_dir, dtype=torch.float32, device="cpu")
        self.original.eval().requires_grad_(False)
        self.batches = build_drift_batches(tokenizer, records)

    def measure(self, adapted) -> dict:
        from disc_ray.evaluation.drift import compute_drift

        drift = compute_drift(self.original, adapted, self.batches)
        return {"drift_kl": drift["drift_kl"], "drift_nll": drift["drift_nll"]}

    def measure_checkpoint(self, directory: Path, objective=None) -> dict:
        adapted = load_checkpoint_model(Path(directory), self.original, objective)
        return {} if adapted is None else self.measure(adapted)


def _tune_report_callback_class():
    from ray.tune.integration.ray_train import TuneReportCallback

    return TuneReportCallback


class DriftReportCallback(_tune_report_callback_class()):
    """Ray Train's ``TuneReportCallback`` (every report of the run goes to Tune) that adds ``drift_kl`` and
    ``drift_nll`` to the reports that carry a checkpoint (every ``run.checkpoint_every_n_steps`` steps and the
    final export). It runs in the Train controller, on CPU, one checkpoint at a time."""

    def __init__(self, original_dir: str, records: list[dict], objective=None):
        super().__init__()
        self.original_dir = original_dir
        self.records = list(records)
        self.objective = objective  # the trial's ObjectiveConfig: a lora checkpoint is read through its adapters
        self._meter = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_meter"] = None  # loaded lazily where the callback runs
        return state

    def after_report(self, run_context, metrics, checkpoint):
        if checkpoint is not None and metrics:
            started = time.perf_counter()
            first = dict(metrics[0])
            try:
                if self._meter is None:
                    self._meter = DriftMeter(self.original_dir, self.records)
                with checkpoint.as_directory() as directory:
                    first.update(self._meter.measure_checkpoint(Path(directory), self.objective))
                first["drift_time_s"] = time.perf_counter() - started
            except Exception as err:  # a failed measurement must not fail the training run
                logger.warning("drift measurement failed on %s: %s", checkpoint.path, err)
                first["drift_error"] = str(err)[:300]
            metrics = [first, *metrics[1:]]
        super().after_report(run_context, metrics, checkpoint)


# --------------------------------------------------------------------------- training


def _same_config(stored: dict, cfg: AdaptConfig) -> bool:
    return json.loads(json.dumps(stored, default=str)) == json.loads(json.dumps(to_dict(cfg), default=str))


def train_trial(cfg: AdaptConfig, context: TrialContext, callback) -> tuple[Path, dict]:
    """:func:`disc_ray.train.launch` with the trial's Tune report ``callback``, unless this trial already finished
    with the same config. Returns the exported model directory and the run summary (also its ``run.json``)."""
    from disc_ray.train import launch

    output_dir = Path(cfg.run.resolved_output_dir())
    manifest = output_dir / "run.json"

    def log(message: str) -> None:
        print(f"[disc-ray sweep] {cfg.run.name}: {message}", flush=True)

    if manifest.exists():
        summary = json.loads(manifest.read_text())
        if _same_config(summary.get("config", {}), cfg) and summary.get("sweep_trial_complete"):
            log(f"already trained, model in {output_dir}")
            return output_dir, summary
    summary = launch(cfg, model_source=context.model_source, callbacks=[callback],
                     run_info={"sweep_trial_complete": True}, log=log)
    if not context.sweep.settings.keep_checkpoints:
        removed = drop_training_checkpoints(Path(summary["checkpoint_path"]))
        log(f"deleted {len(removed)} training checkpoints (sweep.keep_checkpoints: false)")
    return output_dir, summary


def drop_training_checkpoints(export: Path) -> list[str]:
    """Delete the training checkpoints beside a finished run's export (its sibling ``checkpoint_*`` folders):
    only a resume needs them, and a finished trial is never resumed."""
    removed = [path for path in sorted(export.parent.glob("checkpoint_*")) if path.is_dir()] if export.is_dir() else []
    for path in removed:
        shutil.rmtree(path)
    return [path.name for path in removed]


# --------------------------------------------------------------------------- evaluation


def evaluate_trial(model_dir: Path, trial_id: str, context: TrialContext) -> dict:
    """``eval.json`` of the trial's model vs the original (reused when already written with the same settings)."""
    from disc_ray.evaluation.runner import evaluate

    cfg = context.sweep.evaluation
    out_dir = model_dir / "eval"
    previous = out_dir / "eval.json"
    if previous.exists():
        record = json.loads(previous.read_text())
        if cfg.matches(record.get("config")) and record.get("baseline", {}).get("model") == context.model_source:
            return record
    return evaluate(str(model_dir), cfg, baseline=context.baseline_dir, out_dir=out_dir, name=f"trial_{trial_id}")


def baseline_scores(context: TrialContext):
    from disc_ray.evaluation.selection import run_scores

    record = json.loads((Path(context.baseline_dir) / "eval.json").read_text())
    cfg = context.sweep.evaluation
    return run_scores("original", record["suites"], cfg.domain_metrics, cfg.skill_metrics)


def final_metrics(record: dict, trial_id: str, model_dir: Path, summary: dict, context: TrialContext,
                  meter: DriftMeter | None) -> dict:
    """The trial's last Tune report: scores, drops vs the original, drift, eligibility and the searcher's score."""
    from disc_ray.evaluation.selection import run_scores
    from disc_ray.tuning.selection import judge_trial

    cfg = context.sweep.evaluation
    scores = run_scores(trial_id, record["suites"], cfg.domain_metrics, cfg.skill_metrics)
    drift = record["suites"].get("drift")
    if drift is not None:
        drift_kl, drift_nll = drift.get("kl"), drift.get("nll")
    elif meter is not None:
        from transformers import AutoModelForCausalLM

        measured = meter.measure(AutoModelForCausalLM.from_pretrained(model_dir))
        drift_kl, drift_nll = measured["drift_kl"], measured["drift_nll"]
    else:
        drift_kl = drift_nll = None
    judgement = judge_trial(scores, baseline_scores(context), drift_kl, drift_nll, context.sweep.selection)
    metrics = {"evaluated": 1, "step": summary.get("total_steps"), "domain_score": scores.domain,
               "domain_metric": scores.domain_metric, "skills": dict(scores.skills), "drops": dict(judgement.drops),
               "drift_kl": drift_kl, "drift_nll": drift_nll, "eligible": int(judgement.eligible),
               "reason": judgement.reason, "model_dir": str(model_dir)}
    if judgement.score is not None:
        metrics["sweep_score"] = judgement.score
    return {k: v for k, v in metrics.items() if v is not None}


# --------------------------------------------------------------------------- the trainable


def run_trial(config: dict, context: TrialContext) -> None:
    """The Tune function trainable (wrapped with ``tune.with_parameters(run_trial, context=...)``)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    sweep_dir = context.sweep.sweep_dir
    append_trial_log(sweep_dir, trial_id, "started")
    cfg = context.sweep.trial_config(config, trial_id)
    if context.sweep.drift.enabled:
        callback = DriftReportCallback(context.model_source, list(context.drift_records), cfg.objective)
    else:
        callback = _tune_report_callback_class()()
    model_dir, summary = train_trial(cfg, context, callback)
    append_trial_log(sweep_dir, trial_id, "trained", model_dir=str(model_dir))
    record = evaluate_trial(model_dir, trial_id, context)
    meter = None
    if "drift" not in record["suites"] and context.sweep.drift.enabled:
        meter = DriftMeter(context.model_source, list(context.drift_records))
    metrics = final_metrics(record, trial_id, model_dir, summary, context, meter)
    append_trial_log(sweep_dir, trial_id, "evaluated", domain_score=metrics.get("domain_score"))
    tune.report(metrics)
