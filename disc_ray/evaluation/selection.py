"""The paper's selection rule, as pure functions: the best domain score among the runs that lose at
most ``max_drop`` points on EACH retained skill relative to the baseline (the original model).

    baseline = run_scores("original", baseline_suites, domain_metrics, skill_metrics)
    runs = [run_scores(name, suites, domain_metrics, skill_metrics) for name, suites in ...]
    selection = select_best(runs, baseline, max_drop=5.0)
    selection.best        # name of the chosen run, or None when no run qualifies
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from disc_ray.evaluation.config import LM_EVAL_PREFIX


@dataclasses.dataclass(frozen=True)
class RunScores:
    name: str
    domain: float | None
    """The domain score (points); None when the run has none of the domain metrics."""
    domain_metric: str | None
    skills: Mapping[str, float]
    """Retained-skill scores (points) by metric name, e.g. ``{"ifeval.score": 41.2}``."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    name: str
    domain: float | None
    drops: Mapping[str, float]
    """Baseline minus run, per skill (positive = the run lost points)."""
    eligible: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class Selection:
    best: str | None
    max_drop: float
    verdicts: tuple[Verdict, ...]

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


def run_scores(name: str, suites: Mapping, domain_metrics: Sequence[str], skill_metrics: Sequence[str]) -> RunScores:
    """Pick the domain score (first of ``domain_metrics`` present) and the skill scores out of ``eval.json``'s suites."""
    domain, domain_metric = None, None
    for metric in domain_metrics:
        value = lookup(suites, metric)
        if value is not None:
            domain, domain_metric = value, metric
            break
    skills = {m: v for m in skill_metric_names(suites, skill_metrics) if (v := lookup(suites, m)) is not None}
    return RunScores(name, domain, domain_metric, skills)


def judge(run: RunScores, baseline: RunScores, max_drop: float) -> Verdict:
    drops = {skill: baseline.skills[skill] - run.skills[skill] for skill in baseline.skills if skill in run.skills}
    missing = [skill for skill in baseline.skills if skill not in run.skills]
    if run.domain is None:
        return Verdict(run.name, None, drops, False, "no domain score")
    if not baseline.skills:
        return Verdict(run.name, run.domain, drops, False, "the baseline has no retained-skill score")
    if missing:
        return Verdict(run.name, run.domain, drops, False, f"missing skill scores: {', '.join(missing)}")
    too_far = {skill: drop for skill, drop in drops.items() if drop > max_drop + 1e-9}
    if too_far:
        worst = max(too_far, key=too_far.get)
        return Verdict(run.name, run.domain, drops, False, f"{worst} dropped {too_far[worst]:.1f} > {max_drop:g} points")
    return Verdict(run.name, run.domain, drops, True, f"every skill within {max_drop:g} points")


def select_best(runs: Sequence[RunScores], baseline: RunScores, max_drop: float = 5.0) -> Selection:
    """The eligible run with the best domain score (ties: the smaller worst drop, then the name)."""
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}")
    verdicts = tuple(judge(run, baseline, max_drop) for run in runs)
    eligible = [v for v in verdicts if v.eligible]
    best = min(eligible, key=lambda v: (-v.domain, max(v.drops.values(), default=0.0), v.name), default=None)
    return Selection(best.name if best else None, max_drop, verdicts)
