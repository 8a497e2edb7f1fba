"""Evaluation of adapted models: how much of the new domain they learned, how much skill they kept.

Suites (one module each): ``domain_mcq`` (:mod:`.mcq`: option log-likelihood and the answer-tag
generation protocol), ``domain_qa`` (:mod:`.qa`), ``ifeval`` (:mod:`.ifeval`: lm-eval's checkers,
offline), ``drift`` (:mod:`.drift`: KL(original || adapted) and NLL on the original's own responses)
and ``lm_eval:<task>`` (:mod:`.lm_eval_tasks`). Intervals and paired comparisons: :mod:`.stats`; methods at
matched retention: :mod:`.frontier`; the demo's before/after table: :mod:`.before_after`. Backends (:mod:`.backends`): ``hf`` (transformers),
``vllm`` (``vllm.LLM``), ``ray_vllm`` (:mod:`.backends.ray_vllm`: Ray Data + ``ray.data.llm``).

    from disc_ray.evaluation import EvalConfig, evaluate
    record = evaluate("runs/demo/model", EvalConfig(limit=32), baseline="smollm2-135m-instruct", out_dir="runs/demo/eval")

Command lines: ``python jobs/evaluate.py MODEL_DIR ...`` (:mod:`.runner`), ``disc-ray report RUN_DIR...`` (:mod:`.report`).
Names are imported lazily so ``import disc_ray.evaluation`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvalConfig": "config", "VLLMConfig": "config", "EvalInputError": "config", "SUITE_VERSIONS": "config",
    "GenerationBackend": "backends", "HFBackend": "backends", "VLLMBackend": "backends", "build_backend": "backends",
    "BackendUnavailableError": "config",
    "RayDataVLLMBackend": "backends.ray_vllm",
    "SuiteResult": "suite",
    "run_mcq_suite": "mcq", "run_qa_suite": "qa", "run_ifeval_suite": "ifeval", "load_ifeval_checkers": "ifeval",
    "compute_drift": "drift", "build_drift_batches": "drift", "reference_responses": "drift", "DriftBatch": "drift",
    "run_drift_suite": "drift",
    "select_best": "selection", "run_scores": "selection", "RunScores": "selection", "Selection": "selection",
    "evaluate": "runner", "evaluate_suites": "runner",
    "write_report": "report",
    "BootstrapConfig": "stats", "bootstrap_interval": "stats", "paired_delta_interval": "stats", "compare": "stats",
    "best_at_budgets": "frontier", "plot_frontiers": "frontier",
    "run_before_after": "before_after", "format_before_after": "before_after",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'disc_ray.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"disc_ray.evaluation.{_EXPORTS[name]}"), name)
