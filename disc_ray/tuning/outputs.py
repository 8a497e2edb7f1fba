"""What a sweep leaves in its folder: ``trials.csv``, ``trials.md``, ``selected.yaml``, ``pareto.png``, ``sweep.json``.

* ``trials.csv`` / ``trials.md``: one row per trial: its swept values, status, domain score, each retained
  metric and its change vs the original (points), drift (nats/token), steps trained, eligibility under
  the rule and why, the score the rule ranks by, and ``pareto`` / ``selected`` flags. The Markdown table
  starts with the original model's row and ends with the rule and the selected trial.
* ``selected.yaml``: the full AdaptConfig of the selected trial (``jobs/adapt.py --config selected.yaml``
  trains it again; its ``run`` section points at the trial's run).
* ``pareto.png``: domain score vs retention, every evaluated trial, the front, the original and the
  ``max_drop`` line; the selected trial is marked; error bars are 95% intervals (domain: bootstrap over
  questions; retention: the paired interval of the worst change).

Where the trials' ``eval.json`` hold per-item values, scores carry 95% bootstrap intervals, changes vs the
original PAIRED intervals (``*``: the interval excludes 0), and the tables end with whether the selected
trial's lead over the runner-up is outside its paired interval (:mod:`disc_ray.evaluation.stats`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import yaml

from disc_ray.config import to_dict
from disc_ray.evaluation.selection import RunScores, describe_lead
from disc_ray.reporting import draw_error_bars, format_ci, format_number, markdown_table, new_figure, save_figure, write_csv
from disc_ray.tuning.selection import SweepSelection, TrialRecord


def table_rows(records: Sequence[TrialRecord], keys: Sequence[str], skills: Sequence[str]) -> list[dict]:
    """One flat dict per trial (the CSV's rows)."""
    rows = []
    for r in records:
        row = {"trial_id": r.trial_id, **{k: r.params.get(k) for k in keys}, "status": r.status,
               "domain_metric": r.domain_metric, "domain_score": r.domain,
               "domain_ci_low": r.domain_ci[0] if r.domain_ci else None, "domain_ci_high": r.domain_ci[1] if r.domain_ci else None}
        for skill in skills:
            row[skill] = r.skills.get(skill)
            row[f"{skill} change"] = 0.0 - r.drops[skill] if skill in r.drops else None
            paired = r.drop_cis.get(skill)
            row[f"{skill} change_ci_low"] = -paired["ci"][1] + 0.0 if paired else None
            row[f"{skill} change_ci_high"] = -paired["ci"][0] + 0.0 if paired else None
        row.update(drift_kl=r.drift_kl, drift_nll=r.drift_nll, steps=r.steps, retention=r.retention, score=r.score,
                   eligible=r.eligible, pareto=r.pareto, selected=r.selected, reason=r.reason, model_dir=r.model_dir)
        rows.append(row)
    return rows


def format_markdown(selection: SweepSelection, baseline: RunScores, keys: Sequence[str], skills: Sequence[str],
                    sweep_name: str) -> str:
    header = ["trial", *keys, "status", "domain"] + [f"{s} (change)" for s in skills] + [
        "drift KL", "drift NLL", "steps", "score", "eligible", "Pareto", "note"]
    original = ["*original*", *["" for _ in keys], "", format_ci(baseline.domain, baseline.domain_ci)] + [
        format_ci(baseline.skills.get(s), baseline.skill_cis.get(s)) for s in skills] + ["0", "-", "0", "", "", "", "baseline"]
    rows = [original]
    for r in selection.records:
        name = f"**{r.trial_id}** (selected)" if r.selected else r.trial_id
        cells = [name, *[format_number(r.params.get(k), 3, small="significant") for k in keys], r.status,
                 format_ci(r.domain, r.domain_ci)]
        for skill in skills:
            change = 0.0 - r.drops[skill] if skill in r.drops else None
            paired = r.drop_cis.get(skill)
            if paired is not None:
                text = format_ci(change + 0.0, sorted(-x + 0.0 for x in paired["ci"]), signed=True) + (" *" if paired["outside"] else "")
            else:
                text = format_ci(None if change is None else change + 0.0, None, signed=True) if change is not None else ""
            cells.append(format_ci(r.skills.get(skill), r.skill_cis.get(skill)) + (f" ({text})" if text else ""))
        cells += [format_number(r.drift_kl, 4, small="significant"), format_number(r.drift_nll, 4, small="significant"),
                  format_number(r.steps), format_number(r.score, small="significant"), format_number(r.eligible),
                  "yes" if r.pareto else "", r.reason.replace("|", "/")]
        rows.append(cells)
    lines = [f"# Sweep `{sweep_name}`", "",
             f"Rule: {selection.description}. Scores in points (0-100) with 95% bootstrap intervals over items, "
             "changes vs the original model with PAIRED intervals (`*`: the interval excludes 0), drift in nats/token.",
             "", markdown_table(header, rows), "", f"Selected: **{selection.best or 'no trial qualifies'}**."]
    if selection.best:
        lines.append(describe_lead(selection.lead))
    front = [r.trial_id for r in selection.records if r.pareto]
    lines.append(f"Pareto front (domain score vs retention): {', '.join(front) if front else '-'}.")
    return "\n".join(lines) + "\n"


def write_selected_config(cfg, trial: TrialRecord, path: Path, rule: str) -> Path:
    header = (f"# Selected by the sweep ({rule}): trial {trial.trial_id}, domain score "
              f"{format_number(trial.domain, small='significant')}, "
              f"drift KL {format_number(trial.drift_kl, 4, small='significant')}.\n# Train it again with: python jobs/adapt.py --config {path.name}\n")
    path.write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def plot_pareto(selection: SweepSelection, baseline: RunScores, path: Path, *, max_drop: float, retention_label: str) -> Path:
    fig, ax = new_figure()
    evaluated = [r for r in selection.records if r.retention is not None and r.domain is not None]
    others = [r for r in evaluated if not r.pareto]
    front = sorted((r for r in evaluated if r.pareto), key=lambda r: r.retention)
    for r in evaluated:
        draw_error_bars(ax, r.retention, r.domain, retention_interval(r), r.domain_ci,
                        colour="tab:blue" if r.pareto else "tab:gray")
    if others:
        ax.scatter([r.retention for r in others], [r.domain for r in others], c="tab:gray", s=30, label="trial", zorder=3)
    if front:
        ax.plot([r.retention for r in front], [r.domain for r in front], "-o", c="tab:blue", ms=6, label="Pareto front", zorder=4)
    for r in evaluated:
        ax.annotate(r.trial_id, (r.retention, r.domain), textcoords="offset points", xytext=(5, 4), fontsize=7)
    chosen = next((r for r in evaluated if r.selected), None)
    if chosen is not None:
        ax.scatter([chosen.retention], [chosen.domain], s=160, facecolors="none", edgecolors="tab:green", linewidths=2,
                   label=f"selected ({chosen.trial_id})", zorder=5)
    if baseline.domain is not None:
        draw_error_bars(ax, 0.0, baseline.domain, None, baseline.domain_ci, colour="tab:red")
        ax.scatter([0.0], [baseline.domain], marker="*", s=200, c="tab:red", label="original", zorder=5)
    if baseline.skills:
        ax.axvline(-max_drop, color="tab:red", linestyle="--", linewidth=1, label=f"drop = {max_drop:g} points")
    stopped = len([r for r in selection.records if r.status != "completed"])
    ax.set_xlabel(retention_label)
    ax.set_ylabel(f"domain score: {next((r.domain_metric for r in evaluated if r.domain_metric), 'domain')} (points)")
    return save_figure(fig, ax, path, "Sweep: domain knowledge vs retention"
                       + (f" ({stopped} trial(s) not evaluated)" if stopped else ""))


def retention_interval(record: TrialRecord) -> tuple[float, float] | None:
    """The paired 95% interval of the trial's worst retained-metric change (points), when recorded."""
    if not record.drops:
        return None
    worst = max(record.drops, key=record.drops.get)
    paired = record.drop_cis.get(worst)
    return None if paired is None else (-paired["ci"][1], -paired["ci"][0])


def write_outputs(sweep_dir: Path, selection: SweepSelection, baseline: RunScores, keys: Sequence[str],
                  sweep_name: str, max_drop: float, selected_cfg=None, extra: dict | None = None) -> dict:
    """Write every output file; returns their paths."""
    skills = list(baseline.skills)
    rows = table_rows(selection.records, keys, skills)
    paths = {"csv": write_csv(sweep_dir / "trials.csv", rows, list(rows[0]) if rows else ["trial_id"]), "markdown": sweep_dir / "trials.md"}
    paths["markdown"].write_text(format_markdown(selection, baseline, keys, skills, sweep_name))
    label = ("worst retained-metric change vs original (points)" if skills else "retention: -drift KL (nats/token)")
    paths["plot"] = plot_pareto(selection, baseline, sweep_dir / "pareto.png", max_drop=max_drop, retention_label=label)
    selected_path = sweep_dir / "selected.yaml"
    if selected_cfg is not None:
        chosen = next(r for r in selection.records if r.selected)
        paths["selected"] = write_selected_config(selected_cfg, chosen, selected_path, selection.description)
    elif selected_path.exists():
        selected_path.unlink()  # a previous selection no longer holds
    summary = {"selected": selection.best, "rule": selection.description, "baseline": {
        "domain": baseline.domain, "domain_metric": baseline.domain_metric, "skills": dict(baseline.skills)},
        "pareto": [r.trial_id for r in selection.records if r.pareto], "lead": selection.lead, "trials": rows,
        **(extra or {})}
    paths["summary"] = sweep_dir / "sweep.json"
    paths["summary"].write_text(json.dumps(summary, indent=2, default=str))
    return paths
