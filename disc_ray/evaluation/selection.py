"""The paper's selection rule, as pure functions: the best domain score among the runs that lose at
most ``max_drop`` points on EACH retained skill relative to the baseline (the original model).

    baseline = run_scores("original", baseline_suites, domain_metrics, skill_metrics)
    runs = [run_scores(name, suites, domain_metrics, skill_metrics) for name, suites in ...]
    selection = select_best(runs, baseline, max_drop=5.0)
    selection.best        # name of the chosen run, or None when no run qualifies
    selection.lead        # its lead over the runner-up with a PAIRED 95% interval, and whether 0 is outside it

When ``eval.json`` holds per-item values (``per_item``), :class:`RunScores` carries them, each drop gets a
paired interval (baseline minus run, the same items resampled jointly) and the selected run's lead over
the best other eligible run is tested the same way (:func:`disc_ray.evaluation.stats.compare`). The rule
itself is the paper's and ignores the intervals; they say how much to trust its choice.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from disc_ray.evaluation.config import LM_EVAL_PREFIX
from disc_ray.evaluation.stats import (DEFAULT_BOOTSTRAP, BootstrapConfig, ItemValues, bootstrap_interval, compare,
                                      mean_over_runs, suite_items)


@dataclasses.dataclass(frozen=True)
class RunScores:
    name: str
    domain: float | None
    """The domain score (points); None when the run has none of the domain metrics."""
    domain_metric: str | None
    skills: Mapping[str, float]
    """Retained-skill scores (points) by metric name, e.g. ``{"ifeval.score": 41.2}``."""
    domain_ci: tuple[float, float] | None = None
    """95% bootstrap interval of ``domain`` (points), when recorded."""
    skill_cis: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    domain_items: ItemValues | None = dataclasses.field(default=None, compare=False, repr=False)
    """Per-item values behind ``domain`` (paired comparisons); None when ``eval.json`` has none."""
    skill_items: Mapping[str, ItemValues] = dataclasses.field(default_factory=dict, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class Verdict:
    name: str
    domain: float | None
    drops: Mapping[str, float]
    """Baseline minus run, per skill (positive = the run lost points)."""
    eligible: bool
    reason: str
    drop_cis: Mapping[str, dict] = dataclasses.field(default_factory=dict)
    """Per skill: :func:`~disc_ray.evaluation.stats.compare` of baseline minus run (``delta``, paired ``ci``, ``n``,
    ``outside``), when both have per-item values."""


@dataclasses.dataclass(frozen=True)
class Selection:
    best: str | None
    max_drop: float
    verdicts: tuple[Verdict, ...]
    lead: dict | None = None
    """The selected run's domain lead over the runner-up (the best other eligible run): ``{"runner_up", "delta",
    "ci", "n", "outside"}`` (paired bootstrap; ``outside``: the interval excludes 0, the lead is not one the
    items could give by chance). None when there is no runner-up or no per-item values."""

    def verdict(self, name: str) -> Verdict:
        return next(v for v in self.verdicts if v.name == name)


def lookup(suites: Mapping, dotted: str) -> float | None:
    """``lookup(suites, "ifeval.score")`` -> ``suites["ifeval"]["score"]``; suite names may contain dots or colons."""
    for cut in range(len(dotted), 0, -1):
        if dotted[:cut] in suites and dotted[cut:].startswith("."):
            value = suites[dotted[:cut]]
            for part in dotted[cut + 1:].split("."):
                if not isinstance(value, Mapping) or part not in value:
                    return None
                value = value[part]
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return None


def skill_metric_names(suites: Mapping, skill_metrics: Sequence[str]) -> list[str]:
    """The configured skill metrics plus every ``lm_eval:*`` suite's ``score``."""
    names = list(skill_metrics)
    names += [f"{s}.score" for s in suites if s.startswith(LM_EVAL_PREFIX) and f"{s}.score" not in names]
    return names


def lookup_ci(suites: Mapping, dotted: str) -> tuple[float, float] | None:
    """The recorded interval of a dotted score: ``"domain_mcq.by_kind.restated.prob_correct"`` ->
    ``suites["domain_mcq"]["by_kind"]["restated"]["ci"]["prob_correct"]``."""
    for cut in range(len(dotted), 0, -1):
        if dotted[:cut] in suites and dotted[cut:].startswith("."):
            parts = dotted[cut + 1:].split(".")
            node = suites[dotted[:cut]]
            for part in parts[:-1]:
                node = node.get(part) if isinstance(node, Mapping) else None
            ci = node.get("ci", {}).get(parts[-1]) if isinstance(node, Mapping) else None
            return (float(ci[0]), float(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
    return None


def run_scores(name: str, suites: Mapping, domain_metrics: Sequence[str], skill_metrics: Sequence[str]) -> RunScores:
    """Pick the domain score (first of ``domain_metrics`` present) and the skill scores out of ``eval.json``'s
    suites, with their intervals and per-item values where recorded."""
    domain, domain_metric = None, None
    for metric in domain_metrics:
        value = lookup(suites, metric)
        if value is not None:
            domain, domain_metric = value, metric
            break
    skills = {m: v for m in skill_metric_names(suites, skill_metrics) if (v := lookup(suites, m)) is not None}
    skill_cis = {m: ci for m in skills if (ci := lookup_ci(suites, m)) is not None}
    skill_items = {m: items for m in skills if (items := suite_items(suites, m)) is not None}
    return RunScores(name, domain, domain_metric, skills,
                     domain_ci=lookup_ci(suites, domain_metric) if domain_metric else None, skill_cis=skill_cis,
                     domain_items=suite_items(suites, domain_metric) if domain_metric else None, skill_items=skill_items)


def average_runs(name: str, runs: Sequence[RunScores], settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> RunScores:
    """Repeated runs of one configuration (seeds) as one: every score with per-item values in all runs becomes
    the score of the per-item means (:func:`~disc_ray.evaluation.stats.mean_over_runs`) with a fresh bootstrap
    interval over the items; a score without per-item values in every run is the plain mean of the runs' scores
    (no interval). Raises ``ValueError`` for no runs or runs on different domain metrics."""
    if not runs:
        raise ValueError("average_runs needs at least one run")
    if len({r.domain_metric for r in runs}) != 1:
        raise ValueError(f"average_runs: the runs have different domain metrics {sorted({str(r.domain_metric) for r in runs})}")

    def combine(values: list, items: list) -> tuple:
        if any(v is None for v in values):
            return None, None, None
        if all(i is not None for i in items):
            mean = mean_over_runs(items)
            return mean.score, bootstrap_interval(mean.values, mean.weights, settings=settings), mean
        return sum(values) / len(values), None, None

    domain, domain_ci, domain_items = combine([r.domain for r in runs], [r.domain_items for r in runs])
    skills, skill_cis, skill_items = {}, {}, {}
    for skill in [s for s in runs[0].skills if all(s in r.skills for r in runs)]:
        value, ci, items = combine([r.skills[skill] for r in runs], [r.skill_items.get(skill) for r in runs])
        skills[skill] = value
        if ci is not None:
            skill_cis[skill], skill_items[skill] = ci, items
    return RunScores(name, domain, runs[0].domain_metric, skills, domain_ci=domain_ci, skill_cis=skill_cis,
                     domain_items=domain_items, skill_items=skill_items)


def drop_intervals(run: RunScores, baseline: RunScores, settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> dict:
    """Per skill with per-item values in both: baseline minus run on the shared items, paired interval."""
    out = {}
    for skill, items in run.skill_items.items():
        base = baseline.skill_items.get(skill)
        if base is not None and (result := compare(base, items, settings)) is not None:
            out[skill] = result
    return out


def judge(run: RunScores, baseline: RunScores, max_drop: float, settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> Verdict:
    drops = {skill: baseline.skills[skill] - run.skills[skill] for skill in baseline.skills if skill in run.skills}
    missing = [skill for skill in baseline.skills if skill not in run.skills]
    cis = drop_intervals(run, baseline, settings)
    if run.domain is None:
        return Verdict(run.name, None, drops, False, "no domain score", cis)
    if not baseline.skills:
        return Verdict(run.name, run.domain, drops, False, "the baseline has no retained-skill score", cis)
    if missing:
        return Verdict(run.name, run.domain, drops, False, f"missing skill scores: {', '.join(missing)}", cis)
    too_far = {skill: drop for skill, drop in drops.items() if drop > max_drop + 1e-9}
    if too_far:
        worst = max(too_far, key=too_far.get)
        return Verdict(run.name, run.domain, drops, False, f"{worst} dropped {too_far[worst]:.1f} > {max_drop:g} points", cis)
    return Verdict(run.name, run.domain, drops, True, f"every skill within {max_drop:g} points", cis)


def lead_over(best: RunScores, runner_up: RunScores, settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> dict | None:
    """``best``'s domain lead over ``runner_up`` with a paired interval (see :attr:`Selection.lead`)."""
    if best.domain_items is None or runner_up.domain_items is None:
        return None
    result = compare(best.domain_items, runner_up.domain_items, settings)
    return None if result is None else {"runner_up": runner_up.name, **result}


def describe_lead(lead: dict | None, unit: str = "points") -> str:
    """One sentence on whether the selection is decided by more than the items' noise."""
    if lead is None:
        return "No runner-up (or no per-item values) to test the selected run's lead against."
    verdict = ("outside the paired 95% interval: the items support it" if lead["outside"] else
               "inside the paired 95% interval: the items do not separate the two runs")
    return (f"Lead over the runner-up {lead['runner_up']}: {lead['delta']:+.2f} {unit} "
            f"[{lead['ci'][0]:+.2f}, {lead['ci'][1]:+.2f}] on {lead['n']} items, 0 is {verdict}.")


def select_best(runs: Sequence[RunScores], baseline: RunScores, max_drop: float = 5.0,
                settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> Selection:
    """The eligible run with the best domain score (ties: the smaller worst drop, then the name), and its lead
    over the runner-up with a paired interval."""
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}")
    verdicts = tuple(judge(run, baseline, max_drop, settings) for run in runs)
    order = sorted((v for v in verdicts if v.eligible), key=lambda v: (-v.domain, max(v.drops.values(), default=0.0), v.name))
    lead = None
    if len(order) > 1:
        by_name = {run.name: run for run in runs}
        lead = lead_over(by_name[order[0].name], by_name[order[1].name], settings)
    return Selection(order[0].name if order else None, max_drop, verdicts, lead)
