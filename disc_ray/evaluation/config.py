"""Typed settings for an evaluation run (:class:`EvalConfig`) and the names of the suites.

Every knob has a CPU-friendly default; the GPU settings live in :class:`VLLMConfig`.

    cfg = EvalConfig(suites=("domain_mcq", "ifeval", "drift"), limit=16, backend="hf")
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Mapping

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_MCQ_PATH = SHARED_DATA / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"
DEFAULT_IFEVAL_PATH = SHARED_DATA / "ifeval" / "input_data.jsonl"

BUILTIN_SUITES = ("domain_mcq", "domain_qa", "ifeval", "drift")
LM_EVAL_PREFIX = "lm_eval:"
"""``lm_eval:gsm8k`` runs lm-eval's own ``gsm8k`` task (needs the hub for its data set)."""
BACKENDS = ("hf", "vllm", "ray_vllm")
MCQ_MODES = ("ll", "gen")

# Bump a suite's version whenever its prompts, parsing or scoring change: scores with different
# versions are not comparable. The data file's hash is recorded next to it.
# domain_mcq 2 / ifeval 2: continuous MCQ scores, the lenient generation parse, per-item values (same accuracies).
SUITE_VERSIONS = {"domain_mcq": "2", "domain_qa": "1", "ifeval": "2", "drift": "1"}


class EvalInputError(ValueError):
    """Bad user input for an evaluation (missing file, malformed row, unusable model dir)."""


class BackendUnavailableError(RuntimeError):
    """The requested engine is not installed or cannot run here; the message says what to install."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class VLLMConfig:
    """Engine settings of the ``vllm`` and ``ray_vllm`` backends (ignored by ``hf``)."""

    tensor_parallel_size: int = 1
    """GPUs per engine."""
    gpu_memory_utilization: float = 0.85
    """Fraction of each GPU's memory vLLM may take (weights + KV cache)."""
    replicas: int = 1
    """``ray_vllm`` only: engine replicas Ray Data spreads the prompts over."""
    ray_batch_size: int = 64
    """``ray_vllm`` only: rows per Ray Data batch sent to an engine."""

    def __post_init__(self):
        if self.tensor_parallel_size < 1 or self.replicas < 1 or self.ray_batch_size < 1:
            raise EvalInputError("vllm.tensor_parallel_size, vllm.replicas and vllm.ray_batch_size must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise EvalInputError(f"vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What to evaluate and how. Scores come out in percentage points (0-100)."""

    suites: tuple[str, ...] = ("domain_mcq", "ifeval", "drift")
    """Built-in suites (``domain_mcq``, ``domain_qa``, ``ifeval``, ``drift``) and ``lm_eval:<task>`` names."""
    backend: str = "hf"
    """``hf`` (transformers, CPU or GPU), ``vllm`` (one ``vllm.LLM``), ``ray_vllm`` (Ray Data + vLLM replicas)."""
    device: str = "auto"
    """``hf`` only: ``auto`` (cuda if available), ``cpu``, ``cuda``, ``cuda:1``..."""
    dtype: str = "auto"
    """Every backend: ``auto`` is bfloat16 on GPU (always for vLLM) and float32 on CPU, whatever dtype the checkpoint
    stores; or ``float32`` / ``bfloat16`` / ``float16``. Recorded in ``eval.json["backend_settings"]``."""
    top_p: float | None = None
    """Sampling (temperature > 0) only; None: the model's ``generation_config.json`` value, else 1.0 (off). Every
    backend applies the same resolved value (``disc_ray/evaluation/backends/settings.py``)."""
    top_k: int | None = None
    """Sampling only; None: the model's ``generation_config.json`` value, else 0 (off)."""
    repetition_penalty: float | None = None
    """Greedy and sampled generation; None: the model's ``generation_config.json`` value, else 1.0 (off)."""
    max_model_len: int | None = 4096
    """Evaluation window of every backend: prompt + generated tokens (context + continuation when scoring) fit
    ``min(this, the model's context window)``; longer prompts lose tokens from the left, counted per suite as
    ``truncated_prompts``. vLLM plans its memory for it. None: the model's window."""
    seed: int = 0
    """Seeds the subset choice and the sampling."""
    limit: int | None = None
    """At most this many items per suite (a subset fixed by ``seed``); None: all."""
    batch_size: int = 8
    """Prompts per generation batch / pairs per scoring batch (``hf``)."""
    progress: bool = True
    """Show progress bars."""

    mcq_path: str = str(DEFAULT_MCQ_PATH)
    """JSONL with ``question``, ``options``, ``correct_index`` (optional ``meta.kind``)."""
    mcq_modes: tuple[str, ...] = MCQ_MODES
    """``ll``: option log-likelihood; ``gen``: answer-tag generation with majority vote."""
    n_samples: int = 5
    """Generation MCQ: samples per question (majority vote; ties are wrong)."""
    temperature: float = 1.0
    """Generation MCQ: sampling temperature (0 with n_samples=1 is greedy)."""
    mcq_max_new_tokens: int = 128
    mcq_limit: int | None = None
    """At most this many MCQ questions; None: ``limit``. Lets an experiment ask every question about the
    passages it trained on while keeping the slower generation suites (IFEval) to a subset."""
    qa_path: str | None = None
    """JSONL with ``question`` and ``answer`` (string) or ``answers`` (list of aliases)."""
    qa_max_new_tokens: int = 64

    ifeval_path: str = str(DEFAULT_IFEVAL_PATH)
    max_new_tokens: int = 512
    """IFEval: tokens generated per prompt (greedy)."""

    drift_prompts_path: str | None = None
    """JSONL with ``prompt`` per row; None: the built-in general prompts."""
    drift_num_prompts: int = 32
    drift_max_new_tokens: int = 128
    """Length of the original model's (greedy) reference responses."""

    lm_eval_batch_size: int | str = "auto"
    max_drop: float = 5.0
    """Selection rule: most points a retained skill may drop versus the baseline."""
    domain_metrics: tuple[str, ...] = ("domain_mcq.prob_correct", "domain_mcq.accuracy_gen", "domain_mcq.accuracy_ll",
                                       "domain_qa.contains")
    """The domain score is the first of these present in a result: the continuous ``prob_correct`` (from the ``ll``
    pass), else the paper's tag protocol ``accuracy_gen`` (0 for small models that answer without tags), ...
    Every score is reported whichever leads."""
    skill_metrics: tuple[str, ...] = ("ifeval.inst_strict",)
    """Retained skills checked by the selection rule (``lm_eval:*`` suites' ``score`` are added automatically).
    The paper constrains IFEval's instruction-level strict accuracy (and MATH, HumanEval via lm-eval)."""
    bootstrap_resamples: int = 2000
    """Resamples of the items behind every 95% interval (:mod:`disc_ray.evaluation.stats`)."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap's generator (recorded in ``eval.json["bootstrap"]``)."""
    confidence: float = 0.95
    """Confidence level of the intervals."""
    cache_dir: str | None = None
    """Where the drift reference responses are cached; None: ``disc_ray.models.default_cache_dir()``."""
    vllm: VLLMConfig = dataclasses.field(default_factory=VLLMConfig)

    def __post_init__(self):
        for suite in self.suites:
            if suite not in BUILTIN_SUITES and not (suite.startswith(LM_EVAL_PREFIX) and len(suite) > len(LM_EVAL_PREFIX)):
                raise EvalInputError(f"unknown suite {suite!r}; choose from {list(BUILTIN_SUITES)} or lm_eval:<task>")
        if not self.suites:
            raise EvalInputError("no suites selected")
        if self.backend not in BACKENDS:
            raise EvalInputError(f"unknown backend {self.backend!r}; choose from {list(BACKENDS)}")
        for name in ("limit", "mcq_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise EvalInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not set(self.mcq_modes) <= set(MCQ_MODES) or not self.mcq_modes:
            raise EvalInputError(f"mcq_modes must be a non-empty subset of {list(MCQ_MODES)}, got {list(self.mcq_modes)}")
        if self.n_samples < 1 or self.batch_size < 1 or self.drift_num_prompts < 1:
            raise EvalInputError("n_samples, batch_size and drift_num_prompts must be >= 1")
        if self.temperature < 0:
            raise EvalInputError(f"temperature must be >= 0, got {self.temperature}")
        if "gen" in self.mcq_modes and "domain_mcq" in self.suites and self.n_samples > 1 and self.temperature == 0:
            raise EvalInputError(f"n_samples={self.n_samples} at temperature 0 would be identical greedy samples; "
                                 "set temperature > 0 or n_samples 1")
        if (self.top_p is not None and not 0 < self.top_p <= 1) or (self.top_k is not None and self.top_k < 0) \
                or (self.repetition_penalty is not None and self.repetition_penalty <= 0):
            raise EvalInputError("top_p must be in (0, 1], top_k >= 0 (0: off) and repetition_penalty > 0 (or null: the model's)")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise EvalInputError(f"max_model_len must be >= 2 (or null: the model's window), got {self.max_model_len}")
        if min(self.max_new_tokens, self.mcq_max_new_tokens, self.qa_max_new_tokens, self.drift_max_new_tokens) < 1:
            raise EvalInputError("every max_new_tokens setting must be >= 1")
        if self.bootstrap_resamples < 100 or not 0 < self.confidence < 1:
            raise EvalInputError("bootstrap_resamples must be >= 100 and confidence in (0, 1)")
        if self.max_drop < 0:
            raise EvalInputError(f"max_drop must be >= 0, got {self.max_drop}")
        if "domain_qa" in self.suites and not self.qa_path:
            raise EvalInputError("the domain_qa suite needs a qa_path (--evaluation.qa_path FILE.jsonl)")

    def replace(self, **changes) -> "EvalConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def matches(self, recorded: Mapping | None) -> bool:
        """Whether ``recorded`` (an ``eval.json["config"]``) asks for the same evaluation as this config: the same
        keys and values, file paths (``*_path`` keys) compared as resolved real paths, so an evaluation written
        from another checkout of the same files (``/a/repo/../shared/x`` vs ``/b/repo/../shared/x``) is reused."""
        mine = json.loads(json.dumps(self.to_dict()))
        if not isinstance(recorded, Mapping) or set(recorded) != set(mine):
            return False

        def canonical(key: str, value):
            return os.path.realpath(os.path.expanduser(value)) if key.endswith("_path") and isinstance(value, str) else value

        return all(canonical(k, recorded[k]) == canonical(k, v) for k, v in mine.items())

    def bootstrap(self):
        """The :class:`~disc_ray.evaluation.stats.BootstrapConfig` of this run."""
        from disc_ray.evaluation.stats import BootstrapConfig

        return BootstrapConfig(confidence=self.confidence, n_resamples=self.bootstrap_resamples, seed=self.bootstrap_seed)
