"""Choosing among a sweep's trials: the paper's rule or a weighted score, and the Pareto front. Pure functions.

* ``paper``: the trial with the best domain score among those that lose at most ``max_drop`` points on
  EACH retained metric relative to the original model (the rule of :mod:`disc_ray.evaluation.selection`,
  which ``disc-ray report`` uses too), optionally also within ``max_drift_kl``. Ties: the smaller worst
  drop, then the trial id.
* ``weighted``: the best ``sum(weight * x)``, where ``x`` is the change vs the original (points) for the
  domain score and retained metrics, and the value (nats/token) for ``drift_kl`` / ``drift_nll``.
* Pareto front of (domain score, retention), both maximized, where retention is the worst change of a
  retained metric vs the original (points), or ``-drift_kl`` when no retained metric is measured.

    records = [TrialRecord("t0", {"train.lr": 1e-5}, "completed", domain=61.0, skills={"ifeval.inst_strict": 40.0}), ...]
    outcome = select_trials(records, baseline, SelectionConfig(max_drop=5))
    outcome.best, outcome.pareto, outcome.lead

With per-item values (read from each trial's ``eval.json``), every trial's drops get paired 95% intervals
and ``outcome.lead`` says whether the selected trial's domain lead over the runner-up (the next eligible
trial by the rule's order) is outside its paired interval (:mod:`disc_ray.evaluation.stats`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from disc_ray.evaluation.selection import RunScores, judge, lead_over
from disc_ray.evaluation.stats import DEFAULT_BOOTSTRAP, BootstrapConfig, ItemValues
from disc_ray.tuning.sweep_config import SelectionConfig

DRIFT_UNIT = 0.01
"""nats/token: the paper rule's searcher score loses ``penalty_per_point`` per this much drift beyond the budget."""


@dataclasses.dataclass
class TrialRecord:
    """One trial as the tables show it."""

    trial_id: str
    params: dict
    """The swept keys' values."""
    status: str
    """``completed`` (trained and evaluated), ``stopped`` (by the drift budget or ASHA), ``error`` or
    ``unfinished`` (interrupted, or still running when a ``--select-only`` sweep read it)."""
    domain: float | None = None
    domain_metric: str | None = None
    skills: dict = dataclasses.field(default_factory=dict)
    """Retained metrics (points) by name."""
    drift_kl: float | None = None
    """nats/token: the final evaluation's drift, else the last measured during training."""
    drift_nll: float | None = None
    steps: int | None = None
    model_dir: str | None = None
    note: str = ""
    domain_ci: tuple | None = None
    """95% bootstrap interval of ``domain`` (points), when the trial's eval.json records one."""
    skill_cis: dict = dataclasses.field(default_factory=dict)
    domain_items: ItemValues | None = dataclasses.field(default=None, repr=False, compare=False)
    skill_items: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    # filled by select_trials
    drops: dict = dataclasses.field(default_factory=dict)
    drop_cis: dict = dataclasses.field(default_factory=dict)
    """Per retained metric: baseline minus trial with its paired interval (``delta``, ``ci``, ``n``, ``outside``)."""
    eligible: bool = False
    reason: str = ""
    score: float | None = None
    retention: float | None = None
    pareto: bool = False
    selected: bool = False

    def scores(self) -> RunScores:
        return RunScores(self.trial_id, self.domain, self.domain_metric, dict(self.skills), domain_ci=self.domain_ci,
                         skill_cis=dict(self.skill_cis), domain_items=self.domain_items, skill_items=dict(self.skill_items))

    def take_scores(self, scores: RunScores) -> None:
        """Domain and skill scores, intervals and per-item values from :func:`~disc_ray.evaluation.selection.run_scores`."""
        self.domain, self.domain_metric, self.skills = scores.domain, scores.domain_metric, dict(scores.skills)
        self.domain_ci, self.skill_cis = scores.domain_ci, dict(scores.skill_cis)
        self.domain_items, self.skill_items = scores.domain_items, dict(scores.skill_items)


@dataclasses.dataclass(frozen=True)
class Judgement:
    eligible: bool
    reason: str
    drops: Mapping[str, float]
    score: float | None
    """What a model-based searcher maximizes (see SelectionConfig.penalty_per_point)."""
    drop_cis: Mapping[str, dict] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class SweepSelection:
    best: str | None
    rule: str
    description: str
    records: list[TrialRecord]
    lead: dict | None = None
    """The selected trial's domain lead over the runner-up with its paired interval (see
    :attr:`disc_ray.evaluation.selection.Selection.lead`); None without a runner-up or per-item values."""


def describe_rule(spec: SelectionConfig) -> str:
    if spec.rule == "weighted":
        terms = " + ".join(f"{w:g} x {'change of ' if k not in ('drift_kl', 'drift_nll') else ''}{k}" for k, w in spec.weights.items())
        return f"weighted: best {terms}"
    drift = f" and drift KL <= {spec.max_drift_kl:g} nats/token" if spec.max_drift_kl is not None else ""
    return f"paper: best domain score with at most {spec.max_drop:g} points drop on each retained metric{drift}"


def judge_trial(scores: RunScores, baseline: RunScores, drift_kl: float | None, drift_nll: float | None,
                spec: SelectionConfig, settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> Judgement:
    """Eligibility, reason, per-metric drops (baseline - trial) and the searcher's score of one evaluated trial."""
    verdict = judge(scores, baseline, spec.max_drop, settings)
    drops, cis = dict(verdict.drops), dict(verdict.drop_cis)
    if spec.rule == "weighted":
        values, missing = {}, []
        for name in spec.weights:
            if name == "domain":
                value = None if scores.domain is None or baseline.domain is None else scores.domain - baseline.domain
            elif name in ("drift_kl", "drift_nll"):
                value = drift_kl if name == "drift_kl" else drift_nll
            else:
                value = None if name not in scores.skills or name not in baseline.skills else scores.skills[name] - baseline.skills[name]
            if value is None:
                missing.append(name)
            values[name] = value
        if missing:
            return Judgement(False, f"missing {', '.join(missing)}", drops, None, cis)
        score = sum(spec.weights[name] * values[name] for name in spec.weights)
        return Judgement(True, f"score {score:.3f}", drops, score, cis)
    eligible, reason = verdict.eligible, verdict.reason
    drift_excess = 0.0
    if spec.max_drift_kl is not None:
        if drift_kl is None:
            eligible, reason = False, "no drift measured" if eligible else reason
        elif drift_kl > spec.max_drift_kl + 1e-12:
            drift_excess = drift_kl - spec.max_drift_kl
            if eligible:
                eligible, reason = False, f"drift KL {drift_kl:.4f} > {spec.max_drift_kl:g} nats/token"
    if scores.domain is None:
        return Judgement(False, reason, drops, None, cis)
    excess_points = sum(max(0.0, drop - spec.max_drop) for drop in drops.values())
    score = scores.domain - spec.penalty_per_point * (excess_points + drift_excess / DRIFT_UNIT)
    return Judgement(eligible, reason, drops, scores.domain if eligible else score, cis)


def retention_of(record: TrialRecord, baseline: RunScores) -> float | None:
    """Worst change of a retained metric vs the original (points); ``-drift_kl`` when the original has none."""
    names = list(baseline.skills)
    if names:
        if not all(n in record.skills for n in names):
            return None
        return min(record.skills[n] - baseline.skills[n] for n in names)
    return None if record.drift_kl is None else -record.drift_kl


def pareto_front(points: Mapping[str, tuple[float, float]]) -> set[str]:
    """Ids of the points no other point dominates (>= on both coordinates, > on one); both maximized."""
    front = set()
    for name, (x, y) in points.items():
        dominated = any(ox >= x and oy >= y and (ox > x or oy > y) for other, (ox, oy) in points.items() if other != name)
        if not dominated:
            front.add(name)
    return front


def select_trials(records: list[TrialRecord], baseline: RunScores, spec: SelectionConfig,
                  settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> SweepSelection:
    """Judge every trial, mark the Pareto front and the selected trial (in place); returns the outcome."""
    for record in records:
        record.eligible, record.selected, record.pareto, record.score = False, False, False, None
        if record.status != "completed":
            record.reason = record.note or record.status
            record.retention = None
            continue
        judgement = judge_trial(record.scores(), baseline, record.drift_kl, record.drift_nll, spec, settings)
        record.eligible, record.reason, record.drops, record.score = (judgement.eligible, judgement.reason,
                                                                      dict(judgement.drops), judgement.score)
        record.drop_cis = dict(judgement.drop_cis)
        record.retention = retention_of(record, baseline)
    points = {r.trial_id: (r.retention, r.domain) for r in records
              if r.status == "completed" and r.retention is not None and r.domain is not None}
    front = pareto_front(points)
    for record in records:
        record.pareto = record.trial_id in front
    eligible = [r for r in records if r.eligible]
    if spec.rule == "weighted":
        order = sorted(eligible, key=lambda r: (-r.score, r.trial_id))
    else:
        order = sorted(eligible, key=lambda r: (-r.domain, max(r.drops.values(), default=0.0), r.trial_id))
    best = order[0] if order else None
    if best is not None:
        best.selected = True
    lead = lead_over(order[0].scores(), order[1].scores(), settings) if len(order) > 1 else None
    return SweepSelection(best.trial_id if best else None, spec.rule, describe_rule(spec), records, lead)
