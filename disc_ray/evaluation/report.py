"""``disc-ray report RUN_DIR...``: one table and one plot across runs, to see the trade-off at a glance.

Each RUN_DIR holds an ``eval.json`` (written by ``jobs/evaluate.py``; a run's model folder with an
``eval/`` subfolder works too). The baseline is taken from the runs' ``baseline`` block. Writes
``report.md`` (domain score, each retained skill and its drop, drift, eligibility, the selected run)
and ``tradeoff.png`` (domain score vs retained skill, one point per run, the baseline marked, the
``max_drop`` threshold drawn). Every score carries its 95% bootstrap interval, every change vs the
baseline a PAIRED interval (the same items resampled jointly), and the selection says whether the
selected run's lead over the runner-up is outside its paired interval (:mod:`disc_ray.evaluation.stats`);
the plot draws the intervals as error bars.

    disc-ray report runs/lr1e-5/eval runs/lr3e-5/eval --out report/ [--max-drop 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from disc_ray.evaluation.config import EvalConfig, EvalInputError
from disc_ray.evaluation.selection import RunScores, Selection, describe_lead, run_scores, select_best
from disc_ray.evaluation.stats import BootstrapConfig, compare
from disc_ray.reporting import draw_error_bars, format_ci, format_number, markdown_table, new_figure, save_figure


def find_eval_json(run_dir: str | Path) -> Path:
    path = Path(run_dir).expanduser()
    for candidate in (path, path / "eval.json", path / "eval" / "eval.json"):
        if candidate.is_file():
            return candidate
    raise EvalInputError(f"no eval.json in {path} (run jobs/evaluate.py on it first)")


def load_runs(run_dirs: Sequence[str | Path]) -> list[dict]:
    records = []
    for run_dir in run_dirs:
        path = find_eval_json(run_dir)
        try:
            record = json.loads(path.read_text())
        except ValueError as err:
            raise EvalInputError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(record, dict) or not isinstance(record.get("suites"), dict):
            raise EvalInputError(f"{path} is not an eval.json (no 'suites')")
        record.setdefault("name", Path(record.get("model", path.parent.name)).name)
        records.append(record)
    names = [r["name"] for r in records]
    for i, record in enumerate(records):  # two runs with the same folder name: make the names unique
        if names.count(record["name"]) > 1:
            record["name"] = f"{record['name']}#{i + 1}"
    return records


def build_report(records: list[dict], *, max_drop: float | None = None, domain_metrics=None, skill_metrics=None) -> dict:
    """Scores of every run and the baseline, and the selection. Settings default to the first run's config."""
    config = records[0].get("config", {})
    defaults = EvalConfig()
    max_drop = max_drop if max_drop is not None else config.get("max_drop", defaults.max_drop)
    domain_metrics = tuple(domain_metrics or config.get("domain_metrics") or defaults.domain_metrics)
    skill_metrics = tuple(skill_metrics or config.get("skill_metrics") or defaults.skill_metrics)
    baselines = [r["baseline"] for r in records if r.get("baseline")]
    baseline = None
    if baselines:
        models = {b.get("model") for b in baselines}
        if len(models) > 1:
            print(f"[report] warning: runs have different baselines {sorted(map(str, models))}; using the first",
                  file=sys.stderr)
        baseline = run_scores(f"baseline ({Path(str(baselines[0].get('model'))).name})", baselines[0]["suites"],
                              domain_metrics, skill_metrics)
    settings = BootstrapConfig.from_dict(records[0].get("bootstrap"))
    runs = [run_scores(r["name"], r["suites"], domain_metrics, skill_metrics) for r in records]
    selection = select_best(runs, baseline, max_drop, settings) if baseline else None
    drift = {r["name"]: r["suites"].get("drift", {}) for r in records}
    domain_change = {}
    if baseline is not None and baseline.domain_items is not None:
        domain_change = {run.name: compare(run.domain_items, baseline.domain_items, settings) for run in runs
                         if run.domain_items is not None}
    return dict(runs=runs, baseline=baseline, selection=selection, max_drop=max_drop, drift=drift, bootstrap=settings,
                domain_change=domain_change,
                skill_names=list(baseline.skills) if baseline else sorted({s for run in runs for s in run.skills}))


def format_report_markdown(report: dict) -> str:
    """The runs' table: scores with 95% intervals, changes vs the baseline with paired intervals (``*``: the
    interval excludes 0), drift, eligibility; then the selection and whether its lead is outside the interval."""
    runs: list[RunScores] = report["runs"]
    baseline: RunScores | None = report["baseline"]
    selection: Selection | None = report["selection"]
    skills = report["skill_names"]
    domain_metric = next((r.domain_metric for r in runs if r.domain_metric), "domain")
    header = ["run", f"domain ({domain_metric}) [95% CI]"] + (["domain change [paired CI]"] if report["domain_change"] else [])
    header += [f"{s} (change [paired CI])" for s in skills] + ["drift KL", "drift NLL"]
    if selection:
        header += ["eligible", "note"]
    rows = []

    def change_cell(comparison: dict | None, sign: float = 1.0) -> str:
        if comparison is None:
            return ""
        ci = sorted(sign * x + 0.0 for x in comparison["ci"])  # + 0.0: no "-0.00"
        return format_ci(sign * comparison["delta"] + 0.0, ci, signed=True) + (" *" if comparison["outside"] else "")

    if baseline:
        row = [f"*{baseline.name}*", format_ci(baseline.domain, baseline.domain_ci)] + (["0"] if report["domain_change"] else [])
        row += [format_ci(baseline.skills.get(s), baseline.skill_cis.get(s)) for s in skills]
        rows.append(row + ["0", "-"] + (["(baseline)", ""] if selection else []))
    for run in runs:
        drift = report["drift"].get(run.name, {})
        cells = [f"**{run.name}** (selected)" if selection and selection.best == run.name else run.name,
                 format_ci(run.domain, run.domain_ci)]
        if report["domain_change"]:
            cells.append(change_cell(report["domain_change"].get(run.name)) or "-")
        for skill in skills:
            verdict = selection.verdict(run.name) if selection else None
            drop = verdict.drops.get(skill) if verdict else None
            paired = change_cell(verdict.drop_cis.get(skill), sign=-1.0) if verdict else ""
            change = paired or (f"{-drop:+.2f}" if drop is not None else "")
            cells.append(format_ci(run.skills.get(skill), run.skill_cis.get(skill)) + (f" ({change})" if change else ""))
        cells += [format_number(drift.get("kl"), 4), format_number(drift.get("nll"), 4)]
        if selection:
            verdict = selection.verdict(run.name)
            cells += ["yes" if verdict.eligible else "no", verdict.reason]
        rows.append(cells)
    boot = report["bootstrap"]
    lines = [markdown_table(header, rows), "",
             f"Intervals: {100 * boot.confidence:g}% bootstrap over items ({boot.n_resamples} resamples, seed {boot.seed}); "
             "changes are paired (the same items of both runs resampled jointly); `*`: the interval excludes 0."]
    if selection:
        lines += ["", f"Selection rule: best domain score with at most {report['max_drop']:g} points drop on each retained skill "
                  f"-> **{selection.best or 'no run qualifies'}**."]
        if selection.best:
            lines.append(describe_lead(selection.lead, "nats/byte" if domain_metric.endswith("margin") else "points"))
    return "\n".join(lines) + "\n"


def plot_tradeoff(report: dict, path: str | Path) -> Path:
    """Domain score (y) vs retained skill (x). One skill: its score, threshold at baseline - D. Several
    skills: the worst change vs the baseline (points), threshold at -D."""
    runs, baseline, selection = report["runs"], report["baseline"], report["selection"]
    skills, max_drop = report["skill_names"], report["max_drop"]
    single = len(skills) == 1 or baseline is None

    def x_of(scores: RunScores) -> float | None:
        if single:
            return scores.skills.get(skills[0]) if skills else None
        changes = [scores.skills[s] - baseline.skills[s] for s in skills if s in scores.skills]
        return min(changes) if len(changes) == len(skills) else None

    def x_interval(scores: RunScores) -> tuple[float, float] | None:
        """Single skill: the score's interval; several: the paired interval of the worst change."""
        if single:
            return scores.skill_cis.get(skills[0]) if skills else None
        if selection is None or scores is baseline:
            return None
        verdict = selection.verdict(scores.name)
        worst = max(verdict.drops, key=verdict.drops.get, default=None)
        paired = verdict.drop_cis.get(worst) if worst else None
        return None if paired is None else (-paired["ci"][1], -paired["ci"][0])

    fig, ax = new_figure()
    for run in runs:
        x, y = x_of(run), run.domain
        if x is None or y is None:
            continue
        chosen = selection is not None and selection.best == run.name
        draw_error_bars(ax, x, y, x_interval(run), run.domain_ci, colour="tab:green" if chosen else "tab:blue")
        ax.scatter([x], [y], s=60 if chosen else 36, c="tab:green" if chosen else "tab:blue", zorder=3,
                   edgecolors="black" if chosen else "none")
        ax.annotate(run.name + (" (selected)" if chosen else ""), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    baseline_drawn = baseline is not None and x_of(baseline) is not None and baseline.domain is not None
    if baseline_drawn:
        bx = x_of(baseline)
        draw_error_bars(ax, bx, baseline.domain, x_interval(baseline), baseline.domain_ci, colour="tab:red")
        ax.scatter([bx], [baseline.domain], marker="*", s=220, c="tab:red", zorder=4, label=baseline.name)
        ax.axvline(bx - max_drop, color="tab:red", linestyle="--", linewidth=1, label=f"skill drop = {max_drop:g} points")
    skill_label = skills[0] if single and skills else "worst retained-skill change vs baseline"
    ax.set_xlabel(f"{skill_label} (points)")
    domain_metric = next((r.domain_metric for r in runs if r.domain_metric), "domain score")
    ax.set_ylabel(f"{domain_metric} (points)")
    return save_figure(fig, ax, path, "Domain knowledge vs retained skill (error bars: 95% intervals)",
                       legend=baseline_drawn)


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, *, max_drop: float | None = None) -> dict:
    """Write ``report.md`` and ``tradeoff.png`` into ``out_dir``; return paths and the selected run."""
    report = build_report(load_runs(run_dirs), max_drop=max_drop)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = format_report_markdown(report)
    (out_dir / "report.md").write_text(markdown)
    plot = plot_tradeoff(report, out_dir / "tradeoff.png")
    selection = report["selection"]
    return dict(markdown=markdown, table=out_dir / "report.md", plot=plot, best=selection.best if selection else None)


def run(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        result = write_report(args.run_dirs, args.out, max_drop=args.max_drop)
    except EvalInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result["markdown"])
    print(f"[report] wrote {result['table']} and {result['plot']}", file=sys.stderr)
    return 0


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("report", help="table + trade-off plot across evaluated runs")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="folders holding eval.json (or eval.json files)")
    parser.add_argument("--out", default="report", help="output folder (default ./report)")
    parser.add_argument("--max-drop", type=float, help="selection rule's D in points (default: the runs' config, 5)")
    parser.set_defaults(run=run)
