"""What ``jobs/reproduce.py`` writes on top of its sweep: the per-run table (``results.md`` / ``results.csv``), the
trade-off, retention-vs-LR and frontier plots, and ``comparison.md`` (the paper's rule per method, what each
configuration learned, the methods at the same learning rate, then at matched retention). Formatting, tables and
figures go through :mod:`disc_ray.reporting`; the intervals come from :mod:`disc_ray.evaluation.stats` /
:mod:`disc_ray.evaluation.frontier`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from disc_ray.reporting import draw_error_bars, format_ci, format_number, markdown_table, new_figure, save_figure, write_csv

METHODS = ("ft", "ft_kl", "disc")
"""The methods the presets train (``--methods`` picks others)."""
ALL_METHODS = ("ft", "ft_kl", "talr", "lora", "rephrase", "cd_base", "disc")
"""Every method ``--methods`` accepts, in the order tables and plots list them: the ``objective.name`` values
(``talr``: token-adaptive loss reweighting, ``lora``: CE through merged LoRA adapters; ``rephrase``: CE on the model's own rewrite; ``cd_base``: context distillation on its own continuation; see the README)."""
DOMAIN_METRICS = {"prob": "domain_mcq.prob_correct", "ll_norm": "domain_mcq.accuracy_ll_norm",
                  "ll": "domain_mcq.accuracy_ll", "gen": "domain_mcq.accuracy_gen"}
"""What the rule maximises. ``prob`` (default): the probability on the correct option (softmax over the options'
log-likelihoods per byte), continuous, so it moves before the argmax flips and separates runs on a few dozen
questions. ``ll_norm``: accuracy of the same length-normalized choice. ``ll``: accuracy of the raw summed
log-likelihood, which favours short options (the correct option is strictly the shortest in 59 of the 208
BioASQ questions; the 135M original scores 40.9 on ``ll`` against 29.3 on ``ll_norm``), so a run that shifts
probability towards short answers gains on it without learning. ``gen``: the paper's protocol (the answer
letter in ``<answer>`` tags, majority vote); small models do not follow that format (SmolLM2-135M parses 0 of
12 here), so it only separates runs of larger models (it needs ``--evaluation.mcq_modes ll,gen``)."""
DEFAULT_DOMAIN_METRIC = "prob"
SKILL_METRIC = "ifeval.inst_strict"
BIOASQ_KIND = "bioasq"
"""``meta.kind`` of the BioASQ questions in the written question file (the synthetic probes keep theirs)."""


# --------------------------------------------------------------------------- tables, plots, comparison


def run_rows(outcome: dict, domain_metric: str = DEFAULT_DOMAIN_METRIC) -> list[dict]:
    """One row per run (the original first), with the domain scores and intervals read from each run's eval.json.
    ``row["scores"]``: the run's :class:`~disc_ray.evaluation.selection.RunScores` under ``domain_metric`` (with
    per-item values, for the paired comparisons); ``row["frontier"]``: its point on the method's frontier. Runs
    repeated per seed (``train.seed`` swept) are one row each, ``row["seed"]`` telling them apart."""
    from disc_ray.evaluation.frontier import frontier_point
    from disc_ray.evaluation.selection import run_scores

    metric = DOMAIN_METRICS[domain_metric]
    baseline = outcome["baseline_eval"]["suites"]
    original = run_scores("original", baseline, [metric], [SKILL_METRIC])
    rows = [{"method": "original", "lr": None, "seed": None, "status": "", **_scores(baseline), "selected": "",
             "scores": original, "suites": baseline}]
    def order(record) -> tuple:  # a trial without its parameters (no params.json) last
        method, lr, seed = (record.params.get(k) for k in ("objective.name", "train.lr", "train.seed"))
        return (ALL_METHODS.index(method) if method in ALL_METHODS else len(ALL_METHODS), 0.0 if lr is None else lr,
                -1 if seed is None else seed, record.trial_id)

    for record in sorted(outcome["records"], key=order):
        suites = {}
        if record.model_dir and (Path(record.model_dir) / "eval" / "eval.json").exists():
            suites = json.loads((Path(record.model_dir) / "eval" / "eval.json").read_text())["suites"]
        method, lr, seed = record.params.get("objective.name"), record.params.get("train.lr"), record.params.get("train.seed")
        label = ("?" if lr is None else f"{lr:.0e}") + ("" if seed is None else f" seed {seed}")
        scores = run_scores(f"{method} lr {label}", suites, [metric], [SKILL_METRIC])
        row = {"method": method, "lr": lr, "seed": seed, "trial_id": record.trial_id, "status": record.status,
               **_scores(suites), "suites": suites, "selected": "yes" if record.trial_id in outcome["per_method"].values() else "",
               "scores": scores,
               "frontier": frontier_point(method, label, scores, original, SKILL_METRIC) if suites else None}
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
    kinds = mcq.get("by_kind") or {}
    return {**{f"mcq_prob_{kind}": (kinds.get(kind) or {}).get("prob_correct") for kind in KINDS},
            "mcq_prob": mcq.get("prob_correct"), "mcq_prob_ci_low": ci(mcq, "prob_correct", 0),
            "mcq_prob_ci_high": ci(mcq, "prob_correct", 1), "mcq_margin": mcq.get("margin"),
            "mcq_ll_norm": mcq.get("accuracy_ll_norm"), "mcq_gen": mcq.get("accuracy_gen"),
            "mcq_gen_lenient": mcq.get("accuracy_gen_lenient"), "mcq_ll": mcq.get("accuracy_ll"),
            "ifeval_inst_strict": ifeval.get("inst_strict"), "ifeval_inst_strict_ci_low": ci(ifeval, "inst_strict", 0),
            "ifeval_inst_strict_ci_high": ci(ifeval, "inst_strict", 1), "ifeval_inst_loose": ifeval.get("inst_loose"),
            "ifeval_prompt_strict": ifeval.get("prompt_strict"), "drift_kl": drift.get("kl"), "drift_nll": drift.get("nll")}


KINDS = (BIOASQ_KIND, "restated", "single")
"""The question kinds whose ``prob_correct`` gets a column: BioASQ, and the synthetic probes (a fact restated in
other words; a fact stated once in its document)."""
COLUMNS = ("method", "lr", "seed", "status", "mcq_prob", "mcq_prob_ci_low", "mcq_prob_ci_high",
           *(f"mcq_prob_{kind}" for kind in KINDS), "mcq_margin", "mcq_ll_norm",
           "mcq_gen", "mcq_gen_lenient", "mcq_ll", "ifeval_inst_strict", "ifeval_inst_strict_ci_low",
           "ifeval_inst_strict_ci_high", "ifeval_change", "ifeval_change_ci_low", "ifeval_change_ci_high",
           "ifeval_inst_loose", "ifeval_prompt_strict", "drift_kl", "drift_nll", "selected")
MARKDOWN_COLUMNS = ("method", "lr", "seed", "status", "mcq_prob", *(f"mcq_prob_{kind}" for kind in KINDS), "mcq_ll_norm",
                    "mcq_gen", "mcq_gen_lenient", "mcq_ll",
                    "ifeval_inst_strict", "ifeval_change", "ifeval_inst_loose", "drift_kl", "selected")
"""``results.md`` shows intervals inside the cells (``41.2 [36.1, 46.3]``); the CSV has them as columns."""


def write_tables(rows: list[dict], out: Path) -> tuple[Path, Path]:
    write_csv(out / "results.csv", rows, COLUMNS)

    def cell(row: dict, key: str) -> str:
        if key == "mcq_prob" and row.get("mcq_prob") is not None:
            return format_ci(row["mcq_prob"], [row.get("mcq_prob_ci_low"), row.get("mcq_prob_ci_high")])
        if key == "ifeval_inst_strict" and row.get(key) is not None:
            return format_ci(row[key], [row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")])
        if key == "ifeval_change" and row.get(key) is not None and row.get("ifeval_change_ci_low") is not None:
            return format_ci(row[key], [row["ifeval_change_ci_low"], row["ifeval_change_ci_high"]], signed=True)
        return format_number(row.get(key), small="exponent")  # learning rates: 3e-04

    table = markdown_table(MARKDOWN_COLUMNS, [[cell(row, k) for k in MARKDOWN_COLUMNS] for row in rows])
    (out / "results.md").write_text(
        "Scores in points (0-100) with 95% bootstrap intervals over the questions / prompts; `ifeval_change` vs the "
        "original with its PAIRED interval; `mcq_margin` in nats/byte, drift in nats/token; `selected`: the paper's "
        "rule, per method.\n\n" + table + "\n")
    return out / "results.csv", out / "results.md"


def plot(rows: list[dict], out: Path, max_drop: float, domain_metric: str = DEFAULT_DOMAIN_METRIC) -> tuple[Path, Path, Path]:
    """``tradeoff.png`` (every run), ``retention_vs_lr.png`` and ``frontier.png`` (each method's frontier over its
    learning rates, seeds averaged), with 95% intervals as error bars (IFEval changes: paired intervals)."""
    from disc_ray.evaluation.frontier import BUDGETS, COLOURS, plot_frontiers

    original, runs = rows[0], rows[1:]
    domain_label = f"closed-book MCQ, every question: {DOMAIN_METRICS[domain_metric]} (points)"

    fig, ax = new_figure()
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
    save_figure(fig, ax, out / "tradeoff.png", "Knowledge gained vs instruction following kept (95% intervals)")

    fig, ax = new_figure()
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
    save_figure(fig, ax, out / "retention_vs_lr.png", "Retention vs learning rate (95% intervals)")
    frontier = plot_frontiers([c["frontier"] for c in configurations(rows)], original["scores"],
                              out / "frontier.png", budgets=BUDGETS, domain_label=domain_label,
                              skill_label="IFEval instruction-level strict")
    return out / "tradeoff.png", out / "retention_vs_lr.png", frontier


def methods_run(runs: list[dict]) -> list[str]:
    """The methods that have at least one run in ``runs``, in :data:`ALL_METHODS` order."""
    return [m for m in ALL_METHODS if any(r["method"] == m for r in runs)]


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
    """The paper's rule per method (with intervals), what each configuration learned and kept, the methods at the
    same learning rate, then the methods at matched retention (2 and 5 points)."""
    from disc_ray.evaluation.frontier import BUDGETS, best_at_budgets, format_budget_markdown

    def num(value) -> str:
        return format_number(value, small="exponent")

    by_id = {r.trial_id: r for r in records}
    original = rows[0]
    metric = DOMAIN_METRICS[domain_metric]
    lines = [f"Paper's rule, per method: best domain score ({metric}) with at most {max_drop:g} points lost on IFEval "
             f"(original: {metric} {format_ci(original['scores'].domain, original['scores'].domain_ci)}, "
             f"MCQ gen {num(original['mcq_gen'])} (lenient parse {num(original['mcq_gen_lenient'])}), "
             f"MCQ ll {num(original['mcq_ll'])}, ll_norm {num(original['mcq_ll_norm'])}, "
             f"IFEval {format_ci(original['ifeval_inst_strict'], [original['ifeval_inst_strict_ci_low'], original['ifeval_inst_strict_ci_high']])}). "
             "Intervals: 95% bootstrap over questions / prompts; changes vs the original are paired.", ""]
    for method, trial_id in per_method.items():
        if not any(r["method"] == method and r.get("frontier") is not None for r in rows[1:]):
            lines.append(f"- {method}: no run evaluated (unfinished, or stopped by the scheduler)")
            continue
        if trial_id is None:
            lines.append(f"- {method}: no learning rate keeps IFEval within {max_drop:g} points")
            continue
        record = by_id[trial_id]
        row = next(r for r in rows[1:] if r.get("trial_id") == trial_id)
        change = row["frontier"].retention_ci if row.get("frontier") else None
        seed = record.params.get("train.seed")
        lines.append(f"- {method}: lr {num(record.params['train.lr'])}{'' if seed is None else f' (seed {seed})'}: {metric} "
                     f"{format_ci(row['scores'].domain, row['scores'].domain_ci)}, MCQ gen {num(row['mcq_gen'])}, "
                     f"MCQ ll {num(row['mcq_ll'])}, IFEval {num(row['ifeval_inst_strict'])} "
                     f"({format_ci(row['ifeval_change'], change, signed=True)}), drift KL {num(row['drift_kl'])}")
    configs = configurations(rows)
    seeded = any(len(c["seeds"]) > 1 for c in configs)
    chosen = select_configurations(configs, original["scores"], max_drop)
    if seeded:
        lines += ["", f"Paper's rule on the seed means (each learning rate's {max(len(c['seeds']) for c in configs)} seeds "
                  "averaged per question and per prompt, so a lucky seed does not pick the rate):", ""]
        for method, config in chosen.items():
            lines.append(f"- {method}: " + ("no learning rate keeps IFEval within " f"{max_drop:g} points" if config is None else
                         f"lr {num(config['lr'])}: {metric} {format_ci(config['scores'].domain, config['scores'].domain_ci)}"))
    lines += ["", facts_markdown(configs, original, chosen).rstrip("\n")]
    if same_lr := same_lr_markdown(configs):
        lines += ["", same_lr.rstrip("\n")]
    points = [c["frontier"] for c in configs if c.get("frontier") is not None]
    lines += ["", format_budget_markdown(best_at_budgets(points, BUDGETS), domain_metric=metric,
                                         skill="IFEval inst_strict").rstrip("\n"),
              "", "`frontier.png` draws each method's runs as domain score vs IFEval change, with these intervals."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- seeds: per-item means per configuration


FACT_SCORES = (("restated", "domain_mcq.by_kind.restated.prob_correct"), ("single", "domain_mcq.by_kind.single.prob_correct"),
               (BIOASQ_KIND, f"domain_mcq.by_kind.{BIOASQ_KIND}.prob_correct"), ("IFEval inst strict", "ifeval.inst_strict"),
               ("IFEval inst loose", "ifeval.inst_loose"))
"""The columns of the what-was-learned table: correct-option probability per kind of question (a fact restated
in other words, stated once, a BioASQ passage's question) and IFEval at instruction level, strict and loose."""


def configurations(rows: list[dict]) -> list[dict]:
    """The evaluated runs grouped by (method, learning rate), seeds averaged per item: ``{"method", "lr",
    "seeds", "runs", "scores"`` (:func:`~disc_ray.evaluation.selection.average_runs`), ``"frontier"}``. One
    seed: the run itself. Runs stopped early (no eval.json) are left out."""
    from disc_ray.evaluation.frontier import frontier_point
    from disc_ray.evaluation.selection import average_runs

    groups: dict = {}
    for row in rows[1:]:
        if row.get("frontier") is not None:
            groups.setdefault((row["method"], row["lr"]), []).append(row)
    out = []
    for (method, lr), runs in groups.items():
        label = f"{lr:.0e}" + (f" ({len(runs)} seeds)" if len(runs) > 1 else "")
        scores = runs[0]["scores"] if len(runs) == 1 else average_runs(f"{method} lr {label}", [r["scores"] for r in runs])
        out.append({"method": method, "lr": lr, "seeds": [r["seed"] for r in runs], "runs": runs, "scores": scores,
                    "frontier": frontier_point(method, label, scores, rows[0]["scores"], SKILL_METRIC)})
    return out


def select_configurations(configs: list[dict], original, max_drop: float) -> dict:
    """The paper's rule per method over its configurations' seed means: ``{method: config or None}``."""
    from disc_ray.evaluation.selection import select_best

    chosen = {}
    for method in methods_run(configs):
        own = {c["scores"].name: c for c in configs if c["method"] == method}
        best = select_best([c["scores"] for c in own.values()], original, max_drop).best
        chosen[method] = own.get(best)
    return chosen


def fact_deltas(config: dict, original: dict) -> dict:
    """``{column: compare(...)}``: the configuration's seed-mean change vs the original per :data:`FACT_SCORES`
    (points, paired 95% interval over the questions / prompts of that kind)."""
    from disc_ray.evaluation.stats import compare, suite_items

    out = {}
    for column, dotted in FACT_SCORES:
        items = _seed_mean_items(config, dotted)
        base = suite_items(original["suites"], dotted)
        if base is not None and items is not None:
            out[column] = compare(items, base)
    return out


def _seed_mean_items(config: dict, dotted: str):
    """The configuration's per-item values of ``dotted`` averaged over its seeds, or None when a run lacks them."""
    from disc_ray.evaluation.stats import mean_over_runs, suite_items

    items = [suite_items(run["suites"], dotted) for run in config["runs"]]
    return mean_over_runs(items) if items and all(i is not None for i in items) else None


def _delta_cell(delta: dict | None) -> str:
    """A :func:`~disc_ray.evaluation.stats.compare` result as a table cell: ``+1.23 [+0.40, +2.10]``, `` ~`` appended
    when 0 is inside the interval (or too few items to claim), ``-`` when not measured."""
    if delta is None:
        return "-"
    return format_ci(delta["delta"], delta["ci"], signed=True) + ("" if delta["outside"] else " ~")


SAME_LR_SCORES = (("all questions", "domain_mcq.prob_correct"),) + FACT_SCORES
"""The columns of the same-learning-rate table: correct-option probability on every question, then
:data:`FACT_SCORES`."""


def same_lr_deltas(a: dict, b: dict) -> dict:
    """``{column: compare(...)}``: configuration ``a`` minus configuration ``b`` (same learning rate, two methods)
    per :data:`SAME_LR_SCORES`, each on its seeds' per-item means, paired over the questions / prompts both
    answered (points, 95% bootstrap interval)."""
    from disc_ray.evaluation.stats import compare

    out = {}
    for column, dotted in SAME_LR_SCORES:
        items_a, items_b = _seed_mean_items(a, dotted), _seed_mean_items(b, dotted)
        if items_a is not None and items_b is not None and (c := compare(items_a, items_b)) is not None:
            out[column] = c
    return out


def same_lr_markdown(configs: list[dict]) -> str:
    """Every pair of methods trained at the same learning rate (the later in :data:`ALL_METHODS` minus the
    earlier), seeds averaged per item, paired 95% intervals; empty when no learning rate has two methods."""
    columns = [c for c, _ in SAME_LR_SCORES]
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    by_lr: dict = {}
    for config in configs:
        by_lr.setdefault(config["lr"], []).append(config)
    table = []
    for lr in sorted(by_lr, key=lambda lr: (lr is None, lr or 0.0)):  # a run without its parameters last
        own = sorted(by_lr[lr], key=lambda c: order.get(c["method"], len(order)))
        for i, b in enumerate(own):
            for a in own[i + 1:]:
                deltas = same_lr_deltas(a, b)
                table.append([f"{a['method']} - {b['method']}", format_number(lr, small="exponent"),
                              f"{len(a['seeds'])} vs {len(b['seeds'])}",
                              *[_delta_cell(deltas.get(c)) for c in columns]])
    if not table:
        return ""
    header = ("methods", "lr", "seeds", *columns)
    return ("## Methods at the same learning rate\n\nOne method minus another trained at the same learning rate "
            "(points of correct-option probability; IFEval instruction level), each on its seeds' per-item means, "
            "paired 95% intervals over the shared questions / prompts; `~`: 0 is inside the interval. The same "
            "learning rate is not the same retention: the matched-retention table below is the comparison the "
            "paper's rule asks for.\n\n" + markdown_table(header, table) + "\n")


def facts_markdown(configs: list[dict], original: dict, chosen: dict) -> str:
    """What each configuration learned and kept: the change vs the original per kind of question and on IFEval
    (seed means, paired 95% intervals), mean drift, and the configuration the paper's rule picks per method."""
    columns = [c for c, _ in FACT_SCORES]
    table = []
    for config in configs:
        deltas = fact_deltas(config, original)
        drift = [r["drift_kl"] for r in config["runs"] if r.get("drift_kl") is not None]
        table.append([config["method"], format_number(config["lr"], small="exponent"), str(len(config["seeds"])),
                      *[_delta_cell(deltas.get(c)) for c in columns],
                      format_number(sum(drift) / len(drift) if drift else None, small="exponent"),
                      "yes" if chosen.get(config["method"]) is config else ""])
    header = ("method", "lr", "seeds", *(f"change {c}" for c in columns), "drift KL", "selected")
    return ("## What each configuration learned and kept\n\nChange vs the original (points of correct-option "
            "probability per kind of question; IFEval instruction level), seeds averaged per item, with paired 95% "
            "intervals; `~`: 0 is inside the interval. `selected`: the paper's rule on these means.\n\n"
            + markdown_table(header, table) + "\n")
