"""Methods compared at matched retention, not at matched learning rate.

At one learning rate the methods sit at very different retention (``ft`` learns more AND forgets more
than ``disc``), so a per-LR comparison answers the wrong question. Here each method's runs (its LR grid)
form a frontier: domain score (points, with its 95% bootstrap interval) against retention, the change of
the retained skill vs the original (points, with its PAIRED interval; negative = lost). For each retention
budget (e.g. at most 2 and at most 5 points lost) a method's best run is the one with the highest domain
score among its runs within the budget (the paper's rule with ``max_drop`` = the budget, per method), and
every pair of methods is compared on those runs with a paired bootstrap over the shared questions
(:func:`disc_ray.evaluation.stats.compare`): is the leader's edge outside the 95% interval?

    points = [frontier_point("disc", "3e-4", run, original, "ifeval.inst_strict"), ...]
    table = best_at_budgets(points, budgets=(2, 5))
    text = format_budget_markdown(table, points, budgets=(2, 5), domain_metric="domain_mcq.prob_correct")
    plot_frontiers(points, original, "frontier.png", budgets=(2, 5))
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Mapping, Sequence

from disc_ray.evaluation.selection import RunScores
from disc_ray.evaluation.stats import DEFAULT_BOOTSTRAP, BootstrapConfig, compare
from disc_ray.reporting import draw_error_bars, format_ci, new_figure, save_figure

BUDGETS = (2.0, 5.0)
"""Retention budgets (points of the retained skill a run may lose) the reproduction reports."""
COLOURS = {"ft": "tab:orange", "ft_kl": "tab:purple", "talr": "tab:green", "lora": "tab:brown", "rephrase": "tab:red",
           "cd_base": "tab:olive", "disc": "tab:blue"}


@dataclasses.dataclass(frozen=True)
class FrontierPoint:
    method: str
    label: str
    """What distinguishes the run within its method (its learning rate)."""
    scores: RunScores
    retention: float | None
    """Run minus original on the retained skill (points; negative = lost)."""
    retention_ci: tuple[float, float] | None
    """Paired 95% interval of ``retention`` (the same prompts of both models resampled jointly)."""


def frontier_point(method: str, label: str, scores: RunScores, original: RunScores, skill: str,
                   settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> FrontierPoint:
    """One run as a frontier point: its retention on ``skill`` vs the original, with a paired interval."""
    if skill not in scores.skills or skill not in original.skills:
        return FrontierPoint(method, label, scores, None, None)
    retention = scores.skills[skill] - original.skills[skill]
    ci = None
    if skill in scores.skill_items and skill in original.skill_items:
        paired = compare(scores.skill_items[skill], original.skill_items[skill], settings)
        ci = tuple(paired["ci"]) if paired else None
    return FrontierPoint(method, label, scores, retention, ci)


def best_at_budgets(points: Sequence[FrontierPoint], budgets: Sequence[float] = BUDGETS) -> dict:
    """``{budget: {method: FrontierPoint | None}}``: per method, the best domain score among its runs that lose
    at most ``budget`` points (ties: the better retention). None when no run of the method is within it."""
    methods = list(dict.fromkeys(p.method for p in points))
    table = {}
    for budget in budgets:
        table[budget] = {}
        for method in methods:
            within = [p for p in points if p.method == method and p.retention is not None
                      and p.scores.domain is not None and -p.retention <= budget + 1e-9]
            table[budget][method] = min(within, key=lambda p: (-p.scores.domain, -p.retention, p.label), default=None)
    return table


def compare_at_budget(row: Mapping[str, FrontierPoint | None], settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> list[dict]:
    """Every pair of methods with a run in the budget, the better domain score first: ``{"a", "b", "delta", "ci",
    "n", "outside"}`` from a paired bootstrap over the questions both answered (None entries skipped)."""
    present = [p for p in row.values() if p is not None]
    out = []
    for first, second in itertools.combinations(present, 2):
        a, b = sorted((first, second), key=lambda p: -p.scores.domain)
        if a.scores.domain_items is None or b.scores.domain_items is None:
            continue
        result = compare(a.scores.domain_items, b.scores.domain_items, settings)
        if result is not None:
            out.append({"a": a.method, "b": b.method, **result})
    return out


def format_budget_markdown(table: dict, *, domain_metric: str, skill: str,
                           settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> str:
    """The matched-retention section of ``comparison.md``: a table of each method's best run per budget and the
    paired differences between methods at each budget."""
    methods = list(dict.fromkeys(m for row in table.values() for m in row))
    lines = ["## Methods at matched retention", "",
             f"Each method's best `{domain_metric}` (points, 95% interval) among its learning rates that lose at most "
             f"the budget on `{skill}` (change vs the original, paired 95% interval).", "",
             "| retention budget | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for budget, row in table.items():
        cells = []
        for method in methods:
            point = row.get(method)
            if point is None:
                cells.append("no run within the budget")
                continue
            retention = format_ci(point.retention, point.retention_ci, signed=True)
            cells.append(f"{format_ci(point.scores.domain, point.scores.domain_ci)} (lr {point.label}; {skill} {retention})")
        lines.append(f"| lose <= {budget:g} points | " + " | ".join(cells) + " |")
    lines += ["", f"Paired differences of those runs on the same questions ({100 * settings.confidence:g}% bootstrap, "
              f"{settings.n_resamples} resamples, seed {settings.seed}):", ""]
    for budget, row in table.items():
        comparisons = compare_at_budget(row, settings)
        if not comparisons:
            lines.append(f"- <= {budget:g} points: fewer than two methods have a run within the budget.")
        for c in comparisons:
            verdict = "outside the interval: the questions separate them" if c["outside"] else \
                "0 inside the interval: not separated by these questions"
            lines.append(f"- <= {budget:g} points: {c['a']} - {c['b']} = {format_ci(c['delta'], c['ci'], signed=True)} "
                         f"on {c['n']} questions; {verdict}.")
    return "\n".join(lines) + "\n"


def plot_frontiers(points: Sequence[FrontierPoint], original: RunScores, path: str | Path, *,
                   budgets: Sequence[float] = BUDGETS, domain_label: str = "domain score (points)",
                   skill_label: str = "retained skill") -> Path:
    """Each method's frontier: domain score (y) vs retention (x), its runs joined in order of retention, error
    bars the 95% intervals (x: paired), the original as a star, the budgets as dashed lines."""
    fig, ax = new_figure(figsize=(6.8, 5.0))
    for method in dict.fromkeys(p.method for p in points):
        own = sorted((p for p in points if p.method == method and p.retention is not None and p.scores.domain is not None),
                     key=lambda p: p.retention)
        if not own:
            continue
        colour = COLOURS.get(method, "tab:gray")
        for p in own:
            draw_error_bars(ax, p.retention, p.scores.domain, p.retention_ci, p.scores.domain_ci, colour=colour)
            ax.annotate(p.label, (p.retention, p.scores.domain), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.plot([p.retention for p in own], [p.scores.domain for p in own], "-o", c=colour, label=method, zorder=3)
    if original.domain is not None:
        draw_error_bars(ax, 0.0, original.domain, None, original.domain_ci, colour="tab:red")
        ax.scatter([0.0], [original.domain], marker="*", s=200, c="tab:red", label="original", zorder=4)
    for budget in budgets:
        ax.axvline(-budget, color="tab:red", linestyle="--", linewidth=1, alpha=0.4 + 0.3 * (budget == max(budgets)))
        ax.annotate(f"-{budget:g}", (-budget, ax.get_ylim()[1]), textcoords="offset points", xytext=(2, -10), fontsize=7,
                    color="tab:red")
    ax.set_xlabel(f"{skill_label}: change vs original (points; paired 95% interval)")
    ax.set_ylabel(domain_label)
    return save_figure(fig, ax, path, "Each method's frontier over its learning rates (error bars: 95% intervals)")
