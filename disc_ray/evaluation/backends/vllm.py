"""``vllm``: one ``vllm.LLM`` offline engine (imported lazily). Prompts go in as token ids built by the shared
prompt code, so the engine sees exactly what ``hf`` sees."""

from __future__ import annotations

import time
from typing import Sequence

import torch

from disc_ray.evaluation.backends.base import GenerationStats, decode_completion, encode_pairs, encode_prompts, import_vllm
from disc_ray.evaluation.backends.settings import BackendSettings, vllm_sampling_kwargs
from disc_ray.evaluation.config import VLLMConfig
from disc_ray.evaluation.data import check_tokenizer_files
from disc_ray.evaluation.prompts import Prompt, context_window


def load_vllm_model_settings(backend: str, name_or_path: str, *, dtype: str = "auto", cache_dir: str | None = None,
                             **decoding) -> tuple[str, object, BackendSettings]:
    """``(source, tokenizer, settings)`` of a model served by a vLLM engine: the same resolution as ``hf``
    (:func:`~disc_ray.evaluation.backends.settings.resolve_backend_settings`) from the model folder's
    ``generation_config.json`` and ``config.json``; the engine runs on CUDA, so ``auto`` is bfloat16."""
    from transformers import AutoConfig

    from disc_ray.evaluation.backends.settings import load_generation_config, resolve_backend_settings, resolve_dtype_name
    from disc_ray.models import load_tokenizer, resolve_model_source

    check_tokenizer_files(name_or_path)
    source = resolve_model_source(name_or_path, cache_dir)
    tokenizer = load_tokenizer(source)
    settings = resolve_backend_settings(backend, tokenizer, load_generation_config(source),
                                        model_window=context_window(AutoConfig.from_pretrained(source)),
                                        dtype=resolve_dtype_name(dtype, on_cuda=True), **decoding)
    return source, tokenizer, settings


class VLLMBackend:
    """One ``vllm.LLM`` offline engine. Prompts go in as token ids built by the shared prompt code, fitted to the
    shared window; sampling parameters come from the shared settings (``generation_config="vllm"``: the engine
    adds nothing of the model's own)."""

    name = "vllm"

    def __init__(self, name_or_path: str, *, settings: VLLMConfig | None = None, dtype: str = "auto", seed: int = 0,
                 progress: bool = True, cache_dir: str | None = None, **decoding):
        vllm = import_vllm()
        engine = settings or VLLMConfig()
        self.source, self.tokenizer, self.settings = load_vllm_model_settings("vllm", name_or_path, dtype=dtype,
                                                                              cache_dir=cache_dir, **decoding)
        self.progress = progress
        self.stats = GenerationStats()
        self.stop_ids = list(self.settings.stop_token_ids)
        self.llm = vllm.LLM(model=self.source, tokenizer=self.source, dtype=self.settings.dtype, seed=seed,
                            tensor_parallel_size=engine.tensor_parallel_size, max_model_len=self.settings.window,
                            gpu_memory_utilization=engine.gpu_memory_utilization, generation_config="vllm")

    def generate(self, prompts: Sequence[Prompt], *, n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
                 seed: int = 0, desc: str | None = None, top_p: float | None = None) -> list[list[str]]:
        from vllm import SamplingParams

        decoding = self.settings.for_call(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, top_p=top_p)
        encoded = [{"prompt_token_ids": ids}
                   for ids in encode_prompts(self.tokenizer, prompts, self.settings, max_new_tokens, self.stats)]
        params = SamplingParams(**vllm_sampling_kwargs(decoding), skip_special_tokens=True)
        started = time.perf_counter()
        outputs = self.llm.generate(encoded, params, use_tqdm=self.progress)
        results = []
        for output in outputs:
            decoded = [decode_completion(self.tokenizer, c.token_ids, self.stop_ids) for c in output.outputs]
            results.append([text for text, _ in decoded])
            self.stats.generated_tokens += sum(length for _, length in decoded)
        self.stats.prompts += len(encoded)
        self.stats.sequences += len(encoded) * n
        self.stats.seconds += time.perf_counter() - started
        return results

    def loglikelihood(self, pairs: Sequence[tuple[Prompt, str]], *, desc: str | None = None) -> list[float]:
        from vllm import SamplingParams

        encoded = encode_pairs(self.tokenizer, pairs, self.settings, self.stats)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.llm.generate([{"prompt_token_ids": ctx + cont} for ctx, cont in encoded], params,
                                    use_tqdm=self.progress)
        return [sum_prompt_logprobs(o.prompt_logprobs, ctx, cont) for o, (ctx, cont) in zip(outputs, encoded)]

    def close(self) -> None:
        import gc

        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def sum_prompt_logprobs(prompt_logprobs, context_ids: Sequence[int], continuation_ids: Sequence[int]) -> float:
    """Sum of the logprobs vLLM reports for the continuation's prompt tokens (entry i is for token i)."""
    total = 0.0
    for position, token in enumerate(continuation_ids, start=len(context_ids)):
        entry = prompt_logprobs[position][token]
        total += float(entry["logprob"] if isinstance(entry, dict) else entry.logprob)
    return total
