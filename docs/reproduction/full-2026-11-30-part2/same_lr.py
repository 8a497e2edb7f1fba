"""DiSC vs ft / ft_kl at the same learning rate (1e-4, both seeds averaged per item), paired 95% bootstrap on the
same questions / prompts, from the runs' eval.json files. Run from the repository root after (a part of)
`python jobs/reproduce.py --preset full`:  .venv/bin/python docs/reproduction/full-2026-11-30-part2/same_lr.py"""
import json
from pathlib import Path

from disc_ray.evaluation.stats import compare, mean_over_runs, suite_items

EXPERIMENT = Path.home() / "disc-ray-reproduce" / "reproduce-full"
runs: dict[tuple, list] = {}
for trial in sorted(p for p in EXPERIMENT.glob("trial_*") if p.is_dir()):
    params = json.loads((trial / "params.json").read_text())
    path = EXPERIMENT / "runs" / trial.name / "model" / "eval" / "eval.json"
    if path.exists():
        runs.setdefault((params["objective.name"], params["train.lr"]), []).append(json.loads(path.read_text())["suites"])

for metric in ("domain_mcq.prob_correct", "ifeval.inst_strict", "ifeval.inst_loose"):
    for other in ("ft", "ft_kl"):
        a, b = ([suite_items(s, metric) for s in runs[(m, 1e-4)]] for m in ("disc", other))
        c = compare(mean_over_runs(a), mean_over_runs(b))
        print(f"disc - {other} at lr 1e-4 ({len(a)}+{len(b)} seeds), {metric}: "
              f"{c['delta']:+.2f} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] on {c['n']} items")
