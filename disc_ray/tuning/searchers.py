"""Small adapters between the sweep's reports and Ray Tune's searchers and stoppers.

A trial reports many results (every training report, with drift at checkpoints) and its score only at
the end. :class:`FinalScoreOptunaSearch` lets Optuna learn from the final score alone;
:class:`DriftBudgetStopper` stops a trial as soon as a drift measurement passes the budget.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper


class FinalScoreOptunaSearch(OptunaSearch):
    """Ray Tune's Optuna searcher, fed only the results that carry its metric (the trial's final report)."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get(self.metric) is not None:
            super().on_trial_result(trial_id, result)


class DriftASHAScheduler(ASHAScheduler):
    """ASHA on drift during training only. A trial that reached ``max_t`` has finished training: stopping it
    then would throw away its evaluation (Tune's ASHA stops trials at ``max_t``), and the final evaluated
    report is a score, not a rung."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("evaluated") or result.get(self._time_attr, 0) >= self._max_t:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class DriftBudgetStopper(Stopper):
    """Stop a trial whose drift (``drift_kl`` or ``drift_nll``, nats/token) measured during training exceeds ``max_value``."""

    def __init__(self, metric: str, max_value: float, after_step: int = 0):
        self.metric, self.max_value, self.after_step = metric, max_value, after_step

    def __call__(self, trial_id: str, result: dict) -> bool:
        value = result.get(self.metric)
        if result.get("evaluated") or not isinstance(value, (int, float)):
            return False
        return result.get("step", 0) > self.after_step and value > self.max_value

    def stop_all(self) -> bool:
        return False
