"""The sweep driver: validate, evaluate the original once, run the trials with Ray Tune, select, write the outputs.

    python tune/sweep.py --config tune/spaces/lr_by_method.yaml [--resume] [--sweep.name x --selection.max_drop 3]
    disc-ray sweep --config ...   (same options)

Steps: the sweep file is validated before Ray starts (one ``error:`` line, exit code 2); Ray starts (a local
cluster, or ``sweep.ray_address`` / ``$RAY_ADDRESS``); the original model is evaluated once with the sweep's
suites (``<sweep>/baseline/eval.json``, reused on resume); a ``ray.tune.Tuner`` runs :func:`run_trial` for
every configuration, at most ``max_concurrent_trials`` at once (``auto``: what the cluster's resources hold);
then every trial is judged by the selection rule and the tables, plot and selected config are written.

If ``<sweep>`` already holds a Tune experiment the sweep resumes it (``Tuner.restore``): finished trials are
kept, unfinished and errored ones run again, their Ray Train runs continuing from their last checkpoint.
``--select-only`` re-judges a finished (or interrupted) sweep's trials without running anything, e.g.
after changing ``selection`` in the sweep file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import yaml

from disc_ray.config import ConfigError, apply_dotted, build_dataclass, read_yaml_mapping
from disc_ray.records import load_jsonl
from disc_ray.tuning.space import Sweep, load_sweep

TRIAL_SLOT = "disc_ray_trial_slot"
"""A custom resource (1 in all) of the local cluster a sweep starts; each trial holds ``1 / concurrency`` of it.
Tune counts only a trial's own bundle (Ray Train v2 workers reserve their own placement group) and its concurrency
limit applies to new trials only, so a resumed sweep would restart every unfinished trial at once and their
workers would wait for CPUs until Ray Train's startup timeout (Ray's pattern "using resources to limit the number of
concurrently running tasks"). A cluster joined by address has no slot: there ``max_concurrent_trials`` limits new
trials only."""
SWEEP_FILE = "sweep.yaml"
"""The sweep file as first run, kept in the sweep folder: a resume must match it."""
RESULT_AFFECTING = ("space", "base", "searcher", "num_samples", "seed", "drift", "evaluation", "scheduler")


def log(message: str) -> None:
    print(f"[disc-ray sweep] {message}", flush=True)


# --------------------------------------------------------------------------- resources


def trial_bundles(sweep: Sweep) -> list[dict]:
    """A trial's placement group: its own process (data pipeline driver, Ray Train driver, evaluation). Ray Train
    gives the workers their own placement group, and Ray Data's tasks are scheduled outside both (from the
    cluster's free CPUs), so they are not bundled here but counted in :func:`trial_demand`."""
    own = {"CPU": sweep.resources.trial_cpus}
    if sweep.resources.trial_gpus:
        own["GPU"] = sweep.resources.trial_gpus
    return [own]


def trial_demand(sweep: Sweep) -> dict[str, float]:
    """Everything one running trial holds: its own process, its Ray Train workers and its Ray Data tasks."""
    data = sweep.base.data  # concurrency None (as many as free CPUs allow) is planned as one task
    demand: dict[str, float] = {"CPU": float(data.concurrency or 1) * data.num_cpus_per_worker}
    workers = sweep.base.workers
    for bundle in trial_bundles(sweep) + [workers.resources_per_worker()] * workers.num_workers:
        for name, amount in bundle.items():
            demand[name] = demand.get(name, 0.0) + amount
    return {k: v for k, v in demand.items() if v > 0}


def plan_concurrency(cluster: dict[str, float], demand: dict[str, float]) -> int:
    """How many trials the cluster's resources hold at once (>= 1 only if at least one fits)."""
    fits = [math.floor(cluster.get(name, 0.0) / amount + 1e-9) for name, amount in demand.items()]
    return max(0, min(fits)) if fits else 1


def ensure_ray(sweep: Sweep) -> None:
    from disc_ray.train import init_ray

    init_ray(sweep.settings.ray_address, trial_demand(sweep).get("CPU", 1), sweep.base.run.dashboard_host,
             num_cpus=sweep.settings.num_cpus, resources={TRIAL_SLOT: 1.0})


# --------------------------------------------------------------------------- preparation (driver)


def with_synthetic_corpus(sweep: Sweep) -> Sweep:
    """No ``data.path``: write the built-in corpus (and its MCQ probes) once into the sweep folder."""
    if sweep.base.data.path:
        return sweep
    from disc_ray.synthetic import write_corpus

    folder = sweep.sweep_dir / "synthetic_corpus"
    documents = folder / "documents.jsonl"
    if not documents.exists():
        write_corpus(folder, num_documents=sweep.base.data.synthetic_documents, seed=sweep.base.split.seed)
    values = apply_dotted(sweep.base_values, {"data.path": str(documents), "data.format": "jsonl", "data.text_field": "text"})
    from disc_ray.config import AdaptConfig

    return dataclasses.replace(sweep, base_values=values, base=build_dataclass(AdaptConfig, values))


def _evaluate_original(model_source: str, eval_cfg, drift_prompts_limit: int | None):
    """The original's scores with the sweep's suites, and its drift references (runs as a Ray task)."""
    from disc_ray.evaluation.drift import drift_prompts, reference_responses
    from disc_ray.evaluation.runner import evaluate_suites
    from disc_ray.evaluation.selection import run_scores
    from disc_ray.export import package_versions

    results, timing, _ = evaluate_suites(model_source, eval_cfg, original=None)
    suites = {s: r.metrics for s, r in results.items()}
    scores = run_scores("original", suites, eval_cfg.domain_metrics, eval_cfg.skill_metrics)
    record = dict(model=model_source, name="original", backend=eval_cfg.backend, seed=eval_cfg.seed, suites=suites,
                  summary=dict(domain_metric=scores.domain_metric, domain_score=scores.domain, skills=dict(scores.skills)),
                  config=eval_cfg.to_dict(), versions=package_versions(), timing_s={"original": timing},
                  bootstrap=eval_cfg.bootstrap().as_dict())
    samples = {s: r.samples for s, r in results.items()}
    references, _ = reference_responses(model_source, drift_prompts(eval_cfg), max_new_tokens=eval_cfg.drift_max_new_tokens,
                                        cfg=eval_cfg)
    return record, samples, references[:drift_prompts_limit] if drift_prompts_limit else references


def prepare_baseline(sweep: Sweep, model_source: str, *, evaluate: bool = True) -> tuple[Path, list[dict]]:
    """Evaluate the original once per sweep (reused when its settings have not changed). ``evaluate=False``
    (``--select-only``): reuse it or raise ConfigError, never evaluate."""
    import ray

    from disc_ray.evaluation.runner import write_outputs

    out_dir = sweep.sweep_dir / "baseline"
    references_path = out_dir / "drift_references.jsonl"
    previous = out_dir / "eval.json"
    if previous.exists() and references_path.exists():
        record = json.loads(previous.read_text())
        if sweep.evaluation.matches(record.get("config")) and record.get("model") == model_source:
            references = load_jsonl(references_path)
            log(f"original model: reusing its evaluation in {previous}")
            return out_dir, references[:sweep.drift.num_prompts] if sweep.drift.num_prompts else references
    if not evaluate:
        raise ConfigError(f"no evaluation of the original with this sweep's settings in {out_dir}; run the sweep "
                          "(not --select-only) to evaluate it")
    log(f"evaluating the original model {model_source} once for the whole sweep ({', '.join(sweep.evaluation.suites)})")
    started = time.perf_counter()
    task = ray.remote(num_cpus=sweep.resources.trial_cpus, num_gpus=sweep.resources.trial_gpus)(_evaluate_original)
    record, samples, references = ray.get(task.remote(model_source, sweep.evaluation, None))
    write_outputs(record, samples, out_dir)
    references_path.write_text("".join(json.dumps(r) + "\n" for r in references))
    log(f"original model evaluated in {time.perf_counter() - started:.0f} s: domain {record['summary']['domain_score']}, "
        f"retained {record['summary']['skills']}")
    return out_dir, references[:sweep.drift.num_prompts] if sweep.drift.num_prompts else references


# --------------------------------------------------------------------------- Tune objects


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def build_searcher(sweep: Sweep, concurrency: int | None = None):
    """``concurrency`` goes into the searcher itself: Tune applies ``max_concurrent_trials`` only to searchers it
    builds, and trials beyond what the cluster holds would starve each other's Ray Data tasks of CPUs."""
    if sweep.searcher == "optuna":
        from ray.tune.search import ConcurrencyLimiter

        from disc_ray.tuning.searchers import FinalScoreOptunaSearch

        searcher = FinalScoreOptunaSearch(metric="sweep_score", mode="max", seed=sweep.seed)
        return ConcurrencyLimiter(searcher, max_concurrent=concurrency) if concurrency else searcher
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrency or 0)


def build_scheduler(sweep: Sweep):
    spec = sweep.scheduler.asha
    if spec is None:
        return None
    from disc_ray.tuning.searchers import DriftASHAScheduler

    max_t = spec.max_t or (sweep.base.train.max_steps if sweep.base.train.max_steps > 0 else 100_000)
    return DriftASHAScheduler(time_attr="step", metric=spec.metric, mode=spec.mode, max_t=max_t,
                         grace_period=spec.grace_period, reduction_factor=spec.reduction_factor)


def slot_share(cluster: dict[str, float], concurrency: int) -> dict[str, float]:
    """The part of :data:`TRIAL_SLOT` one trial holds so that at most ``concurrency`` run at once (Ray counts custom
    resources to 1e-4); empty when the cluster has no slot."""
    if not cluster.get(TRIAL_SLOT):
        return {}
    return {TRIAL_SLOT: math.floor(cluster[TRIAL_SLOT] * 10_000 / concurrency) / 10_000}


def build_trainable(sweep: Sweep, context, slot: dict[str, float] | None = None):
    from ray import tune

    from disc_ray.tuning.trial import run_trial

    bundles = trial_bundles(sweep)
    resources = tune.PlacementGroupFactory([{**bundles[0], **(slot or {})}] + bundles[1:])
    return tune.with_resources(tune.with_parameters(run_trial, context=context), resources)


def build_tuner(sweep: Sweep, trainable, concurrency: int):
    from ray import tune

    from disc_ray.tuning.searchers import DriftBudgetStopper

    budget = sweep.scheduler.drift_budget
    tune_config = tune.TuneConfig(search_alg=build_searcher(sweep, concurrency), scheduler=build_scheduler(sweep),
                                  num_samples=sweep.num_samples, max_concurrent_trials=concurrency,
                                  trial_dirname_creator=_trial_dirname)
    run_config = tune.RunConfig(name=sweep.settings.name, storage_path=str(sweep.sweep_dir.parent),
                                stop=DriftBudgetStopper(budget.metric, budget.max, budget.after_step) if budget else None,
                                failure_config=tune.FailureConfig(max_failures=sweep.settings.max_failures), verbose=1)
    return tune.Tuner(trainable, param_space=sweep.param_space(), tune_config=tune_config, run_config=run_config)


@contextlib.contextmanager
def lenient_metric_checking():
    """Training reports carry drift only at checkpoints and the searcher's score only in the final report; Tune's
    strict check would reject the others (ASHA and the searcher skip results without their metric)."""
    key = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
    previous = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


# --------------------------------------------------------------------------- records and selection


def _stop_note(sweep: Sweep, metrics: dict) -> str | None:
    """Why the scheduler stopped a trial before its evaluation; None when none did (the trial has not finished)."""
    step = metrics.get("step")
    budget = sweep.scheduler.drift_budget
    if budget is not None and isinstance(metrics.get(budget.metric), (int, float)) and metrics[budget.metric] > budget.max:
        return f"stopped at step {step}: {budget.metric} {metrics[budget.metric]:.4f} > budget {budget.max:g}"
    if sweep.scheduler.asha is not None:
        value = metrics.get(sweep.scheduler.asha.metric)
        shown = f" ({sweep.scheduler.asha.metric} {value:.4f})" if isinstance(value, (int, float)) else ""
        return f"stopped by ASHA at step {step}{shown}"
    return None


def last_drift(result) -> tuple[float | None, float | None]:
    """The last drift measured during training, from the trial's reported results."""
    try:
        frame = result.metrics_dataframe
    except Exception:  # noqa: BLE001 - no results file yet
        frame = None
    if frame is None or "drift_kl" not in getattr(frame, "columns", []):
        metrics = result.metrics or {}
        return metrics.get("drift_kl"), metrics.get("drift_nll")
    measured = frame.dropna(subset=["drift_kl"])
    if measured.empty:
        return None, None
    last = measured.iloc[-1]
    return float(last["drift_kl"]), float(last["drift_nll"]) if "drift_nll" in measured else None


def _nested(metrics: dict, name: str) -> dict:
    if isinstance(metrics.get(name), dict):
        return dict(metrics[name])
    prefix = f"{name}/"
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


def _scores_from_eval_json(model_dir: str | None, sweep: Sweep):
    """A finished trial's scores under the sweep's *current* metrics, read from its eval.json: the summary it
    reported used the metrics of its own run, and a resumed or ``--select-only`` sweep may choose others."""
    from disc_ray.evaluation.selection import run_scores

    path = Path(model_dir) / "eval" / "eval.json" if model_dir else None
    if path is None or not path.exists():
        return None
    cfg = sweep.evaluation
    return run_scores("trial", json.loads(path.read_text())["suites"], cfg.domain_metrics, cfg.skill_metrics)


def trial_params(trial_dir: str | Path) -> dict:
    """The trial's configuration as Tune wrote it (``params.json``) when it started: a trial that failed before
    reporting anything has no ``Result.config``. {} when absent."""
    path = Path(trial_dir) / "params.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def trial_records(results, sweep: Sweep) -> list:
    from disc_ray.tuning.selection import TrialRecord

    records = []
    for result in results:
        trial_id = Path(result.path).name.removeprefix("trial_")
        metrics = dict(result.metrics or {})
        config = result.config or trial_params(result.path)
        params = {k: config.get(k) for k in sweep.keys}
        record = TrialRecord(trial_id=trial_id, params=params, status="stopped", steps=metrics.get("step"))
        if result.error is not None:
            record.status = "error"
            record.note = "error: " + (str(result.error).strip().splitlines() or [type(result.error).__name__])[-1][:200]
        elif metrics.get("evaluated"):
            record.status = "completed"
            record.domain, record.domain_metric = metrics.get("domain_score"), metrics.get("domain_metric")
            record.skills = _nested(metrics, "skills")
            record.drift_kl, record.drift_nll = metrics.get("drift_kl"), metrics.get("drift_nll")
            record.model_dir = metrics.get("model_dir")
            rescored = _scores_from_eval_json(record.model_dir, sweep)
            if rescored is not None:  # with the intervals and per-item values the paired comparisons need
                record.take_scores(rescored)
        elif (note := _stop_note(sweep, metrics)) is not None:
            record.note = note
        else:  # interrupted, or still running in another driver (``--select-only``)
            record.status = "unfinished"
            record.note = f"unfinished: last report at step {record.steps}" if record.steps else "unfinished: no report"
        if record.status != "completed":
            record.drift_kl, record.drift_nll = last_drift(result)
        records.append(record)
    return sorted(records, key=lambda r: r.trial_id)


def select_and_write(sweep: Sweep, results, baseline_dir: Path) -> dict:
    """Judge every trial, write the outputs; returns a summary (selected trial id, paths, records)."""
    from disc_ray.evaluation.selection import run_scores
    from disc_ray.tuning.outputs import write_outputs
    from disc_ray.tuning.selection import select_trials

    baseline_record = json.loads((baseline_dir / "eval.json").read_text())
    cfg = sweep.evaluation
    baseline = run_scores("original", baseline_record["suites"], cfg.domain_metrics, cfg.skill_metrics)
    records = trial_records(results, sweep)
    selection = select_trials(records, baseline, sweep.selection, cfg.bootstrap())
    selected_cfg = None
    if selection.best is not None:
        selected = next(r for r in records if r.selected)
        selected_cfg = sweep.trial_config(selected.params, selected.trial_id)
    paths = write_outputs(sweep.sweep_dir, selection, baseline, sweep.keys, sweep.settings.name, sweep.selection.max_drop,
                          selected_cfg, extra={"sweep_file": sweep.path})
    return {"selected": selection.best, "paths": {k: str(v) for k, v in paths.items()}, "records": records,
            "selection": selection, "baseline": baseline}


# --------------------------------------------------------------------------- the sweep


def _result_affecting(raw: dict) -> dict:
    return json.loads(json.dumps({k: raw.get(k) for k in RESULT_AFFECTING}, sort_keys=True, default=str))


def check_resume(sweep: Sweep) -> None:
    stored_path = sweep.sweep_dir / SWEEP_FILE
    if not stored_path.exists():
        return
    stored = read_yaml_mapping(stored_path, "stored sweep file")
    if _result_affecting(stored) != _result_affecting(sweep.raw):
        changed = [k for k in RESULT_AFFECTING if _result_affecting(stored).get(k) != _result_affecting(sweep.raw).get(k)]
        raise ConfigError(f"sweep '{sweep.settings.name}' in {sweep.sweep_dir} was started with different "
                          f"{', '.join(changed)}; use another sweep.name (or delete that folder) to start over")


def run_sweep(sweep: Sweep, *, resume: bool | None = None, select_only: bool = False) -> dict:
    """Run (or resume) ``sweep`` and write its outputs. ``resume``: True requires an existing sweep, False refuses
    one, None resumes when the sweep folder holds one. Returns :func:`select_and_write`'s summary."""
    from ray import tune

    from disc_ray.models import resolve_model_source
    from disc_ray.tuning.trial import TrialContext

    sweep_dir = sweep.sweep_dir
    restorable = tune.Tuner.can_restore(str(sweep_dir))
    if (resume or select_only) and not restorable:
        raise ConfigError(f"no sweep to resume in {sweep_dir}")
    if resume is False and restorable:
        raise ConfigError(f"{sweep_dir} already holds a sweep; resume it or use another sweep.name")
    if restorable:
        check_resume(sweep)
    model_source = resolve_model_source(sweep.base.model.name_or_path, sweep.base.model.cache_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not (sweep_dir / SWEEP_FILE).exists():
        (sweep_dir / SWEEP_FILE).write_text(yaml.safe_dump(sweep.raw, sort_keys=False))
    sweep = with_synthetic_corpus(sweep)
    ensure_ray(sweep)
    import ray

    demand = trial_demand(sweep)
    fits = plan_concurrency(ray.cluster_resources(), demand)
    if fits == 0 and not (sweep.settings.ray_address or os.environ.get("RAY_ADDRESS")):
        raise ConfigError(f"one trial needs {demand} but the local cluster has {ray.cluster_resources()}; "
                          "raise sweep.num_cpus or lower workers.num_workers / data.concurrency / resources")
    concurrency = sweep.max_concurrent_trials or max(fits, 1)
    baseline_dir, references = prepare_baseline(sweep, model_source, evaluate=not select_only)
    context = TrialContext(sweep=sweep, model_source=model_source, baseline_dir=str(baseline_dir),
                           drift_records=tuple(references))
    trainable = build_trainable(sweep, context, slot_share(ray.cluster_resources(), concurrency))
    if restorable:
        log(f"resuming the sweep in {sweep_dir}: up to {concurrency} trial(s) at once")
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        log(f"sweep '{sweep.settings.name}' in {sweep_dir}: searcher {sweep.searcher}, up to {concurrency} trial(s) at "
            f"once (one trial holds {demand})")
        tuner = build_tuner(sweep, trainable, concurrency)
    if select_only:
        results = tuner.get_results()
    else:
        with lenient_metric_checking():
            results = tuner.fit()
    outcome = select_and_write(sweep, results, baseline_dir)
    log(f"{len(outcome['records'])} trial(s); selected: {outcome['selected'] or 'no trial qualifies'}; "
        f"table {outcome['paths']['markdown']}, plot {outcome['paths']['plot']}")
    return outcome


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    from disc_ray.config import format_config_help
    from disc_ray.tuning.sweep_config import _SweepFile

    parser = argparse.ArgumentParser(prog="sweep", description="Sweep DiSC / ft / ft_kl settings with Ray Tune and select "
                                     "by the knowledge/retention trade-off. Any sweep-file key is an option: --sweep.name x.",
                                     epilog=format_config_help(_SweepFile), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="sweep file (see tune/spaces/)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="resume the sweep in <storage_path>/<name> (fails if none)")
    group.add_argument("--new", action="store_true", help="refuse to resume: fail if the sweep folder holds a sweep")
    group.add_argument("--select-only", action="store_true", help="re-judge an existing sweep's trials, run nothing")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(list(sys.argv[1:] if argv is None else argv))
    from disc_ray.evaluation.config import EvalInputError
    from disc_ray.models import ModelLoadError

    try:
        sweep = load_sweep(args.config, overrides)
        outcome = run_sweep(sweep, resume=True if args.resume else (False if args.new else None),
                            select_only=args.select_only)
    except (ConfigError, EvalInputError, ModelLoadError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(Path(outcome["paths"]["markdown"]).read_text())
    return 0


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="Ray Tune sweep over split points, temperature, learning rate, objective "
                                   "(same options as tune/sweep.py)", add_help=False)
    parser.set_defaults(run=lambda args, rest: main(rest), accepts_overrides=True)
