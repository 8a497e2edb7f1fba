"""The paper's claim at small scale: DiSC vs ``ft`` and ``ft_kl`` over a learning-rate grid, on BioASQ.

    python jobs/reproduce.py --quick                 # 3 methods x 3 LRs, 12 passages: under 30 min on 2 CPU cores
    python jobs/reproduce.py                         # the full preset: 3 methods x 4 LRs, 48 passages (~2 h)
    python jobs/reproduce.py --quick --out ~/repro --model /models/Qwen2.5-0.5B-Instruct
    python jobs/reproduce.py --quick --methods disc,ft,ft_kl,lora,talr   # the LoRA and TALR baselines too

It is a Ray Tune sweep (:mod:`disc_ray.tuning`) whose space is ``objective.name x train.lr``: every run
trains on the same BioASQ passages (the same number of documents), is evaluated closed book on those
passages' multiple-choice questions (log-likelihood and the paper's generation protocol), on an IFEval
subset and on drift, against the original model. On top of the sweep's own outputs it writes

* ``results.md`` / ``results.csv``: method x LR x metrics, the original model first;
* ``tradeoff.png``: domain score vs IFEval change, one point per run, coloured by method;
* ``retention_vs_lr.png``: IFEval vs learning rate, one line per method, the original and the allowed drop;
* ``comparison.md``: per method, the run the paper's rule selects (best domain score with at most
  ``max_drop`` points lost on IFEval) and what it scored; then the methods at MATCHED RETENTION: each
  method's best domain score among its runs that lose at most 2 and at most 5 IFEval points, and the paired
  95% interval of every difference between methods there (:mod:`disc_ray.evaluation.frontier`);
* ``frontier.png``: each method's frontier, domain score vs IFEval change across its LR grid, with 95% intervals.

Every score has a 95% bootstrap interval over the questions / prompts and every comparison a paired one
(:mod:`disc_ray.evaluation.stats`). The default domain score is ``prob_correct`` (the probability on the
correct option, length-normalized: see ``DOMAIN_METRICS``), not ``accuracy_ll``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import sys
from pathlib import Path

from disc_ray.evaluation.config import DEFAULT_MCQ_PATH
from disc_ray.evaluation.stats import format_ci
from disc_ray.records import read_jsonl

METHODS = ("ft", "ft_kl", "disc")
"""The methods a reproduction trains by default (``--methods`` picks others)."""
ALL_METHODS = ("ft", "ft_kl", "talr", "lora", "rephrase", "cd_base", "disc")
"""Every method ``--methods`` accepts, in the order tables and plots list them: the ``objective.name`` values
(``talr``: token-adaptive loss reweighting, ``lora``: CE through merged LoRA adapters; see the README)."""
DOMAIN_METRICS = {"prob": "domain_mcq.prob_correct", "ll_norm": "domain_mcq.accuracy_ll_norm",
                  "ll": "domain_mcq.accuracy_ll", "gen": "domain_mcq.accuracy_gen"}
"""What the rule maximises. ``prob`` (default): the probability on the correct option (softmax over the options'
log-likelihoods per byte), continuous, so it moves before the argmax flips and separates runs on a few dozen
questions. ``ll_norm``: accuracy of the same length-normalized choice. ``ll``: accuracy of the raw summed
log-likelihood, which favours short options (the correct option is strictly the shortest in 59 of the 208
BioASQ questions; the 135M original scores 40.9 on ``ll`` against 29.3 on ``ll_norm``), so a run that shifts
probability towards short answers gains on it without learning. ``gen``: the paper's protocol (the answer
letter in ``<answer>`` tags, majority vote); small models do not follow that format (SmolLM2-135M parses 0 of
12 here), so it only separates runs of larger models."""
DEFAULT_DOMAIN_METRIC = "prob"
SKILL_METRIC = "ifeval.inst_strict"


@dataclasses.dataclass(frozen=True)
class Preset:
    """What one experiment trains and measures. Every run of a preset sees the same ``documents`` passages."""

    documents: int
    lrs: tuple[float, ...]
    ifeval_limit: int
    ifeval_max_new_tokens: int
    mcq_samples: int
    drift_prompts: int
    drift_every_n_steps: int


PRESETS = {
    # 9 runs of ~2.7 min each on 2 CPU cores (SmolLM2-135M): training 12 passages, then evaluation;
    # the generation MCQ is greedy (one sample) and drift is checked once, at the end of training.
    "quick": Preset(documents=12, lrs=(1e-5, 1e-4, 1e-3), ifeval_limit=16, ifeval_max_new_tokens=128, mcq_samples=1,
                    drift_prompts=8, drift_every_n_steps=12),
    # 12 runs of ~10 min each on 2 CPU cores (about 2 h with the original's evaluation); on a cluster they run in
    # parallel (max_concurrent_trials: auto). 48 passages and 48 IFEval prompts: one question is ~2 points, one
    # IFEval instruction ~1.3, so the 5-point rule is not decided by a single item. Scale up with --documents.
    "full": Preset(documents=48, lrs=(1e-5, 1e-4, 3e-4, 1e-3), ifeval_limit=48, ifeval_max_new_tokens=192,
                   mcq_samples=1, drift_prompts=16, drift_every_n_steps=16),
}


def write_corpus(bioasq_path: Path, documents: int, out: Path) -> Path:
    """The first ``documents`` BioASQ rows with a passage: trained on (``meta.context``) and asked about (MCQ)."""
    rows = []
    for _, row in read_jsonl(bioasq_path, "BioASQ file"):
        if (row.get("meta") or {}).get("context", "").strip():
            rows.append(row)
        if len(rows) == documents:
            break
    if len(rows) < documents:
        raise ValueError(f"{bioasq_path} has {len(rows)} rows with a passage, fewer than the {documents} asked for")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def sweep_file(preset: Preset, *, name: str, out_dir: Path, corpus: Path, model: str, methods=METHODS,
               workers: int = 1, domain_metric: str = DEFAULT_DOMAIN_METRIC, extra: dict | None = None) -> dict:
    """The sweep (see :mod:`disc_ray.tuning.space`) that runs the experiment."""
    if domain_metric not in DOMAIN_METRICS:
        raise ValueError(f"domain_metric must be one of {sorted(DOMAIN_METRICS)}, got {domain_metric!r}")
    raw = {
        "sweep": {"name": name, "storage_path": str(out_dir)},
        "base": {"overrides": {
            "model.name_or_path": model, "data.path": str(corpus), "data.text_field": "meta.context",
            "data.max_length": 1024, "workers.num_workers": workers, "train.batch_size": 1,
            "run.checkpoint_every_n_steps": preset.drift_every_n_steps}},
        "space": {"objective.name": {"grid": list(methods)}, "train.lr": {"grid": list(preset.lrs)}},
        "searcher": "grid",
        "max_concurrent_trials": "auto",
        "drift": {"every_n_steps": preset.drift_every_n_steps},
        "evaluation": {"suites": ["domain_mcq", "ifeval", "drift"], "mcq_path": str(corpus), "mcq_modes": ["ll", "gen"],
                       "n_samples": preset.mcq_samples, "temperature": 1.0 if preset.mcq_samples > 1 else 0.0,
                       "mcq_max_new_tokens": 64, "limit": preset.ifeval_limit, "mcq_limit": preset.documents,
                       "max_new_tokens": preset.ifeval_max_new_tokens, "drift_num_prompts": preset.drift_prompts,
                       "drift_max_new_tokens": 64},
        "selection": {"rule": "paper", "max_drop": 5, "domain_metric": [DOMAIN_METRICS[domain_metric]],
                      "retained_metrics": [SKILL_METRIC]},
    }
    for section, values in (extra or {}).items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return raw


# --------------------------------------------------------------------------- tables, plots, comparison


def run_rows(outcome: dict, domain_metric: str = DEFAULT_DOMAIN_METRIC) -> list[dict]:
    """One row per run (the original first), with the domain scores and intervals read from each run's eval.json.
    ``row["scores"]``: the run's :class:`~disc_ray.evaluation.selection.RunScores` under ``domain_metric`` (with
    per-item values, for the paired comparisons); ``row["frontier"]``: its point on the method's frontier."""
    from disc_ray.evaluation.frontier import frontier_point
    from disc_ray.evaluation.selection import run_scores

    metric = DOMAIN_METRICS[domain_metric]
    baseline = outcome["baseline_eval"]["suites"]
    original = run_scores("original", baseline, [metric], [SKILL_METRIC])
    rows = [{"method": "original", "lr": None, "status": "", **_scores(baseline), "selected": "", "scores": original}]
    for record in sorted(outcome["records"], key=lambda r: (ALL_METHODS.index(r.params["objective.name"]), r.params["train.lr"])):
        suites = {}
        if record.model_dir and (Path(record.model_dir) / "eval" / "eval.json").exists():
            suites = json.loads((Path(record.model_dir) / "eval" / "eval.json").read_text())["suites"]
        method, lr = record.params["objective.name"], record.params["train.lr"]
        scores = run_scores(f"{method} lr {lr:g}", suites, [metric], [SKILL_METRIC])
        row = {"method": method, "lr": lr, "status": record.status, **_scores(suites),
               "selected": "yes" if record.trial_id in outcome["per_method"].values() else "", "scores": scores,
               "frontier": frontier_point(method, f"{lr:.0e}", scores, original, SKILL_METRIC) if suites else None}
        if record.status != "completed" and record.drift_kl is not None:
            row["drift_kl"] = record.drift_kl
        if row["frontier"] is not None and row["frontier"].retention_ci is not None:
            row["ifeval_change_ci_low"], row["ifeval_change_ci_high"] = row["frontier"].retention_ci
        rows.append(row)
    base_skill = rows[0]["ifeval_inst_strict"]
    for row in rows:
        skill = row["ifeval_inst_strict"]
        row["ifeval_change"] = None if skill is None or base_skill is None else skill - base_skill
    return rows


def _scores(suites: dict) -> dict:
    mcq, ifeval, drift = suites.get("domain_mcq", {}), suites.get("ifeval", {}), suites.get("drift", {})
    ci = lambda metrics, key, end: (metrics.get("ci", {}).get(key) or [None, None])[end]  # noqa: E731
    return {"mcq_prob": mcq.get("prob_correct"), "mcq_prob_ci_low": ci(mcq, "prob_correct", 0),
            "mcq_prob_ci_high": ci(mcq, "prob_correct", 1), "mcq_margin": mcq.get("margin"),
            "mcq_ll_norm": mcq.get("accuracy_ll_norm"), "mcq_gen": mcq.get("accuracy_gen"),
            "mcq_gen_lenient": mcq.get("accuracy_gen_lenient"), "mcq_ll": mcq.get("accuracy_ll"),
            "ifeval_inst_strict": ifeval.get("inst_strict"), "ifeval_inst_strict_ci_low": ci(ifeval, "inst_strict", 0),
            "ifeval_inst_strict_ci_high": ci(ifeval, "inst_strict", 1), "ifeval_inst_loose": ifeval.get("inst_loose"),
            "ifeval_prompt_strict": ifeval.get("prompt_strict"), "drift_kl": drift.get("kl"), "drift_nll": drift.get("nll")}


COLUMNS = ("method", "lr", "status", "mcq_prob", "mcq_prob_ci_low", "mcq_prob_ci_high", "mcq_margin", "mcq_ll_norm",
           "mcq_gen", "mcq_gen_lenient", "mcq_ll", "ifeval_inst_strict", "ifeval_inst_strict_ci_low",
           "ifeval_inst_strict_ci_high", "ifeval_change", "ifeval_change_ci_low", "ifeval_change_ci_high",
           "ifeval_inst_loose", "ifeval_prompt_strict", "drift_kl", "drift_nll", "selected")
MARKDOWN_COLUMNS = ("method", "lr", "status", "mcq_prob", "mcq_ll_norm", "mcq_gen", "mcq_gen_lenient", "mcq_ll",
                    "ifeval_inst_strict", "ifeval_change", "ifeval_inst_loose", "drift_kl", "selected")
"""``results.md`` shows intervals inside the cells (``41.2 [36.1, 46.3]``); the CSV has them as columns."""


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0e}" if 0 < abs(value) < 1e-2 else f"{value:.2f}"
    return str(value)


def write_tables(rows: list[dict], out: Path) -> tuple[Path, Path]:
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: row.get(k) for k in COLUMNS} for row in rows)
    def cell(row: dict, key: str) -> str:
        if key == "mcq_prob" and row.get("mcq_prob") is not None:
            return format_ci(row["mcq_prob"], [row.get("mcq_prob_ci_low"), row.get("mcq_prob_ci_high")])
        if key == "ifeval_inst_strict" and row.get(key) is not None:
            return format_ci(row[key], [row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")])
        if key == "ifeval_change" and row.get(key) is not None and row.get("ifeval_change_ci_low") is not None:
            return format_ci(row[key], [row["ifeval_change_ci_low"], row["ifeval_change_ci_high"]], signed=True)
        return _fmt(row.get(key))

    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    lines += ["| " + " | ".join(cell(row, k) for k in MARKDOWN_COLUMNS) + " |" for row in rows]
    (out / "results.md").write_text(
        "Scores in points (0-100) with 95% bootstrap intervals over the questions / prompts; `ifeval_change` vs the "
        "original with its PAIRED interval; `mcq_margin` in nats/byte, drift in nats/token; `selected`: the paper's "
        "rule, per method.\n\n" + "\n".join(lines) + "\n")
    return out / "results.csv", out / "results.md"


def plot(rows: list[dict], out: Path, max_drop: float, domain_metric: str = DEFAULT_DOMAIN_METRIC) -> tuple[Path, Path, Path]:
    """``tradeoff.png`` (every run), ``retention_vs_lr.png`` and ``frontier.png`` (each method's frontier), with
    95% intervals as error bars (IFEval changes: paired intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from disc_ray.evaluation.frontier import BUDGETS, COLOURS, plot_frontiers
    from disc_ray.evaluation.report import draw_error_bars

    original, runs = rows[0], rows[1:]
    domain_label = f"BioASQ closed-book MCQ: {DOMAIN_METRICS[domain_metric]} (points)"

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for method in methods_run(runs):
        points = [r for r in runs if r["method"] == method and r.get("frontier") is not None
                  and r["frontier"].retention is not None and r["scores"].domain is not None]
        for r in points:
            draw_error_bars(ax, r["frontier"].retention, r["scores"].domain, r["frontier"].retention_ci,
                            r["scores"].domain_ci, colour=COLOURS[method])
            ax.annotate(f"{r['lr']:.0e}", (r["frontier"].retention, r["scores"].domain), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
        ax.scatter([r["frontier"].retention for r in points], [r["scores"].domain for r in points], c=COLOURS[method],
                   label=method, zorder=3)
    if original["scores"].domain is not None:
        draw_error_bars(ax, 0.0, original["scores"].domain, None, original["scores"].domain_ci, colour="tab:red")
        ax.scatter([0.0], [original["scores"].domain], marker="*", s=200, c="tab:red", label="original", zorder=4)
    ax.axvline(-max_drop, color="tab:red", linestyle="--", linewidth=1, label=f"-{max_drop:g} points")
    ax.set_xlabel("IFEval instruction-level strict, change vs original (points)")
    ax.set_ylabel(domain_label)
    _save(fig, ax, "Knowledge gained vs instruction following kept (95% intervals)", out / "tradeoff.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for method in methods_run(runs):
        points = sorted((r for r in runs if r["method"] == method), key=lambda r: r["lr"])
        values = [r["ifeval_inst_strict"] if r["ifeval_inst_strict"] is not None else float("nan") for r in points]
        ax.plot([r["lr"] for r in points], values, "-o", c=COLOURS[method], label=method)
        for r, value in zip(points, values):
            if r.get("ifeval_inst_strict_ci_low") is not None:
                draw_error_bars(ax, r["lr"], value, None, (r["ifeval_inst_strict_ci_low"], r["ifeval_inst_strict_ci_high"]),
                                colour=COLOURS[method])
    if original["ifeval_inst_strict"] is not None:
        ax.axhline(original["ifeval_inst_strict"], color="tab:red", linewidth=1, label="original")
        ax.axhline(original["ifeval_inst_strict"] - max_drop, color="tab:red", linestyle="--", linewidth=1,
                   label=f"original - {max_drop:g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("IFEval instruction-level strict (points)")
    _save(fig, ax, "Retention vs learning rate (95% intervals)", out / "retention_vs_lr.png")
    frontier = plot_frontiers([r["frontier"] for r in runs if r.get("frontier") is not None], original["scores"],
                              out / "frontier.png", budgets=BUDGETS, domain_label=domain_label,
                              skill_label="IFEval instruction-level strict")
    return out / "tradeoff.png", out / "retention_vs_lr.png", frontier


def _save(fig, ax, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def methods_run(runs: list[dict]) -> list[str]:
    """The methods that have at least one run in ``runs``, in :data:`ALL_METHODS` order."""
    return [m for m in ALL_METHODS if any(r["method"] == m for r in runs)]


def parse_methods(text: str) -> tuple[str, ...]:
    """``"disc,ft,lora"`` -> ``("disc", "ft", "lora")``; raises ValueError naming an unknown or repeated method."""
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"--methods: expected distinct methods from {','.join(ALL_METHODS)}, got {text!r}")
    return methods


def select_per_method(records: list, baseline, spec) -> dict[str, str | None]:
    """The paper's rule applied to each method's runs separately: {method: selected trial id or None}."""
    from disc_ray.tuning.selection import select_trials

    chosen = {}
    for method in ALL_METHODS:
        own = [copy.deepcopy(r) for r in records if r.params["objective.name"] == method]
        if own:
            chosen[method] = select_trials(own, baseline, spec).best
    return chosen


def comparison_text(rows: list[dict], per_method: dict, records: list, max_drop: float,
                    domain_metric: str = DEFAULT_DOMAIN_METRIC) -> str:
    """The paper's rule per method (with intervals), then the methods at matched retention (2 and 5 points)."""
    from disc_ray.evaluation.frontier import BUDGETS, best_at_budgets, format_budget_markdown

    by_id = {r.trial_id: r for r in records}
    original = rows[0]
    metric = DOMAIN_METRICS[domain_metric]
    lines = [f"Paper's rule, per method: best domain score ({metric}) with at most {max_drop:g} points lost on IFEval "
             f"(original: {metric} {format_ci(original['scores'].domain, original['scores'].domain_ci)}, "
             f"MCQ gen {_fmt(original['mcq_gen'])} (lenient parse {_fmt(original['mcq_gen_lenient'])}), "
             f"MCQ ll {_fmt(original['mcq_ll'])}, ll_norm {_fmt(original['mcq_ll_norm'])}, "
             f"IFEval {format_ci(original['ifeval_inst_strict'], [original['ifeval_inst_strict_ci_low'], original['ifeval_inst_strict_ci_high']])}). "
             "Intervals: 95% bootstrap over questions / prompts; changes vs the original are paired.", ""]
    for method, trial_id in per_method.items():
        if trial_id is None:
            lines.append(f"- {method}: no learning rate keeps IFEval within {max_drop:g} points")
            continue
        record = by_id[trial_id]
        row = next(r for r in rows[1:] if r["method"] == method and r["lr"] == record.params["train.lr"])
        change = row["frontier"].retention_ci if row.get("frontier") else None
        lines.append(f"- {method}: lr {record.params['train.lr']:g}: {metric} "
                     f"{format_ci(row['scores'].domain, row['scores'].domain_ci)}, MCQ gen {_fmt(row['mcq_gen'])}, "
                     f"MCQ ll {_fmt(row['mcq_ll'])}, IFEval {_fmt(row['ifeval_inst_strict'])} "
                     f"({format_ci(row['ifeval_change'], change, signed=True)}), drift KL {_fmt(row['drift_kl'])}")
    points = [r["frontier"] for r in rows[1:] if r.get("frontier") is not None]
    lines += ["", format_budget_markdown(best_at_budgets(points, BUDGETS), domain_metric=metric,
                                         skill="IFEval inst_strict").rstrip("\n"),
              "", "`frontier.png` draws each method's runs as domain score vs IFEval change, with these intervals."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the experiment


def run_reproduction(preset: Preset, *, out_dir: str | Path, name: str, model: str = "smollm2-135m-instruct",
                     bioasq_path: str | Path = DEFAULT_MCQ_PATH, methods=METHODS, domain_metric: str = DEFAULT_DOMAIN_METRIC,
                     extra: dict | None = None, log=print) -> dict:
    from disc_ray.tuning.driver import run_sweep
    from disc_ray.tuning.space import parse_sweep

    out_dir = Path(out_dir).expanduser().resolve()
    experiment = out_dir / name
    corpus = write_corpus(Path(bioasq_path).expanduser(), preset.documents, experiment / "inputs" / "bioasq_subset.jsonl")
    sweep = parse_sweep(sweep_file(preset, name=name, out_dir=out_dir, corpus=corpus, model=model, methods=methods,
                                   domain_metric=domain_metric, extra=extra))
    outcome = run_sweep(sweep)
    outcome["baseline_eval"] = json.loads((experiment / "baseline" / "eval.json").read_text())
    outcome["per_method"] = select_per_method(outcome["records"], outcome["baseline"], sweep.selection)
    rows = run_rows(outcome, domain_metric)
    tables = write_tables(rows, experiment)
    plots = plot(rows, experiment, sweep.selection.max_drop, domain_metric)
    comparison = comparison_text(rows, outcome["per_method"], outcome["records"], sweep.selection.max_drop, domain_metric)
    (experiment / "comparison.md").write_text(comparison)
    log((experiment / "results.md").read_text())
    log(comparison)
    log(f"[reproduce] tables {tables[1]}, plots {plots[0]}, {plots[1]} and {plots[2]}")
    return {"rows": rows, "per_method": outcome["per_method"], "experiment_dir": str(experiment),
            "paths": {"csv": str(tables[0]), "markdown": str(tables[1]), "tradeoff": str(plots[0]),
                      "retention_vs_lr": str(plots[1]), "frontier": str(plots[2]),
                      "comparison": str(experiment / "comparison.md")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/reproduce.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick preset (under 30 min on 2 CPU cores)")
    parser.add_argument("--out", default="~/disc-ray-reproduce", help="where the experiment folder goes")
    parser.add_argument("--name", help="experiment folder name (default: reproduce-quick / reproduce-full)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--bioasq", default=str(DEFAULT_MCQ_PATH), help="BioASQ MCQ JSONL (passages under meta.context)")
    parser.add_argument("--documents", type=int, help="override the preset's number of passages")
    parser.add_argument("--lrs", help="override the preset's learning rates, comma separated")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"the methods to train, comma separated, from {','.join(ALL_METHODS)} (default: {','.join(METHODS)})")
    parser.add_argument("--domain-metric", choices=sorted(DOMAIN_METRICS), default=DEFAULT_DOMAIN_METRIC,
                        help="what the paper's rule maximises: prob (default: probability on the correct option), "
                             "ll_norm, ll (raw log-likelihood accuracy, favours short options) or gen")
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    if args.documents:
        preset = dataclasses.replace(preset, documents=args.documents)
    if args.lrs:
        preset = dataclasses.replace(preset, lrs=tuple(float(v) for v in args.lrs.split(",")))
    from disc_ray.config import ConfigError
    from disc_ray.evaluation.config import EvalInputError
    from disc_ray.models import ModelLoadError

    try:
        methods = parse_methods(args.methods)
        run_reproduction(preset, out_dir=args.out, name=args.name or f"reproduce-{'quick' if args.quick else 'full'}",
                         model=args.model, bioasq_path=args.bioasq, methods=methods, domain_metric=args.domain_metric)
    except (ConfigError, EvalInputError, ModelLoadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
