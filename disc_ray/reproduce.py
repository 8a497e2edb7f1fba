"""The paper's claim at small scale: DiSC vs ``ft`` and ``ft_kl`` over a learning-rate grid, on BioASQ.

    python jobs/reproduce.py --quick                 # 3 methods x 3 LRs, 12 passages: under 30 min on 2 CPU cores
    python jobs/reproduce.py                         # the full preset: 3 methods x 4 LRs, 48 passages (~2 h)
    python jobs/reproduce.py --quick --out ~/repro --model /models/Qwen2.5-0.5B-Instruct

It is a Ray Tune sweep (:mod:`disc_ray.tuning`) whose space is ``objective.name x train.lr``: every run
trains on the same BioASQ passages (the same number of documents), is evaluated closed book on those
passages' multiple-choice questions (log-likelihood and the paper's generation protocol), on an IFEval
subset and on drift, against the original model. On top of the sweep's own outputs it writes

* ``results.md`` / ``results.csv``: method x LR x metrics, the original model first;
* ``tradeoff.png``: domain score vs IFEval change, one point per run, coloured by method;
* ``retention_vs_lr.png``: IFEval vs learning rate, one line per method, the original and the allowed drop;
* ``comparison.md``: per method, the run the paper's rule selects (best domain score with at most
  ``max_drop`` points lost on IFEval) and what it scored.
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
from disc_ray.records import read_jsonl

METHODS = ("ft", "ft_kl", "disc")
DOMAIN_METRICS = {"ll": "domain_mcq.accuracy_ll", "gen": "domain_mcq.accuracy_gen"}
"""What the rule maximises. ``ll`` (default): option log-likelihood, which separates runs of any model size.
``gen``: the paper's protocol (the answer letter in ``<answer>`` tags, majority vote); small models do not
follow that format (SmolLM2-135M parses 0 of 12 here), so it only separates runs of larger models."""
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
               workers: int = 1, domain_metric: str = "ll", extra: dict | None = None) -> dict:
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


def run_rows(outcome: dict) -> list[dict]:
    """One row per run (the original first), with both domain scores read from each run's eval.json."""
    baseline = outcome["baseline_eval"]["suites"]
    rows = [{"method": "original", "lr": None, "status": "", **_scores(baseline), "selected": ""}]
    for record in sorted(outcome["records"], key=lambda r: (METHODS.index(r.params["objective.name"]), r.params["train.lr"])):
        suites = {}
        if record.model_dir and (Path(record.model_dir) / "eval" / "eval.json").exists():
            suites = json.loads((Path(record.model_dir) / "eval" / "eval.json").read_text())["suites"]
        row = {"method": record.params["objective.name"], "lr": record.params["train.lr"], "status": record.status,
               **_scores(suites), "selected": "yes" if record.trial_id in outcome["per_method"].values() else ""}
        if record.status != "completed" and record.drift_kl is not None:
            row["drift_kl"] = record.drift_kl
        rows.append(row)
    base_skill = rows[0]["ifeval_inst_strict"]
    for row in rows:
        skill = row["ifeval_inst_strict"]
        row["ifeval_change"] = None if skill is None or base_skill is None else skill - base_skill
    return rows


def _scores(suites: dict) -> dict:
    mcq, ifeval, drift = suites.get("domain_mcq", {}), suites.get("ifeval", {}), suites.get("drift", {})
    return {"mcq_gen": mcq.get("accuracy_gen"), "mcq_ll": mcq.get("accuracy_ll"), "ifeval_inst_strict": ifeval.get("inst_strict"),
            "ifeval_prompt_strict": ifeval.get("prompt_strict"), "drift_kl": drift.get("kl"), "drift_nll": drift.get("nll")}


COLUMNS = ("method", "lr", "status", "mcq_gen", "mcq_ll", "ifeval_inst_strict", "ifeval_change", "ifeval_prompt_strict",
           "drift_kl", "drift_nll", "selected")


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
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row.get(k)) for k in COLUMNS) + " |" for row in rows]
    (out / "results.md").write_text("Scores in points (0-100), drift in nats/token; `selected`: the paper's rule, per method.\n\n"
                                    + "\n".join(lines) + "\n")
    return out / "results.csv", out / "results.md"


def plot(rows: list[dict], out: Path, max_drop: float, domain_metric: str = "ll") -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ft": "tab:orange", "ft_kl": "tab:purple", "disc": "tab:blue"}
    original, runs = rows[0], rows[1:]
    domain = f"mcq_{domain_metric}"

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for method in METHODS:
        points = [r for r in runs if r["method"] == method and r["ifeval_change"] is not None and r[domain] is not None]
        ax.scatter([r["ifeval_change"] for r in points], [r[domain] for r in points], c=colours[method], label=method, zorder=3)
        for r in points:
            ax.annotate(f"{r['lr']:.0e}", (r["ifeval_change"], r[domain]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.scatter([0.0], [original[domain]], marker="*", s=200, c="tab:red", label="original", zorder=4)
    ax.axvline(-max_drop, color="tab:red", linestyle="--", linewidth=1, label=f"-{max_drop:g} points")
    ax.set_xlabel("IFEval instruction-level strict, change vs original (points)")
    ax.set_ylabel(f"BioASQ closed-book MCQ ({'generation' if domain == 'mcq_gen' else 'log-likelihood'}, points)")
    _save(fig, ax, "Knowledge gained vs instruction following kept", out / "tradeoff.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for method in METHODS:
        points = sorted((r for r in runs if r["method"] == method), key=lambda r: r["lr"])
        ax.plot([r["lr"] for r in points], [r["ifeval_inst_strict"] if r["ifeval_inst_strict"] is not None else float("nan")
                                            for r in points], "-o", c=colours[method], label=method)
    if original["ifeval_inst_strict"] is not None:
        ax.axhline(original["ifeval_inst_strict"], color="tab:red", linewidth=1, label="original")
        ax.axhline(original["ifeval_inst_strict"] - max_drop, color="tab:red", linestyle="--", linewidth=1,
                   label=f"original - {max_drop:g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("IFEval instruction-level strict (points)")
    _save(fig, ax, "Retention vs learning rate", out / "retention_vs_lr.png")
    return out / "tradeoff.png", out / "retention_vs_lr.png"


def _save(fig, ax, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def select_per_method(records: list, baseline, spec) -> dict[str, str | None]:
    """The paper's rule applied to each method's runs separately: {method: selected trial id or None}."""
    from disc_ray.tuning.selection import select_trials

    chosen = {}
    for method in METHODS:
        own = [copy.deepcopy(r) for r in records if r.params["objective.name"] == method]
        if own:
            chosen[method] = select_trials(own, baseline, spec).best
    return chosen


def comparison_text(rows: list[dict], per_method: dict, records: list, max_drop: float, domain_metric: str = "ll") -> str:
    by_id = {r.trial_id: r for r in records}
    original = rows[0]
    lines = [f"Paper's rule, per method: best domain score ({DOMAIN_METRICS[domain_metric]}) with at most "
             f"{max_drop:g} points lost on IFEval "
             f"(original: MCQ gen {_fmt(original['mcq_gen'])}, MCQ ll {_fmt(original['mcq_ll'])}, "
             f"IFEval {_fmt(original['ifeval_inst_strict'])}).", ""]
    for method, trial_id in per_method.items():
        if trial_id is None:
            lines.append(f"- {method}: no learning rate keeps IFEval within {max_drop:g} points")
            continue
        record = by_id[trial_id]
        row = next(r for r in rows[1:] if r["method"] == method and r["lr"] == record.params["train.lr"])
        lines.append(f"- {method}: lr {record.params['train.lr']:g}: MCQ gen {_fmt(row['mcq_gen'])}, MCQ ll {_fmt(row['mcq_ll'])}, "
                     f"IFEval {_fmt(row['ifeval_inst_strict'])} ({_fmt(row['ifeval_change'])}), drift KL {_fmt(row['drift_kl'])}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the experiment


def run_reproduction(preset: Preset, *, out_dir: str | Path, name: str, model: str = "smollm2-135m-instruct",
                     bioasq_path: str | Path = DEFAULT_MCQ_PATH, methods=METHODS, domain_metric: str = "ll",
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
    rows = run_rows(outcome)
    tables = write_tables(rows, experiment)
    plots = plot(rows, experiment, sweep.selection.max_drop, domain_metric)
    comparison = comparison_text(rows, outcome["per_method"], outcome["records"], sweep.selection.max_drop, domain_metric)
    (experiment / "comparison.md").write_text(comparison)
    log((experiment / "results.md").read_text())
    log(comparison)
    log(f"[reproduce] tables {tables[1]}, plots {plots[0]} and {plots[1]}")
    return {"rows": rows, "per_method": outcome["per_method"], "experiment_dir": str(experiment),
            "paths": {"csv": str(tables[0]), "markdown": str(tables[1]), "tradeoff": str(plots[0]),
                      "retention_vs_lr": str(plots[1]), "comparison": str(experiment / "comparison.md")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/reproduce.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick preset (under 30 min on 2 CPU cores)")
    parser.add_argument("--out", default="~/disc-ray-reproduce", help="where the experiment folder goes")
    parser.add_argument("--name", help="experiment folder name (default: reproduce-quick / reproduce-full)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--bioasq", default=str(DEFAULT_MCQ_PATH), help="BioASQ MCQ JSONL (passages under meta.context)")
    parser.add_argument("--documents", type=int, help="override the preset's number of passages")
    parser.add_argument("--lrs", help="override the preset's learning rates, comma separated")
    parser.add_argument("--domain-metric", choices=sorted(DOMAIN_METRICS), default="ll",
                        help="what the paper's rule maximises: MCQ log-likelihood (default) or generation accuracy")
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
        run_reproduction(preset, out_dir=args.out, name=args.name or f"reproduce-{'quick' if args.quick else 'full'}",
                         model=args.model, bioasq_path=args.bioasq, domain_metric=args.domain_metric)
    except (ConfigError, EvalInputError, ModelLoadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
