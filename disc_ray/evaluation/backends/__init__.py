"""Engines that turn prompts into completions and (context, continuation) pairs into log-likelihoods.

* :mod:`.base`: the :class:`GenerationBackend` interface and what every backend shares;
* :mod:`.settings`: decoding, dtype and window, resolved once per model by one rule for every backend;
* :class:`HFBackend` (:mod:`.hf`): transformers on CPU or GPU;
* :class:`VLLMBackend` (:mod:`.vllm`): one ``vllm.LLM`` offline engine (imported lazily);
* ``RayDataVLLMBackend`` (:mod:`.ray_vllm`): Ray Data + ``ray.data.llm`` replicas (imported on use: only it imports Ray).

:func:`build_backend` picks one from ``EvalConfig.backend``.
"""

from __future__ import annotations

from disc_ray.evaluation.backends.base import (
    VLLM_INSTALL_HINT,
    GenerationBackend,
    GenerationStats,
    decode_completion,
    import_vllm,
)
from disc_ray.evaluation.backends.hf import HFBackend
from disc_ray.evaluation.backends.settings import (
    BackendSettings,
    Decoding,
    resolve_backend_settings,
    resolve_device,
    resolve_dtype,
    resolve_dtype_name,
    stop_token_ids,
)
from disc_ray.evaluation.backends.vllm import VLLMBackend, sum_prompt_logprobs
from disc_ray.evaluation.config import EvalConfig, EvalInputError

__all__ = [
    "VLLM_INSTALL_HINT", "BackendSettings", "Decoding", "GenerationBackend", "GenerationStats", "HFBackend", "VLLMBackend",
    "build_backend", "decode_completion", "decoding_overrides", "import_vllm", "resolve_backend_settings", "resolve_device",
    "resolve_dtype", "resolve_dtype_name", "stop_token_ids", "sum_prompt_logprobs",
]


def decoding_overrides(cfg: EvalConfig) -> dict:
    """The evaluation keys every backend's settings are resolved with (:func:`resolve_backend_settings`)."""
    return dict(top_p=cfg.top_p, top_k=cfg.top_k, repetition_penalty=cfg.repetition_penalty, max_model_len=cfg.max_model_len)


def build_backend(name_or_path: str, cfg: EvalConfig) -> GenerationBackend:
    """The backend ``cfg.backend`` names, loaded with ``name_or_path``; its ``settings`` (decoding, dtype, window)
    are resolved by the one rule of :mod:`.settings` whichever backend it is."""
    decoding = decoding_overrides(cfg)
    if cfg.backend == "hf":
        return HFBackend.load(name_or_path, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                              progress=cfg.progress, cache_dir=cfg.cache_dir, **decoding)
    if cfg.backend == "vllm":
        return VLLMBackend(name_or_path, settings=cfg.vllm, dtype=cfg.dtype, seed=cfg.seed, progress=cfg.progress,
                           cache_dir=cfg.cache_dir, **decoding)
    if cfg.backend == "ray_vllm":
        from disc_ray.evaluation.backends.ray_vllm import RayDataVLLMBackend

        return RayDataVLLMBackend(name_or_path, settings=cfg.vllm, dtype=cfg.dtype, seed=cfg.seed, cache_dir=cfg.cache_dir,
                                  **decoding)
    raise EvalInputError(f"unknown backend {cfg.backend!r}")
