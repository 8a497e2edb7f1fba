"""Evaluate a model (and optionally its original, the baseline) and write ``eval.json`` + ``eval.md``.

    python jobs/evaluate.py MODEL_DIR [--baseline ORIGINAL] [--out DIR] [--config FILE]
        [--evaluation.suites domain_mcq,ifeval,drift] [--evaluation.backend hf] [--evaluation.limit N] ...
    disc-ray evaluate ...   (same options; --help lists every evaluation key)

``eval.json``: ``{"model", "name", "backend", "seed", "suites": {suite: metrics}, "backend_settings": {...},
"baseline": {"model", "suites", "backend_settings"}, "deltas": {suite: {metric: model - baseline}}, "delta_ci": {suite: {metric: {"delta", "ci", "n",
"outside"}}}, "bootstrap": {...}, "summary": {...}, "selection": {...}, "config", "versions", "timing_s"}``;
scores in points (0-100), drift in nats/token. ``backend_settings``: the decoding (top_p, top_k, repetition_penalty,
stop ids and where each came from), dtype and evaluation window every backend applies to that model
(:mod:`disc_ray.evaluation.backends.settings`); each generation suite's ``truncated_prompts`` counts the prompts
cut from the left to fit the window. Each suite's metrics carry ``ci`` (95% bootstrap interval
per score) and ``per_item`` (the per-item values behind them, for paired comparisons);
``delta_ci`` holds the PAIRED bootstrap interval of each delta (items resampled jointly), see
:mod:`disc_ray.evaluation.stats`. Per-item records go to ``samples/<suite>.jsonl``. Bad inputs (missing file, malformed row, model without tokenizer) stop the
run before any model is loaded, with one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

from disc_ray.evaluation.config import LM_EVAL_PREFIX, BackendUnavailableError, EvalConfig, EvalInputError
from disc_ray.evaluation.data import check_tokenizer_files
from disc_ray.evaluation.selection import judge, run_scores
from disc_ray.evaluation.stats import MIN_ITEMS_FOR_CLAIM, attach_intervals, compare_suites
from disc_ray.evaluation.suite import SuiteResult
from disc_ray.reporting import format_ci

GENERATION_SUITES = ("domain_mcq", "domain_qa", "ifeval")
_NOT_SCORES = {"n", "n_instructions", "tokens", "max_new_tokens", "n_samples", "temperature", "version", "truncated_prompts"}
_GROUPS = ("by_kind",)
"""Nested sub-scores shown as ``by_kind.<kind>.<metric>`` rows."""


def log(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- inputs


def original_from_manifest(model: str) -> str | None:
    """The model a disc-ray run started from, read from the exported ``run.json`` (None if unknown)."""
    manifest = Path(model).expanduser() / "run.json"
    try:
        info = json.loads(manifest.read_text())
        return info["config"]["model"]["name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_eval_json(path: str | Path) -> dict | None:
    """A previous ``eval.json`` (given as the file or its folder), or None when ``path`` is a model instead."""
    path = Path(path).expanduser()
    candidate = path if path.suffix == ".json" else path / "eval.json"
    if candidate.is_file() and not (path.is_dir() and (path / "config.json").is_file()):
        try:
            return json.loads(candidate.read_text())
        except ValueError as err:
            raise EvalInputError(f"{candidate} is not valid JSON: {err}") from None
    if path.suffix == ".json":
        raise EvalInputError(f"eval.json not found: {path}")
    return None


def check_model(model: str, cfg: EvalConfig) -> None:
    from disc_ray.models import resolve_model_source

    check_tokenizer_files(model)
    resolve_model_source(model, cfg.cache_dir)


def preflight(model: str, cfg: EvalConfig, baseline: str | None) -> None:
    """Every check that needs no model weights: data files parse, model paths resolve and carry tokenizers."""
    from disc_ray.evaluation.data import load_ifeval, load_mcq, load_prompts, load_qa

    check_model(model, cfg)
    if baseline and load_eval_json(baseline) is None:
        check_model(baseline, cfg)
    if "domain_mcq" in cfg.suites:
        load_mcq(cfg.mcq_path)
    if "domain_qa" in cfg.suites:
        load_qa(cfg.qa_path)
    if "ifeval" in cfg.suites:
        from disc_ray.evaluation.ifeval import validate_items

        validate_items(load_ifeval(cfg.ifeval_path))
    if "drift" in cfg.suites and cfg.drift_prompts_path:
        load_prompts(cfg.drift_prompts_path)
    if cfg.backend in ("vllm", "ray_vllm"):
        from disc_ray.evaluation.backends import import_vllm

        import_vllm()


# --------------------------------------------------------------------------- one model


def evaluate_suites(model: str, cfg: EvalConfig, *, original: str | None = None) -> tuple[dict[str, SuiteResult], dict, dict]:
    """Run ``cfg.suites`` on ``model``. ``original``: the model drift is measured from (None: ``model`` is the
    original, so its drift KL is 0 and its NLL is its own). Returns ``(results, timing_s, backend_info)``:
    ``backend_info = {"generation_stats", "backend_settings"}`` (empty without a backend). Each generation suite's
    metrics carry ``truncated_prompts``: prompts cut from the left to fit the evaluation window."""
    results: dict[str, SuiteResult] = {}
    timing: dict[str, float] = {}
    info: dict = {}
    generation = [s for s in cfg.suites if s in GENERATION_SUITES]
    backend = None
    if generation or ("drift" in cfg.suites and cfg.backend == "hf"):
        from disc_ray.evaluation.backends import build_backend

        started = time.perf_counter()
        backend = build_backend(model, cfg)
        timing["load"] = time.perf_counter() - started
    try:
        for suite in generation:
            started, truncated = time.perf_counter(), backend.stats.truncated_prompts
            results[suite] = run_builtin_suite(suite, backend, cfg)
            attach_intervals(results[suite].metrics, cfg.bootstrap())
            timing[suite] = time.perf_counter() - started
            results[suite].metrics["truncated_prompts"] = backend.stats.truncated_prompts - truncated
            if results[suite].metrics["truncated_prompts"]:
                log(f"{model}: {suite}: {results[suite].metrics['truncated_prompts']} prompt(s) longer than the "
                    f"{backend.settings.window}-token evaluation window lost tokens from the left")
            log(f"{model}: {suite}: {headline(suite, results[suite].metrics)} ({timing[suite]:.1f} s)")
        if "drift" in cfg.suites:
            started = time.perf_counter()
            results["drift"] = run_drift(model, cfg, original=original, backend=backend)
            attach_intervals(results["drift"].metrics, cfg.bootstrap())
            timing["drift"] = time.perf_counter() - started
            log(f"{model}: drift: {headline('drift', results['drift'].metrics)} ({timing['drift']:.1f} s)")
    finally:
        if backend is not None:
            info = {"generation_stats": backend.stats.as_dict(), "backend_settings": backend.settings.as_dict()}
            backend.close()
    for suite in [s for s in cfg.suites if s.startswith(LM_EVAL_PREFIX)]:
        from disc_ray.evaluation.lm_eval_tasks import run_lm_eval_suite

        started = time.perf_counter()
        results[suite] = run_lm_eval_suite(model, suite, cfg)
        timing[suite] = time.perf_counter() - started
        log(f"{model}: {suite}: score {results[suite].metrics.get('score')} ({timing[suite]:.1f} s)")
    return results, timing, info


def run_builtin_suite(suite: str, backend, cfg: EvalConfig) -> SuiteResult:
    if suite == "domain_mcq":
        from disc_ray.evaluation.mcq import run_mcq_suite

        return run_mcq_suite(backend, cfg)
    if suite == "domain_qa":
        from disc_ray.evaluation.qa import run_qa_suite

        return run_qa_suite(backend, cfg)
    from disc_ray.evaluation.ifeval import run_ifeval_suite

    return run_ifeval_suite(backend, cfg)


def run_drift(model: str, cfg: EvalConfig, *, original: str | None, backend) -> SuiteResult:
    """Drift with transformers models (KL needs full distributions, which vLLM does not return).

    The original's reference responses are generated (or read from the cache) first, with ``backend`` when
    ``model`` is the original; a vLLM engine is then closed before the transformers models are loaded.
    """
    from disc_ray.evaluation.drift import drift_prompts, reference_responses, run_drift_suite

    own_backend = backend if original is None else None
    reference_responses(original or model, drift_prompts(cfg), max_new_tokens=cfg.drift_max_new_tokens,
                        backend=own_backend, cfg=cfg)
    if backend is not None and backend.name == "hf":
        adapted, tokenizer = backend.model, backend.tokenizer
    else:
        from disc_ray.evaluation.backends import resolve_device, resolve_dtype
        from disc_ray.models import load_model_and_tokenizer

        if backend is not None:
            backend.close()  # free the GPU for the transformers models
        device = resolve_device(cfg.device)
        adapted, tokenizer = load_model_and_tokenizer(model, dtype=resolve_dtype(cfg.dtype, device), device=device,
                                                      cache_dir=cfg.cache_dir)
    if original is None:  # the model is its own original: KL is exactly 0, NLL is the original's own
        return run_drift_suite(adapted, tokenizer, model, cfg, original_model=adapted, reference_backend=own_backend)
    return run_drift_suite(adapted, tokenizer, original, cfg)


def headline(suite: str, metrics: dict) -> str:
    keys = {"domain_mcq": ("prob_correct", "accuracy_ll", "accuracy_ll_norm", "accuracy_gen", "accuracy_gen_lenient"), "domain_qa": ("exact_match", "contains"),
            "ifeval": ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose"), "drift": ("kl", "nll")}[suite]
    return ", ".join(f"{k} {metrics[k]:.3g}" for k in keys if k in metrics) + f" (n={metrics.get('n')})"


# --------------------------------------------------------------------------- model + baseline


def compute_deltas(suites: dict, baseline_suites: dict) -> dict:
    """``model - baseline`` for every top-level numeric score the two share (points; nats for drift)."""
    deltas = {}
    for suite, metrics in suites.items():
        other = baseline_suites.get(suite, {})
        shared = {k: metrics[k] - other[k] for k, v in metrics.items()
                  if k not in _NOT_SCORES and isinstance(v, (int, float)) and not isinstance(v, bool)
                  and isinstance(other.get(k), (int, float)) and not isinstance(other.get(k), bool)}
        if shared:
            deltas[suite] = shared
    return deltas


def run_name(model: str) -> str:
    path = Path(model).expanduser()
    return path.name if path.name else model


def default_out_dir(model: str) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path / "eval"
    return Path("eval") / re.sub(r"[^A-Za-z0-9._-]+", "_", model)


def evaluate(model: str, cfg: EvalConfig, *, baseline: str | None = None, out_dir: str | Path | None = None,
             name: str | None = None) -> dict:
    """Evaluate ``model`` (and ``baseline``: a model, or a previous ``eval.json``/its folder) and write the outputs.

    Drift is measured from ``baseline`` (else from the model named in the run's ``run.json``).
    Returns the ``eval.json`` content.
    """
    from disc_ray.export import package_versions

    preflight(model, cfg, baseline)
    baseline_record = load_eval_json(baseline) if baseline else None
    original = baseline_record["model"] if baseline_record else baseline
    if "drift" in cfg.suites and original is None:
        original = original_from_manifest(model)
        if original is None:
            raise EvalInputError("the drift suite needs the original model: pass --baseline ORIGINAL (or leave drift out of --evaluation.suites)")
        log(f"drift is measured from {original} (read from {model}/run.json)")
    out_dir = Path(out_dir) if out_dir else default_out_dir(model)
    samples: dict[str, list] = {}
    timing: dict[str, dict] = {}
    if baseline and baseline_record is None:
        log(f"evaluating the baseline {baseline}")
        base_results, timing["baseline"], base_info = evaluate_suites(baseline, cfg, original=None)
        baseline_record = {"model": baseline, "suites": {s: r.metrics for s, r in base_results.items()},
                           "backend_settings": base_info.get("backend_settings")}
        samples.update({f"baseline_{s}": r.samples for s, r in base_results.items()})
    log(f"evaluating {model}")
    results, timing["model"], backend_info = evaluate_suites(model, cfg, original=original)
    samples.update({s: r.samples for s, r in results.items()})
    suites = {s: r.metrics for s, r in results.items()}
    record = dict(model=model, name=name or run_name(model), backend=cfg.backend, seed=cfg.seed, suites=suites,
                  backend_settings=backend_info.get("backend_settings"), bootstrap=cfg.bootstrap().as_dict())
    scores = run_scores(record["name"], suites, cfg.domain_metrics, cfg.skill_metrics)
    record["summary"] = dict(domain_metric=scores.domain_metric, domain_score=scores.domain, skills=dict(scores.skills),
                             domain_ci=scores.domain_ci)
    if baseline_record:
        record["baseline"] = baseline_record
        record["deltas"] = compute_deltas(suites, baseline_record["suites"])
        record["delta_ci"] = compare_suites(suites, baseline_record["suites"], cfg.bootstrap())
        base_scores = run_scores("baseline", baseline_record["suites"], cfg.domain_metrics, cfg.skill_metrics)
        verdict = judge(scores, base_scores, cfg.max_drop, cfg.bootstrap())
        record["selection"] = dict(rule=f"best domain score with at most {cfg.max_drop:g} points drop on each retained skill",
                                   max_drop=cfg.max_drop, eligible=verdict.eligible, reason=verdict.reason,
                                   skill_drops=dict(verdict.drops), skill_drop_ci=dict(verdict.drop_cis),
                                   baseline_domain_score=base_scores.domain, baseline_skills=dict(base_scores.skills))
    record.update(config=cfg.to_dict(), versions=package_versions(), timing_s=timing,
                  generation_stats=backend_info.get("generation_stats", {}))
    write_outputs(record, samples, out_dir)
    return record


# --------------------------------------------------------------------------- outputs


def score_rows(metrics: dict):
    """``(name, value, ci)`` for every score of a suite: top-level numbers, then ``by_kind.<kind>.<metric>``."""
    def numeric(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    cis = metrics.get("ci", {})
    for key, value in metrics.items():
        if key not in _NOT_SCORES and numeric(value):
            yield key, value, cis.get(key)
    for group in _GROUPS:
        for label, sub in (metrics.get(group) or {}).items():
            for key, value in sub.items():
                if key not in _NOT_SCORES and numeric(value):
                    yield f"{group}.{label}.{key}", value, sub.get("ci", {}).get(key)


def format_markdown(record: dict) -> str:
    """One table: every score of every suite with its 95% interval, and, with a baseline, the baseline's
    score and the delta with its PAIRED interval (``*`` marks a delta whose interval excludes 0)."""
    baseline = record.get("baseline", {}).get("suites", {})
    boot = record.get("bootstrap") or {}
    level = f"{100 * boot.get('confidence', 0.95):g}%"
    header = ["suite", "metric", f"{record['name']} [{level} CI]"] + (["baseline", f"delta [paired {level} CI]"] if baseline else [])
    lines = [f"# Evaluation of `{record['model']}`", "",
             f"backend `{record['backend']}`, seed {record['seed']}; scores in points (0-100), `margin` in nats/byte, "
             "drift in nats/token.",
             f"Intervals: {level} bootstrap over items ({boot.get('n_resamples', '-')} resamples, {boot.get('method', 'percentile')}, "
             f"seed {boot.get('seed', '-')}); deltas resample the items of both runs jointly. `*`: the delta's interval "
             f"excludes 0 (claimed from {MIN_ITEMS_FOR_CLAIM} shared items up; fewer items give too narrow intervals).", "",
             *format_backend_settings(record), "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for suite, metrics in record["suites"].items():
        base_rows = {k: (v, ci) for k, v, ci in score_rows(baseline.get(suite, {}))} if baseline else {}
        paired = record.get("delta_ci", {}).get(suite, {})
        for key, value, ci in score_rows(metrics):
            digits = 4 if suite == "drift" or key.endswith("margin") else 2
            row = [suite, key, format_ci(float(value), ci, digits)]
            if baseline:
                base_value, base_ci = base_rows.get(key, (None, None))
                comparison = paired.get(key)
                if comparison is not None:
                    delta = format_ci(comparison["delta"], comparison["ci"], digits, signed=True)
                    delta += " *" if comparison["outside"] else ""
                else:
                    point = record.get("deltas", {}).get(suite, {}).get(key)
                    delta = "-" if point is None else format_ci(point, None, digits, signed=True)
                row += [format_ci(None if base_value is None else float(base_value), base_ci, digits), delta]
            lines.append("| " + " | ".join(row) + " |")
        lines.append(f"| {suite} | n | {metrics.get('n')} |" + (" | |" if baseline else ""))
    selection = record.get("selection")
    if selection:
        lines += ["", f"**Selection rule** ({selection['rule']}): "
                  f"{'eligible' if selection['eligible'] else 'NOT eligible'}: {selection['reason']}."]
    return "\n".join(lines) + "\n"


def format_backend_settings(record: dict) -> list[str]:
    """One line (plus a blank) naming the decoding, dtype and window the backend applied, and the prompts it had to
    cut; nothing for records written before ``backend_settings`` existed."""
    settings = record.get("backend_settings")
    if not settings:
        return []
    cut = {s: m["truncated_prompts"] for s, m in record["suites"].items() if m.get("truncated_prompts")}
    return [f"Decoding (every backend alike): top_p {settings['top_p']:g}, top_k {settings['top_k']} (0: off), "
            f"repetition_penalty {settings['repetition_penalty']:g}, stop ids {settings['stop_token_ids']}; dtype "
            f"{settings['dtype']}; window {settings['window']} tokens, longer prompts cut from the left: "
            + (", ".join(f"{s} {n}" for s, n in cut.items()) if cut else "none") + ".", ""]


def write_outputs(record: dict, samples: dict[str, list], out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(record, indent=2, default=str))
    (out_dir / "eval.md").write_text(format_markdown(record))
    for suite, records in samples.items():
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", suite)
        (out_dir / "samples" / f"{safe}.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    return out_dir / "eval.json"


# --------------------------------------------------------------------------- command line


@dataclasses.dataclass(frozen=True)
class EvaluateJobConfig:
    """What ``jobs/evaluate.py`` reads through the one config loader: the ``evaluation`` section, as sweep files
    name it (``--evaluation.suites domain_mcq,ifeval --evaluation.limit 100``)."""

    evaluation: EvalConfig = dataclasses.field(default_factory=EvalConfig)


def build_arg_parser(prog: str = "evaluate") -> argparse.ArgumentParser:
    from disc_ray.config import format_config_help

    p = argparse.ArgumentParser(
        prog=prog, description="Evaluate an adapted model: domain knowledge, instruction following, drift. "
                               "Any evaluation key is an option: --evaluation.limit 100.",
        epilog=format_config_help(EvaluateJobConfig), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL_DIR", help="HF model dir, .gguf, hub id or 'smollm2-135m-instruct'")
    p.add_argument("--baseline", metavar="ORIGINAL", help="the original model (or a previous eval.json / its folder)")
    p.add_argument("--config", help="YAML file with an evaluation: section (a sweep file's works too)")
    p.add_argument("--out", help="output folder (default MODEL_DIR/eval)")
    p.add_argument("--name", help="run name in tables and plots (default: the model folder's name)")
    return p


def load_eval_config(config_path: str | None, overrides: list[str]) -> EvalConfig:
    """``EvalConfig`` from a YAML file's ``evaluation`` section and ``--evaluation.key value`` overrides (one loader)."""
    from disc_ray.config import load_config

    return load_config(EvaluateJobConfig, config_path, overrides, sections=("evaluation",)).evaluation


def main(argv: list[str] | None = None, prog: str = "evaluate") -> int:
    from disc_ray.config import ConfigError
    from disc_ray.models import ModelLoadError

    args, rest = build_arg_parser(prog).parse_known_args(argv)
    try:
        cfg = load_eval_config(args.config, rest)
        record = evaluate(args.model, cfg, baseline=args.baseline, out_dir=args.out, name=args.name)
    except (ConfigError, EvalInputError, ModelLoadError, BackendUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_markdown(record))
    out_dir = Path(args.out) if args.out else default_out_dir(args.model)
    log(f"wrote {out_dir / 'eval.json'} and {out_dir / 'eval.md'}")
    return 0


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate a model: domain MCQ, IFEval, drift (same options as jobs/evaluate.py)",
                                   add_help=False)
    parser.set_defaults(run=lambda args, rest: main(rest, prog="disc-ray evaluate"), accepts_overrides=True)
