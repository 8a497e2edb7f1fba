"""``vllm``: one ``vllm.LLM`` offline engine (imported lazily). Prompts go in as token ids built by the shared
prompt code, so the engine sees exactly what ``hf`` sees."""

from __future__ import annotations

import time
from typing import Sequence

import torch

from disc_ray.evaluation.backends.base import GenerationStats, decode_completion, import_vllm, stop_token_ids
from disc_ray.evaluation.config import VLLMConfig
from disc_ray.evaluation.data import check_tokenizer_files
from disc_ray.evaluation.prompts import Prompt, context_window, encode_pair, encode_prompt, fit_pair_to_window


class VLLMBackend:
    """One ``vllm.LLM`` offline engine. Prompts go in as token ids built by the shared prompt code."""

    name = "vllm"

    def __init__(self, name_or_path: str, *, settings: VLLMConfig | None = None, dtype: str = "auto", seed: int = 0,
                 progress: bool = True, cache_dir: str | None = None):
        from disc_ray.models import load_tokenizer, resolve_model_source

        vllm = import_vllm()
        check_tokenizer_files(name_or_path)
        settings = settings or VLLMConfig()
        self.source = resolve_model_source(name_or_path, cache_dir)
        self.tokenizer = load_tokenizer(self.source)
        self.progress = progress
        self.stats = GenerationStats()
        self.llm = vllm.LLM(model=self.source, tokenizer=self.source, dtype=dtype, seed=seed,
                            tensor_parallel_size=settings.tensor_parallel_size, max_model_len=settings.max_model_len,
                            gpu_memory_utilization=settings.gpu_memory_utilization)
        generation_config = None
        try:
            from transformers import GenerationConfig

            generation_config = GenerationConfig.from_pretrained(self.source)
        except (OSError, ValueError):
            pass
        self.stop_ids = stop_token_ids(self.tokenizer, generation_config)
        self.window = settings.max_model_len
        if self.window is None:
            from transformers import AutoConfig

            self.window = context_window(AutoConfig.from_pretrained(self.source))

    def generate(self, prompts: Sequence[Prompt], *, n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
                 seed: int = 0, desc: str | None = None, top_p: float = 1.0) -> list[list[str]]:
        from vllm import SamplingParams

        encoded = [{"prompt_token_ids": encode_prompt(self.tokenizer, p)} for p in prompts]
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                                stop_token_ids=self.stop_ids, skip_special_tokens=True)
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

        encoded = [fit_pair_to_window(*encode_pair(self.tokenizer, context, continuation), self.window)
                   for context, continuation in pairs]
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
