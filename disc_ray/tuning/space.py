"""The sweep file: a base AdaptConfig, a search space over its keys, and how trials are judged.

Everything is validated here, on the driver, before Ray starts: an unknown key, a domain Tune does not
have, a value the config layer rejects (``train.lr: -1``) or a searcher that cannot read the space
raises :class:`~disc_ray.config.ConfigError` naming the key. The sections' fields and their checks are in
:mod:`disc_ray.tuning.sweep_config`; here: the search space and the parsed :class:`Sweep`.

    sweep = load_sweep("tune/spaces/lr_by_method.yaml", ["--sweep.storage_path=/tmp/sweeps"])
    sweep.param_space()          # {"objective.name": tune.grid_search([...]), "train.lr": tune.grid_search([...])}
    sweep.trial_config({"train.lr": 3e-5}, "a1b2c_00003")   # the AdaptConfig that trial trains

A sweep file (all sections but ``space`` optional)::

    sweep:      {name, storage_path, ray_address, num_cpus, max_failures, keep_checkpoints}
    base:       {config: configs/cpu.yaml, overrides: {train.max_steps: 64, ...}}
    space:      {train.lr: {grid: [...]}, objective.temperature: {choice: [1, 2]}, train.lr: {loguniform: [1e-6, 1e-4]}}
    searcher:   grid | random | optuna
    num_samples, max_concurrent_trials (auto | N), seed
    resources:  {trial_cpus, trial_gpus}            what each trial's own process (evaluation) reserves
    drift:      {every_n_steps, num_prompts}         drift from the original during training
    evaluation: {suites, limit, mcq_path, ...}       any EvalConfig field
    selection:  {rule: paper | weighted, max_drop, domain_metric, retained_metrics, max_drift_kl, weights}
    scheduler:  {asha: {...}, drift_budget: {...}}   early stopping on drift
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
from pathlib import Path
from typing import Any

from disc_ray.config import (
    AdaptConfig,
    ConfigError,
    apply_dotted,
    build_dataclass,
    field_type,
    parse_overrides,
    read_yaml_mapping,
    to_dict,
)
from disc_ray.evaluation.config import EvalConfig
from disc_ray.tuning.sweep_config import (
    SEARCHERS,
    DriftConfig,
    ResourceConfig,
    SchedulerSpec,
    SelectionConfig,
    SweepBaseConfig,
    SweepConfig,
    _SweepFile,
)

DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
"""``grid``: every value (Tune's grid_search); ``choice``: one sampled value; ``uniform`` / ``loguniform``:
``[low, high]`` floats; ``randint``: ``[low, high)`` integers."""
FIXED_SECTIONS = {
    "model": "every trial is compared with one original model",
    "run": "the sweep names and places each trial's run",
    "workers": "trial resources are planned from base.overrides",
}
MAX_GRID_CHECKED = 1024
"""Grids up to this many combinations are validated combination by combination."""


# --------------------------------------------------------------------------- the search space


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One swept AdaptConfig key and its domain; values already converted to the key's type."""

    key: str
    kind: str
    values: tuple

    def to_tune(self):
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return getattr(tune, self.kind)(*self.values)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A validated sweep file."""

    path: str | None
    raw: dict
    """The sweep file as read (plus CLI overrides), stored in the sweep folder to check resumes against."""
    settings: SweepConfig
    base_values: dict
    """The base config as a nested dict (paths made absolute: trials run in their own working directory)."""
    base: AdaptConfig
    dimensions: tuple[Dimension, ...]
    searcher: str
    num_samples: int
    max_concurrent_trials: int | None
    """None: auto (planned from the cluster's resources)."""
    seed: int
    resources: ResourceConfig
    drift: DriftConfig
    evaluation: EvalConfig
    evaluation_values: dict
    selection: SelectionConfig
    scheduler: SchedulerSpec

    @property
    def sweep_dir(self) -> Path:
        return self.settings.sweep_dir()

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def param_space(self) -> dict:
        return {d.key: d.to_tune() for d in self.dimensions}

    def trial_config(self, sampled: dict, trial_id: str) -> AdaptConfig:
        """Base config + the trial's sampled values; the run lives under ``<sweep>/runs/trial_<id>``."""
        values = apply_dotted(self.base_values, {k: sampled[k] for k in self.keys if k in sampled})
        run = dict(values.get("run", {}), name=f"trial_{trial_id}", storage_path=str(self.sweep_dir / "runs"),
                   output_dir=None, ray_address=None)
        if self.drift.enabled and self.drift.every_n_steps:
            run["checkpoint_every_n_steps"] = self.drift.every_n_steps
        values["run"] = run
        return build_dataclass(AdaptConfig, values)


# --------------------------------------------------------------------------- parsing


def _resolve_file(path: str, sweep_path: str | None) -> Path:
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists() or sweep_path is None:
        return candidate.resolve()
    beside = Path(sweep_path).resolve().parent / candidate
    return beside.resolve() if beside.exists() else candidate.resolve()


def _absolute_paths(values: dict, sweep_path: str | None) -> dict:
    """data.path / data.rejects_path / model paths that exist locally become absolute (trials chdir)."""
    values = json.loads(json.dumps(values))
    for section, key in (("data", "path"), ("data", "rejects_path"), ("model", "name_or_path"), ("model", "cache_dir")):
        value = values.get(section, {}).get(key) if isinstance(values.get(section), dict) else None
        if isinstance(value, str) and not any(ch in value for ch in "*?[") and "://" not in value:
            resolved = _resolve_file(value, sweep_path)
            if resolved.exists() or key in ("rejects_path", "cache_dir"):
                values[section][key] = str(resolved)
    if isinstance(values.get("model"), str):  # `model: path` shorthand
        resolved = _resolve_file(values["model"], sweep_path)
        values["model"] = {"name_or_path": str(resolved) if resolved.exists() else values["model"]}
    return values


def build_base(spec: SweepBaseConfig, sweep_path: str | None) -> tuple[dict, AdaptConfig]:
    values: dict = {}
    if spec.config:
        values = read_yaml_mapping(_resolve_file(spec.config, sweep_path), "base.config file")
    values = _absolute_paths(apply_dotted(values, spec.overrides), sweep_path)
    try:
        cfg = build_dataclass(AdaptConfig, values)
    except ConfigError as err:
        raise ConfigError(f"base: {err}") from None
    for section in FIXED_SECTIONS:  # normalise (shorthands, defaults) so trial configs start from full sections
        values[section] = to_dict(getattr(cfg, section))
    return values, cfg


def _typed_value(base_values: dict, key: str, value: Any) -> Any:
    """``value`` for ``key`` as the config layer reads it (``"1e-5"`` -> 1e-05), or a ConfigError naming the key."""
    try:
        cfg = build_dataclass(AdaptConfig, apply_dotted(base_values, {key: value}))
    except ConfigError as err:
        message = str(err)
        raise ConfigError(f"space: {message}" if message.startswith(key) else f"space: '{key}': {message}") from None
    section, *rest = key.split(".")
    result = getattr(cfg, section)
    for part in rest:
        result = getattr(result, part)
    return list(result) if isinstance(result, tuple) else result


def parse_dimension(key: str, entry: Any, base_values: dict) -> Dimension:
    if not isinstance(key, str) or "." not in key:
        raise ConfigError(f"space: key {key!r} must be a dotted config key such as 'train.lr'")
    section = key.split(".")[0]
    if section in FIXED_SECTIONS:
        raise ConfigError(f"space: '{key}' cannot be swept ({FIXED_SECTIONS[section]}); set it in base.overrides")
    annotation = field_type(AdaptConfig, key, what="space: ")
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ConfigError(f"space: '{key}' must be a mapping with one domain, e.g. {{grid: [...]}}; "
                          f"domains: {', '.join(DOMAIN_KINDS)}; got {entry!r}")
    (kind, spec), = entry.items()
    if kind not in DOMAIN_KINDS:
        close = difflib.get_close_matches(str(kind), DOMAIN_KINDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"space: '{key}': unknown domain '{kind}'{hint}; domains: {', '.join(DOMAIN_KINDS)}")
    if kind in ("grid", "choice"):
        if not isinstance(spec, list) or not spec:
            raise ConfigError(f"space: '{key}': {kind} needs a non-empty list of values, got {spec!r}")
        values = [_typed_value(base_values, key, v) for v in spec]
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"space: '{key}': {kind} lists the same value twice: {spec!r}")
        return Dimension(key, kind, tuple(values))
    numeric = int if kind == "randint" else float
    if annotation is not numeric:
        wanted = "an integer key such as split.num_splits" if kind == "randint" else "a float key such as train.lr"
        raise ConfigError(f"space: '{key}': {kind} needs {wanted}, but '{key}' takes "
                          f"{getattr(annotation, '__name__', annotation)}; use grid or choice")
    if not isinstance(spec, list) or len(spec) != 2:
        raise ConfigError(f"space: '{key}': {kind} needs [low, high], got {spec!r}")
    try:
        low, high = (float(v) if numeric is float else _integer(v) for v in spec)
    except (TypeError, ValueError):
        raise ConfigError(f"space: '{key}': {kind} bounds must be {'integers' if kind == 'randint' else 'numbers'}, got {spec!r}") from None
    if not low < high:
        raise ConfigError(f"space: '{key}': {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"space: '{key}': loguniform needs low > 0, got {low}")
    _typed_value(base_values, key, low)
    _typed_value(base_values, key, high - 1 if kind == "randint" else high)
    return Dimension(key, kind, (low, high))


def _integer(value) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(value)
    return int(float(value))


def _check_searcher(searcher: str, dimensions: list[Dimension], num_samples: int) -> None:
    kinds = {d.key: d.kind for d in dimensions}
    if searcher == "grid":
        sampled = [k for k, kind in kinds.items() if kind != "grid"]
        if sampled:
            raise ConfigError(f"space: '{sampled[0]}' uses {kinds[sampled[0]]}, but searcher 'grid' only enumerates "
                              "grid lists; use searcher: random or optuna, or a grid")
    if searcher == "optuna":
        grids = [k for k, kind in kinds.items() if kind == "grid"]
        if grids:
            raise ConfigError(f"space: '{grids[0]}' uses grid, which searcher 'optuna' cannot enumerate; use choice")
    if searcher != "grid" and num_samples < 1:
        raise ConfigError("num_samples must be >= 1")


def _check_grid_combinations(dimensions: list[Dimension], base_values: dict) -> None:
    """Values valid one by one can clash together; check every grid combination when there are few."""
    grid = [d for d in dimensions if d.kind == "grid"]
    sizes = [len(d.values) for d in grid]
    if not grid or len(grid) < 2 or _product(sizes) > MAX_GRID_CHECKED:
        return
    for combination in itertools.product(*(d.values for d in grid)):
        updates = {d.key: v for d, v in zip(grid, combination)}
        try:
            build_dataclass(AdaptConfig, apply_dotted(base_values, updates))
        except ConfigError as err:
            raise ConfigError(f"space: the combination {updates} is invalid: {err}") from None


def _product(sizes: list[int]) -> int:
    total = 1
    for size in sizes:
        total *= size
    return total


def build_eval_config(values: dict, base: AdaptConfig, sweep_dir: Path, sweep_path: str | None,
                      selection: SelectionConfig) -> tuple[EvalConfig, dict]:
    """``evaluation:`` + the selection metrics -> EvalConfig. Without ``mcq_path`` and without ``data.path``
    the domain suite asks the built-in synthetic corpus's probes (written into the sweep folder)."""
    values = dict(values)
    for key in ("mcq_path", "qa_path", "ifeval_path", "drift_prompts_path", "cache_dir"):
        if isinstance(values.get(key), str):
            values[key] = str(_resolve_file(values[key], sweep_path))
    if values.get("mcq_path") is None and base.data.path is None:
        values["mcq_path"] = str(sweep_dir / "synthetic_corpus" / "probes.jsonl")
    for key in ("max_drop", "domain_metrics", "skill_metrics"):
        if key in values:
            raise ConfigError(f"evaluation.{key}: set it under selection (max_drop, domain_metric, retained_metrics)")
    values.update(max_drop=selection.max_drop, domain_metrics=list(selection.domain_metric),
                  skill_metrics=list(selection.retained_metrics))
    return build_dataclass(EvalConfig, values, "evaluation"), values


def _suite_of(metric: str, suites) -> str | None:
    return next((suite for suite in suites if metric.startswith(suite + ".")), None)


def _check_metrics_have_suites(selection: SelectionConfig, evaluation: EvalConfig) -> None:
    """Every metric the rule reads must come from a suite the trials run."""
    if not any(_suite_of(m, evaluation.suites) for m in selection.domain_metric):
        raise ConfigError(f"selection.domain_metric: none of {list(selection.domain_metric)} comes from the evaluation "
                          f"suites {list(evaluation.suites)}; add the suite (e.g. domain_mcq) to evaluation.suites")
    for metric in selection.retained_metrics:
        if _suite_of(metric, evaluation.suites) is None:
            raise ConfigError(f"selection.retained_metrics: '{metric}' needs its suite in evaluation.suites "
                              f"(now {list(evaluation.suites)})")


def parse_sweep(raw: dict, path: str | None = None) -> Sweep:
    """Validate a sweep file's content (see the module docstring); ConfigError names the bad key."""
    if not isinstance(raw, dict):
        raise ConfigError("a sweep file must hold a mapping at the top level")
    if "space" not in raw or not isinstance(raw.get("space"), dict) or not raw["space"]:
        raise ConfigError("space: the sweep file needs a non-empty 'space' mapping of config keys to domains")
    top = build_dataclass(_SweepFile, raw)
    base_values, base = build_base(top.base, path)
    dimensions = []
    for key, entry in top.space.items():
        dimensions.append(parse_dimension(key, entry, base_values))
    _check_searcher(top.searcher, dimensions, top.num_samples)
    _check_grid_combinations(dimensions, base_values)
    evaluation, evaluation_values = build_eval_config(top.evaluation, base, top.sweep.sweep_dir(), path, top.selection)
    _check_metrics_have_suites(top.selection, evaluation)
    scheduler = top.scheduler or SchedulerSpec()
    if (scheduler.asha or scheduler.drift_budget) and not top.drift.enabled:
        raise ConfigError("scheduler: early stopping on drift needs drift.enabled: true")
    concurrency = None if top.max_concurrent_trials == "auto" else int(top.max_concurrent_trials)
    return Sweep(path=str(Path(path).resolve()) if path else None, raw=raw, settings=top.sweep, base_values=base_values,
                 base=base, dimensions=tuple(dimensions), searcher=top.searcher, num_samples=top.num_samples,
                 max_concurrent_trials=concurrency, seed=top.seed, resources=top.resources, drift=top.drift,
                 evaluation=evaluation, evaluation_values=evaluation_values, selection=top.selection, scheduler=scheduler)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file; ``overrides`` like ``["--sweep.storage_path=/tmp/s", "--num_samples", "4"]``."""
    raw = read_yaml_mapping(Path(path).expanduser(), "sweep file")
    updates = parse_overrides(overrides or [])
    if "space" in updates:
        raise ConfigError("space: edit the sweep file to change the search space (it cannot be overridden)")
    for section, value in updates.items():
        raw[section] = apply_dotted(raw.get(section) or {}, value) if isinstance(value, dict) else value
    return parse_sweep(raw, str(path))
