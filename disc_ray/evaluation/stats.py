"""Uncertainty of every score and every comparison: seeded bootstrap intervals over items.

One module, used by ``eval.json`` / ``eval.md``, ``disc-ray report``, the sweep tables, the selection rule
and the reproduction. The resampling is :func:`scipy.stats.bootstrap` (percentile method); nothing here
re-implements it.

**Per-item values.** A suite keeps, beside its scores, ``metrics["per_item"]``::

    {"ids": [item id, ...],                               # what pairs two runs' items
     "values": {metric: [one number per item, ...]},      # e.g. 100 * correct (points), 100 * p_correct
     "weights": {metric: [one number per item, ...]},     # only for ratio metrics (IFEval instruction level)
     "groups": {"by_kind": [kind per item, ...]}}         # sub-scores: metrics["by_kind"][kind][metric]

and every score is ``statistic(values, weights) = sum(values) / sum(weights)`` (the mean when there are no
weights). A ratio metric such as IFEval's instruction-level accuracy (instructions followed / instructions,
prompts resampled whole: a cluster bootstrap) therefore uses the same code as a plain mean.

**Intervals.** ``bootstrap_interval``: the 95% percentile interval of the statistic over ``n_resamples``
resamples of the items with replacement (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13).
``paired_delta_interval``: the interval of ``statistic(a) - statistic(b)`` when both runs answered the same
items, resampling the items JOINTLY (``scipy.stats.bootstrap(..., paired=True)``): item difficulty cancels,
which makes it much narrower than an unpaired interval (``unpaired_delta_interval``, each run resampled
on its own) when the runs are correlated, as two fine-tunes of one model are. A delta whose interval
excludes 0 is a difference the items support at that confidence; one whose interval straddles 0 is not.
The generator is ``numpy.random.default_rng(seed)``, the seed recorded in ``eval.json["bootstrap"]``.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class BootstrapConfig:
    """How intervals are computed; written to ``eval.json["bootstrap"]`` so they can be recomputed."""

    confidence: float = 0.95
    n_resamples: int = 2000
    seed: int = 0
    method: str = "percentile"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping | None) -> "BootstrapConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (raw or {}).items() if k in fields})


DEFAULT_BOOTSTRAP = BootstrapConfig()
MIN_ITEMS_FOR_CLAIM = 10
"""Below this many shared items a paired interval is still reported but never flagged ``outside``: the
percentile bootstrap under-covers on tiny samples (a 2-item interval can have zero width)."""


@dataclasses.dataclass(frozen=True, eq=False)
class ItemValues:
    """One metric's per-item values (and weights, for ratio metrics) with the ids that pair runs."""

    ids: tuple
    values: np.ndarray
    weights: np.ndarray | None = None

    @property
    def score(self) -> float:
        return float(ratio(self.values, self.weights))

    def __len__(self) -> int:
        return len(self.ids)


def ratio(values, weights=None, axis: int = -1):
    """``sum(values) / sum(weights)`` along ``axis`` (the mean without weights); vectorized for scipy."""
    values = np.asarray(values, dtype=float)
    if weights is None:
        return values.mean(axis=axis)
    return values.sum(axis=axis) / np.asarray(weights, dtype=float).sum(axis=axis)


def _interval(data: tuple, statistic, settings: BootstrapConfig, paired: bool) -> tuple[float, float]:
    from scipy.stats import bootstrap

    n = len(data[0])
    point = float(statistic(*data, axis=-1))
    if n < 2 or all(np.ptp(np.asarray(d, dtype=float)) == 0 for d in data):
        return point, point  # nothing to resample: every resample gives the point estimate
    result = bootstrap(data, statistic, n_resamples=settings.n_resamples, vectorized=True, paired=paired, axis=-1,
                       confidence_level=settings.confidence, method=settings.method,
                       rng=np.random.default_rng(settings.seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return min(low, point), max(high, point)  # percentile bounds can miss the point by float noise on tiny n


def bootstrap_interval(values: Sequence[float], weights: Sequence[float] | None = None, *,
                       settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> tuple[float, float] | None:
    """``(low, high)`` of ``ratio(values, weights)`` (same unit as the values); None for no items."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return None
    if weights is None:
        return _interval((values,), lambda v, axis=-1: ratio(v, None, axis), settings, paired=False)
    weights = np.asarray(weights, dtype=float)
    return _interval((values, weights), lambda v, w, axis=-1: ratio(v, w, axis), settings, paired=True)


def paired_delta_interval(a: Sequence[float], b: Sequence[float], weights: Sequence[float] | None = None,
                          weights_b: Sequence[float] | None = None, *,
                          settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> tuple[float, float] | None:
    """``(low, high)`` of ``ratio(a, weights) - ratio(b, weights_b)``, items resampled jointly (a[i] and b[i]
    are the same item). ``weights_b`` defaults to ``weights`` (same items, same instruction counts)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same items: {a.shape} vs {b.shape}")
    if a.size == 0:
        return None
    if weights is None:
        return _interval((a - b,), lambda d, axis=-1: d.mean(axis=axis), settings, paired=False)
    w_a = np.asarray(weights, dtype=float)
    w_b = w_a if weights_b is None else np.asarray(weights_b, dtype=float)
    statistic = lambda x, y, u, v, axis=-1: ratio(x, u, axis) - ratio(y, v, axis)  # noqa: E731
    return _interval((a, b, w_a, w_b), statistic, settings, paired=True)


def unpaired_delta_interval(a: Sequence[float], b: Sequence[float], *,
                            settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> tuple[float, float] | None:
    """``(low, high)`` of ``mean(a) - mean(b)`` with each sample resampled independently (different items)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        return None
    statistic = lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis)  # noqa: E731
    return _interval((a, b), statistic, settings, paired=False)


# --------------------------------------------------------------------------- per-item tables in eval.json


def per_item_table(ids: Sequence, values: Mapping[str, Sequence[float]], weights: Mapping[str, Sequence[float]] | None = None,
                   groups: Mapping[str, Sequence] | None = None) -> dict:
    """The ``metrics["per_item"]`` block a suite writes (see the module docstring)."""
    table = {"ids": [str(i) for i in ids], "values": {k: [float(x) for x in v] for k, v in values.items()}}
    if weights:
        table["weights"] = {k: [float(x) for x in v] for k, v in weights.items()}
    if groups:
        table["groups"] = {k: list(v) for k, v in groups.items()}
    return table


def metric_items(per_item: Mapping, metric: str, group: tuple[str, str] | None = None) -> ItemValues | None:
    """One metric's :class:`ItemValues` from a ``per_item`` block; ``group=("by_kind", "restated")`` keeps
    the items of that group only. None when the block lacks the metric."""
    if not per_item or metric not in per_item.get("values", {}):
        return None
    ids = list(per_item["ids"])
    values = np.asarray(per_item["values"][metric], dtype=float)
    weights = per_item.get("weights", {}).get(metric)
    weights = None if weights is None else np.asarray(weights, dtype=float)
    if group is not None:
        labels = per_item.get("groups", {}).get(group[0])
        if labels is None:
            return None
        keep = np.array([str(label) == group[1] for label in labels], dtype=bool)
        ids = [i for i, k in zip(ids, keep) if k]
        values = values[keep]
        weights = None if weights is None else weights[keep]
    return ItemValues(tuple(ids), values, weights)


def suite_items(suites: Mapping, dotted: str) -> ItemValues | None:
    """Per-item values behind a dotted score name of ``eval.json``'s suites: ``"domain_mcq.prob_correct"``,
    ``"domain_mcq.by_kind.restated.prob_correct"``, ``"ifeval.inst_strict"``. None when not recorded."""
    for cut in range(len(dotted), 0, -1):
        suite = dotted[:cut]
        if suite in suites and dotted[cut:].startswith("."):
            per_item = suites[suite].get("per_item") if isinstance(suites[suite], Mapping) else None
            parts = dotted[cut + 1:].split(".")
            if len(parts) == 1:
                return metric_items(per_item, parts[0])
            if len(parts) == 3:
                return metric_items(per_item, parts[2], group=(parts[0], parts[1]))
            return None
    return None


def pair_items(a: ItemValues, b: ItemValues) -> tuple[ItemValues, ItemValues]:
    """The two runs restricted to the items both answered, in ``a``'s order (ids must be unique)."""
    if a.ids == b.ids:
        return a, b
    index_b = {item_id: i for i, item_id in enumerate(b.ids)}
    keep_a = [i for i, item_id in enumerate(a.ids) if item_id in index_b]
    keep_b = [index_b[a.ids[i]] for i in keep_a]

    def take(x: ItemValues, rows: list[int]) -> ItemValues:
        return ItemValues(tuple(x.ids[i] for i in rows), x.values[rows],
                          None if x.weights is None else x.weights[rows])

    return take(a, keep_a), take(b, keep_b)


def mean_over_runs(runs: Sequence[ItemValues]) -> ItemValues:
    """The per-item mean of one metric over repeated runs of one configuration (seeds), on the items every run
    answered, in the first run's order: ``values[i] = mean_r runs[r].values[i]``. Paired comparisons of such
    means resample items, as for one run; averaging first removes part of the seed noise from each item.

    Raises ``ValueError`` for no runs, or when ratio metrics' weights (e.g. IFEval's instructions per prompt)
    differ between runs on a shared item (then they were not the same items)."""
    if not runs:
        raise ValueError("mean_over_runs needs at least one run")
    others = [set(r.ids) for r in runs[1:]]
    ids = [i for i in runs[0].ids if all(i in other for other in others)]
    aligned = [pair_items(ItemValues(tuple(ids), np.zeros(len(ids))), r)[1] for r in runs]
    values = np.mean([r.values for r in aligned], axis=0) if ids else np.zeros(0)
    weights = aligned[0].weights
    if any((r.weights is None) != (weights is None) or (weights is not None and not np.array_equal(r.weights, weights))
           for r in aligned[1:]):
        raise ValueError("mean_over_runs: the runs weigh the same items differently (not the same items)")
    return ItemValues(tuple(ids), values, weights)


def compare(a: ItemValues, b: ItemValues, settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> dict | None:
    """``{"delta", "ci", "n", "outside"}`` for ``a - b`` on the items both answered (paired bootstrap);
    ``outside``: the interval excludes 0 and at least :data:`MIN_ITEMS_FOR_CLAIM` items are shared. None when
    no item is shared."""
    a, b = pair_items(a, b)
    if len(a) == 0:
        return None
    ci = paired_delta_interval(a.values, b.values, a.weights, b.weights if a.weights is not None else None,
                               settings=settings)
    delta = a.score - b.score
    return {"delta": delta, "ci": list(ci), "n": len(a),
            "outside": bool((ci[0] > 0 or ci[1] < 0) and len(a) >= MIN_ITEMS_FOR_CLAIM)}


def attach_intervals(metrics: dict, settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> dict:
    """Add ``metrics["ci"] = {metric: [low, high]}`` for every per-item metric, and the same inside each group's
    sub-scores (``metrics["by_kind"][kind]["ci"]``). Returns ``metrics``."""
    per_item = metrics.get("per_item")
    if not per_item:
        return metrics
    metrics["ci"] = {m: list(bootstrap_interval(item.values, item.weights, settings=settings))
                     for m in per_item["values"] if (item := metric_items(per_item, m)) is not None and len(item)}
    for group, labels in per_item.get("groups", {}).items():
        for label in sorted({str(x) for x in labels} - {""}):  # "": items outside every group
            sub = metrics.get(group, {}).get(label)
            if not isinstance(sub, dict):
                continue
            sub["ci"] = {m: list(bootstrap_interval(item.values, item.weights, settings=settings))
                         for m in per_item["values"]
                         if (item := metric_items(per_item, m, (group, label))) is not None and len(item)}
    return metrics


def compare_suites(suites: Mapping, baseline_suites: Mapping, settings: BootstrapConfig = DEFAULT_BOOTSTRAP) -> dict:
    """``{suite: {metric: compare(...)}}`` for every per-item metric both records hold (groups as
    ``"by_kind.restated.prob_correct"``): run minus baseline with a paired interval."""
    out: dict = {}
    for suite, metrics in suites.items():
        other = baseline_suites.get(suite)
        if not isinstance(metrics, Mapping) or not isinstance(other, Mapping):
            continue
        per_item, base_item = metrics.get("per_item"), other.get("per_item")
        if not per_item or not base_item:
            continue
        names = [m for m in per_item["values"]]
        for group, labels in per_item.get("groups", {}).items():
            names += [f"{group}.{label}.{m}" for label in sorted({str(x) for x in labels} - {""})
                      for m in per_item["values"]]
        for name in names:
            a, b = suite_items(suites, f"{suite}.{name}"), suite_items(baseline_suites, f"{suite}.{name}")
            if a is None or b is None:
                continue
            result = compare(a, b, settings)
            if result is not None:
                out.setdefault(suite, {})[name] = result
    return out
