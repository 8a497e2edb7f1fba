"""What a run learned and what it kept: the original and the adapted model on the same closed-book probes, plus drift.

``make demo`` (``jobs/adapt.py --before-after``) calls :func:`run_before_after` after training on the built-in
synthetic corpus: both models answer the corpus's probes closed book (``domain_mcq``, option log-likelihood, no
document in the prompt), drift is measured from the original, and :func:`format_before_after` prints one short
table. Scoring is the evaluation runner's (:func:`disc_ray.evaluation.runner.evaluate`, so ``eval.json`` /
``eval.md`` are written too); this module only chooses the suites and formats the result.

    record = run_before_after("~/disc-ray-runs/demo/model", "smollm2-135m-instruct", "…/synthetic_corpus/probes.jsonl")
    print(format_before_after(record))
"""

from __future__ import annotations

from pathlib import Path

from disc_ray.evaluation.config import EvalConfig
from disc_ray.reporting import format_ci, text_table

ROWS = (("domain_mcq", "by_kind.restated.prob_correct", "facts stated twice (restated)", 2),
        ("domain_mcq", "by_kind.single.prob_correct", "facts stated once (single)", 2),
        ("domain_mcq", "prob_correct", "all probes", 2),
        ("domain_mcq", "accuracy_ll_norm", "all probes, accuracy (argmax)", 2),
        ("drift", "kl", "drift KL(original || adapted)", 4),
        ("drift", "nll", "NLL of the original's answers", 4))
"""``(suite, metric, label, digits)`` of the table's rows."""


def before_after_config(probes_path: str | Path, **changes) -> EvalConfig:
    """The demo's evaluation: at most 100 probes (a subset fixed by the seed, ~half per kind) by option
    log-likelihood (deterministic; ``prob_correct`` per ``meta.kind``) and drift on 12 general prompts with 64-token
    answers, about 2 minutes for both models of the 135M default on 2 idle CPU cores; ``changes`` override any key
    (``mcq_limit=None``: every probe)."""
    values = dict(suites=("domain_mcq", "drift"), mcq_path=str(probes_path), mcq_modes=("ll",), mcq_limit=100,
                  drift_num_prompts=12, drift_max_new_tokens=64, progress=False)
    return EvalConfig(**{**values, **changes})


def run_before_after(adapted: str, original: str, probes_path: str | Path, *, out_dir: str | Path | None = None,
                     cfg: EvalConfig | None = None) -> dict:
    """Evaluate ``original`` (the baseline) and ``adapted`` on ``probes_path`` and drift; returns ``eval.json``'s
    content (written to ``out_dir``, default ``ADAPTED/eval``). Raises what :func:`~disc_ray.evaluation.runner.evaluate`
    raises (``EvalInputError`` for a missing or malformed probes file)."""
    from disc_ray.evaluation.runner import evaluate

    return evaluate(str(adapted), cfg or before_after_config(probes_path), baseline=str(original), out_dir=out_dir,
                    name="adapted")


def _lookup(metrics: dict, metric: str):
    """``(value, ci)`` of ``metric`` (``by_kind.<kind>.<name>`` reaches into the per-kind scores); ``(None, None)``."""
    if metric.startswith("by_kind."):
        _, kind, name = metric.split(".", 2)
        metrics = (metrics.get("by_kind") or {}).get(kind) or {}
        metric = name
    value = metrics.get(metric)
    return value, (metrics.get("ci") or {}).get(metric)


def format_before_after(record: dict) -> str:
    """A plain-text table of ``record`` (``eval.json`` with a baseline): per row the original's and the adapted
    model's score with 95% intervals and the PAIRED change with its interval (``*``: it excludes 0). Rows the
    record lacks are left out. ``prob_correct`` and accuracy in points (0-100), drift in nats/token."""
    baseline = record["baseline"]["suites"]
    level = f"{100 * record.get('bootstrap', {}).get('confidence', 0.95):g}%"
    header = ("", f"original [{level} CI]", f"adapted [{level} CI]", f"change [paired {level} CI]")
    lines = []
    for suite, metric, label, digits in ROWS:
        after, after_ci = _lookup(record["suites"].get(suite, {}), metric)
        before, before_ci = _lookup(baseline.get(suite, {}), metric)
        if after is None or before is None:
            continue
        paired = record.get("delta_ci", {}).get(suite, {}).get(metric)
        if paired is not None:
            change = format_ci(paired["delta"], paired["ci"], digits, signed=True) + (" *" if paired["outside"] else "")
        else:
            change = format_ci(after - before, None, digits, signed=True)
        lines.append((label, format_ci(before, before_ci, digits), format_ci(after, after_ci, digits), change))
    mcq = record["suites"].get("domain_mcq", {})
    kinds = ", ".join(f"{kind} {sub.get('n')}" for kind, sub in (mcq.get("by_kind") or {}).items())
    notes = [f"Closed-book probes: {mcq.get('n')} questions ({kinds}); prob_correct = probability on the right option "
             "(points; 25 = indifferent on 4 options).",
             "Drift in nats/token on the original model's own answers to general prompts (0 = unchanged).",
             "* = the paired interval excludes 0 (the probes support a real change)."]
    return "\n".join([text_table(header, lines), "", *notes]) + "\n"
