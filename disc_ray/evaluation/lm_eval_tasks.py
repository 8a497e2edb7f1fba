"""Optional: any lm-eval task by name (suite ``lm_eval:<task>``), through lm-eval's Python API.

lm-eval downloads the task's data from the Hugging Face hub, so this needs a network (GSM8K,
MMLU-Pro, ...). The model is run by lm-eval's own ``hf`` or ``vllm`` model class with the chat
template applied. Accuracy-like metrics are converted to points; ``score`` is the first of them.
"""

from __future__ import annotations

from disc_ray.evaluation.config import LM_EVAL_PREFIX, EvalConfig
from disc_ray.evaluation.suite import SuiteResult

_POINT_METRICS = ("acc", "exact_match", "em", "f1", "mc1", "mc2", "prompt_level", "inst_level", "pass")


def lm_eval_model_args(model_source: str, cfg: EvalConfig) -> tuple[str, dict]:
    from disc_ray.evaluation.backends.settings import resolve_device, resolve_dtype_name

    if cfg.backend == "hf":
        device = resolve_device(cfg.device)
        return "hf", {"pretrained": model_source, "dtype": resolve_dtype_name(cfg.dtype, on_cuda=device.startswith("cuda")),
                      "device": device}
    return "vllm", {"pretrained": model_source, "dtype": resolve_dtype_name(cfg.dtype, on_cuda=True), "tensor_parallel_size": cfg.vllm.tensor_parallel_size,
                    "gpu_memory_utilization": cfg.vllm.gpu_memory_utilization, "max_model_len": cfg.max_model_len}


def convert_task_metrics(task_results: dict) -> dict:
    """lm-eval's ``{"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...}`` -> ``{"acc": 50.0, "acc_stderr": 10.0}``."""
    metrics = {}
    for key, value in task_results.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        name = key.replace(",none", "").replace(",", "/")
        points = name.split("/")[0].replace("_stderr", "").startswith(_POINT_METRICS)
        metrics[name] = 100.0 * value if points else value
        if points and "stderr" not in name and "score" not in metrics:
            metrics["score"] = metrics[name]
    return metrics


def stderr_intervals(metrics: dict, z: float = 1.959964) -> dict:
    """``{metric: [low, high]}`` = value -/+ ``z`` x lm-eval's own stderr (``acc/none`` -> ``acc_stderr/none``;
    normal approximation, 95%); ``score`` gets its metric's interval. lm-eval keeps no per-item values here, so
    these tasks get intervals but no paired deltas."""
    intervals = {}
    for name, value in metrics.items():
        base, _, rest = name.partition("/")
        stderr = metrics.get(f"{base}_stderr" + (f"/{rest}" if rest else ""))
        if "stderr" in base or name == "score" or not isinstance(stderr, (int, float)) or isinstance(stderr, bool):
            continue
        intervals[name] = [value - z * stderr, value + z * stderr]
    source = next((n for n in metrics if n != "score" and "stderr" not in n and metrics[n] == metrics.get("score")), None)
    if source in intervals:
        intervals["score"] = intervals[source]
    return intervals


def run_lm_eval_suite(model_source: str, suite: str, cfg: EvalConfig) -> SuiteResult:
    from disc_ray.models import resolve_model_source

    task = suite[len(LM_EVAL_PREFIX):]
    try:
        from lm_eval import simple_evaluate
    except ImportError as err:
        raise RuntimeError(f"suite {suite} needs lm-eval: pip install 'lm-eval>=0.4.8' ({err})") from None
    model_type, model_args = lm_eval_model_args(resolve_model_source(model_source, cfg.cache_dir), cfg)
    try:
        output = simple_evaluate(model=model_type, model_args=model_args, tasks=[task], limit=cfg.limit,
                                 batch_size=cfg.lm_eval_batch_size, apply_chat_template=True, log_samples=False,
                                 random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed)
    except Exception as err:  # lm-eval raises many types (hub, config, task lookup); say which suite failed
        raise RuntimeError(f"lm-eval task {task!r} failed: {type(err).__name__}: {err} "
                           "(lm-eval tasks fetch their data from the Hugging Face hub)") from err
    if not output or task not in output.get("results", {}):
        raise RuntimeError(f"lm-eval returned no results for task {task!r}")
    metrics = convert_task_metrics(output["results"][task])
    if intervals := stderr_intervals(metrics):
        metrics["ci"] = intervals
    metrics.update(n=output.get("n-samples", {}).get(task, {}).get("effective"), version=str(output.get("versions", {}).get(task)),
                   lm_eval_model=model_type)
    return SuiteResult(metrics=metrics)
