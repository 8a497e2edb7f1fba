"""The sections of a sweep file (:mod:`disc_ray.tuning.space` parses the file): each a frozen dataclass whose
field docstrings are the reference, validated in ``__post_init__`` (ValueError naming the key; the config
loader turns it into a ConfigError).

    sweep:      SweepConfig          where the sweep lives, which cluster runs it
    base:       SweepBaseConfig      the AdaptConfig every trial starts from
    resources:  ResourceConfig       what each trial's own process reserves
    drift:      DriftConfig          drift from the original during training
    selection:  SelectionConfig      the rule that picks the configuration
    scheduler:  SchedulerSpec        early stopping on drift (AshaConfig, DriftBudgetConfig)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from disc_ray.evaluation.config import EvalConfig

SEARCHERS = ("grid", "random", "optuna")
RULES = ("paper", "weighted")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Where the sweep lives and which cluster runs it."""

    name: str = "disc-sweep"
    """Sweep name: its folder is ``<storage_path>/<name>``; running again with the same name resumes it."""
    storage_path: str = "~/disc-ray-sweeps"
    """A local folder, or a filesystem every node mounts (NFS) on a multi-node cluster."""
    ray_address: str | None = None
    """Cluster to connect to; default: $RAY_ADDRESS (set by ``ray job submit``) or a new local cluster."""
    num_cpus: int | None = None
    """Logical CPUs of a local cluster started by the sweep (default: the machine's cores, at least one trial's need)."""
    max_failures: int = 0
    """Times Tune restarts a failed trial (its Train run resumes from its last checkpoint)."""
    keep_checkpoints: bool = False
    """Keep a finished trial's training checkpoints (weights + optimizer state, ~16 bytes per parameter each).
    By default they are deleted once the trial's model is exported; the export stays. (SmolLM2-135M: 1.7 GB
    per checkpoint; the full reproduction filled a 35 GB disk with them.)"""

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"sweep.name must be a non-empty name without '/', got {self.name!r}")
        if "://" in self.storage_path:
            raise ValueError("sweep.storage_path must be a local or mounted shared folder (cloud URIs are not supported yet)")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"sweep.num_cpus must be >= 1, got {self.num_cpus}")
        if self.max_failures < 0:
            raise ValueError(f"sweep.max_failures must be >= 0, got {self.max_failures}")

    def sweep_dir(self) -> Path:
        return Path(self.storage_path).expanduser().resolve() / self.name


@dataclasses.dataclass(frozen=True)
class SweepBaseConfig:
    """The AdaptConfig every trial starts from."""

    config: str | None = None
    """An AdaptConfig YAML (relative to the working directory, else to the sweep file); None: the defaults."""
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Dotted keys (``train.max_steps: 64``) or nested sections applied on top of ``config``."""


@dataclasses.dataclass(frozen=True)
class ResourceConfig:
    """Resources of a trial's own process, which builds the data, drives Ray Train and runs the evaluation.
    The trial's Ray Train workers and Ray Data tasks come on top (``workers.*``, ``data.concurrency``)."""

    trial_cpus: float = 1.0
    trial_gpus: float = 0.0
    """Give the evaluation a GPU on GPU clusters (the ``vllm`` backend needs one)."""

    def __post_init__(self):
        if self.trial_cpus < 0 or self.trial_gpus < 0:
            raise ValueError("resources.trial_cpus and resources.trial_gpus must be >= 0")


@dataclasses.dataclass(frozen=True)
class DriftConfig:
    """Drift from the original model measured DURING training, on every checkpoint Ray Train reports."""

    every_n_steps: int | None = None
    """Checkpoint (and measure drift) every N steps; None: the base config's ``run.checkpoint_every_n_steps``.
    The final export is always measured."""
    num_prompts: int | None = None
    """Use the first N of the evaluation's drift references (None: all); fewer is faster."""
    enabled: bool = True

    def __post_init__(self):
        if self.every_n_steps is not None and self.every_n_steps < 1:
            raise ValueError(f"drift.every_n_steps must be >= 1, got {self.every_n_steps}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ValueError(f"drift.num_prompts must be >= 1, got {self.num_prompts}")


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """How the sweep picks its configuration (see :mod:`disc_ray.tuning.selection`)."""

    rule: str = "paper"
    """``paper``: best domain score among trials that lose at most ``max_drop`` points on EACH retained metric
    (and stay within ``max_drift_kl`` when set); ``weighted``: the best ``weights``-weighted sum."""
    max_drop: float = 5.0
    domain_metric: tuple[str, ...] = EvalConfig().domain_metrics
    """The domain score: the first of these present in a trial's evaluation (``suite.metric``)."""
    retained_metrics: tuple[str, ...] = EvalConfig().skill_metrics
    """Retained skills (points) checked against the original (``lm_eval:*`` suites' scores are added)."""
    max_drift_kl: float | None = None
    """``paper`` rule only: trials whose final drift KL (nats/token) exceeds this are not eligible."""
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    """``weighted`` rule: ``domain`` and retained metrics weigh their CHANGE vs the original (points),
    ``drift_kl`` / ``drift_nll`` their value (nats/token), e.g. ``{domain: 1, ifeval.inst_strict: 1, drift_kl: -10}``."""
    penalty_per_point: float = 10.0
    """``paper`` rule: the score a model-based searcher maximizes is the domain score minus this much per point
    beyond ``max_drop`` (and per 0.01 nats beyond ``max_drift_kl``); eligible trials score their domain score."""

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"selection.rule must be one of {list(RULES)}, got {self.rule!r}")
        if self.max_drop < 0:
            raise ValueError(f"selection.max_drop must be >= 0, got {self.max_drop}")
        if not self.domain_metric:
            raise ValueError("selection.domain_metric must name at least one metric")
        if self.max_drift_kl is not None and self.max_drift_kl < 0:
            raise ValueError(f"selection.max_drift_kl must be >= 0, got {self.max_drift_kl}")
        if self.rule == "weighted":
            if not self.weights:
                raise ValueError("selection.weights: the weighted rule needs at least one weight")
            allowed = {"domain", "drift_kl", "drift_nll", *self.retained_metrics}
            for name in self.weights:
                if name not in allowed:
                    raise ValueError(f"selection.weights.{name}: unknown metric; use one of {sorted(allowed)}")


@dataclasses.dataclass(frozen=True)
class AshaConfig:
    """ASHA (async successive halving) on a drift metric: at each rung (``grace_period`` x ``reduction_factor``^k
    training steps) the trials with the worst drift are stopped."""

    metric: str = "drift_kl"
    mode: str = "min"
    grace_period: int = 1
    """Training steps before a trial can be stopped."""
    reduction_factor: float = 2.0
    max_t: int | None = None
    """Longest trial in training steps (default: the base config's ``train.max_steps``, else 100000)."""

    def __post_init__(self):
        if self.metric not in ("drift_kl", "drift_nll"):
            raise ValueError(f"scheduler.asha.metric must be drift_kl or drift_nll, got {self.metric!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"scheduler.asha.mode must be min or max, got {self.mode!r}")
        if self.grace_period < 1 or self.reduction_factor <= 1:
            raise ValueError("scheduler.asha.grace_period must be >= 1 and scheduler.asha.reduction_factor > 1")


@dataclasses.dataclass(frozen=True)
class DriftBudgetConfig:
    """Stop a trial as soon as a drift measurement exceeds ``max`` (an absolute budget, unlike ASHA's ranking)."""

    max: float
    metric: str = "drift_kl"
    after_step: int = 0
    """Ignore measurements at or before this training step."""

    def __post_init__(self):
        if self.metric not in ("drift_kl", "drift_nll"):
            raise ValueError(f"scheduler.drift_budget.metric must be drift_kl or drift_nll, got {self.metric!r}")
        if self.max < 0 or self.after_step < 0:
            raise ValueError("scheduler.drift_budget.max and scheduler.drift_budget.after_step must be >= 0")


@dataclasses.dataclass(frozen=True)
class SchedulerSpec:
    asha: AshaConfig | None = None
    drift_budget: DriftBudgetConfig | None = None


@dataclasses.dataclass(frozen=True)
class _SweepFile:
    """The sweep file's top level, before ``space`` and ``evaluation`` are parsed."""

    space: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The search space: ``{config key: {grid | choice | uniform | loguniform | randint: ...}}`` (file only)."""
    searcher: str = "grid"
    """``grid`` (every grid combination), ``random`` or ``optuna`` (sampled domains: choice, uniform, ...)."""
    num_samples: int = 1
    """grid: repeats of the whole grid; random / optuna: trials sampled."""
    max_concurrent_trials: str = "auto"
    """``auto``: as many trials as the cluster's resources hold at once; or a number."""
    seed: int = 0
    """Seeds the random and Optuna searchers."""
    evaluation: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Any EvalConfig key (``--evaluation.limit 100``; the list: ``jobs/evaluate.py --help``)."""
    scheduler: SchedulerSpec | None = None
    """Early stopping on drift: ``{asha: {metric, mode, grace_period, reduction_factor, max_t}}`` and / or
    ``{drift_budget: {max, metric, after_step}}`` (see AshaConfig, DriftBudgetConfig)."""
    sweep: SweepConfig = dataclasses.field(default_factory=SweepConfig)
    base: SweepBaseConfig = dataclasses.field(default_factory=SweepBaseConfig)
    resources: ResourceConfig = dataclasses.field(default_factory=ResourceConfig)
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)
    selection: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)

    def __post_init__(self):
        if self.searcher not in SEARCHERS:
            raise ValueError(f"searcher must be one of {list(SEARCHERS)}, got {self.searcher!r}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_concurrent_trials != "auto":
            try:
                value = int(self.max_concurrent_trials)
            except ValueError:
                value = 0
            if value < 1 or str(value) != str(self.max_concurrent_trials).strip():
                raise ValueError(f"max_concurrent_trials must be 'auto' or an integer >= 1, got {self.max_concurrent_trials!r}")
