"""Ray Tune sweeps over DiSC settings (split strategy and points, KL temperature, learning rate, objective,
steps), choosing by the knowledge/retention trade-off.

Modules, one concept each:

* :mod:`.sweep_config`: the sweep file's sections (sweep, base, resources, drift, selection, scheduler);
* :mod:`.space`: the sweep file parsed: search-space validation against the config layer -> ``ray.tune`` domains;
* :mod:`.trial`: the Tune function trainable (builds and fits a ``TorchTrainer``, drift during training,
  evaluation of the exported model against the original);
* :mod:`.searchers`: the Optuna searcher adapter and the drift-budget stopper;
* :mod:`.selection`: the paper's rule, the weighted score and the Pareto front (pure functions);
* :mod:`.outputs`: ``trials.csv``, ``trials.md``, ``selected.yaml``, ``pareto.png``;
* :mod:`.driver`: the sweep driver and its command line (``tune/sweep.py``, ``disc-ray sweep``).

    from disc_ray.tuning import load_sweep, run_sweep
    outcome = run_sweep(load_sweep("tune/spaces/lr_by_method.yaml"))
    outcome["selected"], outcome["paths"]["markdown"]

Names are imported lazily so ``import disc_ray.tuning`` (and ``disc-ray --help``) does not import Ray.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Sweep": "space", "load_sweep": "space", "parse_sweep": "space", "Dimension": "space", "SelectionConfig": "sweep_config",
    "run_trial": "trial", "TrialContext": "trial", "DriftReportCallback": "trial", "DriftMeter": "trial",
    "read_trial_log": "trial",
    "FinalScoreOptunaSearch": "searchers", "DriftBudgetStopper": "searchers", "DriftASHAScheduler": "searchers",
    "TrialRecord": "selection", "select_trials": "selection", "judge_trial": "selection", "pareto_front": "selection",
    "write_outputs": "outputs",
    "run_sweep": "driver", "main": "driver", "plan_concurrency": "driver", "trial_demand": "driver",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'disc_ray.tuning' has no attribute {name!r}")
    return getattr(importlib.import_module(f"disc_ray.tuning.{_EXPORTS[name]}"), name)


def add_cli(subparsers) -> None:
    from disc_ray.tuning.driver import add_cli as add

    add(subparsers)
