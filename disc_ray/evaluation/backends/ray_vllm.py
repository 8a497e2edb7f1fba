"""``ray_vllm``: batch inference with Ray Data and ``ray.data.llm`` vLLM processors.

For many prompts, checkpoints or replicas: the prompts become a Ray Dataset, each row carries its
token ids (built by the shared prompt code, so the engine sees exactly what ``hf`` and ``vllm`` see)
and its sampling parameters, and ``settings.replicas`` vLLM engines process the rows in parallel.
Ray Data returns only the first completion of a request, so ``n`` samples are ``n`` rows with seeds
``seed, seed+1, ...``. Only this module and the training code import Ray.
"""

from __future__ import annotations

import time
from typing import Sequence

from disc_ray.evaluation.backends.base import GenerationStats, decode_completion, import_vllm, stop_token_ids
from disc_ray.evaluation.config import VLLMConfig
from disc_ray.evaluation.data import check_tokenizer_files
from disc_ray.evaluation.prompts import Prompt, encode_pair, encode_prompt, render_prompt


def _logprob_of(entry: dict, token: int) -> float:
    """One ``prompt_logprobs`` entry (token id -> info); Arrow may have turned the keys into strings."""
    info = entry.get(token, entry.get(str(token)))
    return float(info["logprob"] if isinstance(info, dict) else info.logprob)


class RayDataVLLMBackend:
    """``settings.replicas`` vLLM engines fed by Ray Data (``ray.data.llm.build_processor``)."""

    name = "ray_vllm"

    def __init__(self, name_or_path: str, *, settings: VLLMConfig | None = None, dtype: str = "auto", seed: int = 0,
                 cache_dir: str | None = None):
        from disc_ray.models import load_tokenizer, resolve_model_source

        import_vllm()  # fail on the driver with the install hint rather than inside an actor
        from ray.data.llm import vLLMEngineProcessorConfig

        check_tokenizer_files(name_or_path)
        settings = settings or VLLMConfig()
        self.source = resolve_model_source(name_or_path, cache_dir)
        self.tokenizer = load_tokenizer(self.source)
        self.seed = seed
        self.stats = GenerationStats()
        self.stop_ids = stop_token_ids(self.tokenizer)
        engine_kwargs = dict(tensor_parallel_size=settings.tensor_parallel_size, max_model_len=settings.max_model_len,
                             gpu_memory_utilization=settings.gpu_memory_utilization, dtype=dtype, seed=seed)
        self.processor_config = vLLMEngineProcessorConfig(
            model_source=self.source, engine_kwargs=engine_kwargs, concurrency=settings.replicas,
            batch_size=settings.ray_batch_size, chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
        )

    def _run(self, rows: list[dict]) -> list[dict]:
        import ray
        from ray.data.llm import build_processor

        keep = ("row_id", "generated_tokens", "prompt_logprobs")
        processor = build_processor(self.processor_config, postprocess=lambda row: {k: row.get(k) for k in keep})
        outputs = processor(ray.data.from_items(rows)).take_all()
        return sorted(outputs, key=lambda row: row["row_id"])

    def generate(self, prompts: Sequence[Prompt], *, n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
                 seed: int = 0, desc: str | None = None, top_p: float = 1.0) -> list[list[str]]:
        rows = []
        for index, prompt in enumerate(prompts):
            ids, text = encode_prompt(self.tokenizer, prompt), render_prompt(self.tokenizer, prompt)
            for sample in range(n):
                sampling = dict(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed + sample,
                                stop_token_ids=self.stop_ids, detokenize=False)
                rows.append(dict(row_id=index * n + sample, prompt=text, tokenized_prompt=ids, sampling_params=sampling))
        started = time.perf_counter()
        outputs = self._run(rows)
        results = [[] for _ in prompts]
        for row in outputs:
            text, length = decode_completion(self.tokenizer, list(row["generated_tokens"]), self.stop_ids)
            results[row["row_id"] // n].append(text)
            self.stats.generated_tokens += length
        self.stats.prompts += len(prompts)
        self.stats.sequences += len(rows)
        self.stats.seconds += time.perf_counter() - started
        return results

    def loglikelihood(self, pairs: Sequence[tuple[Prompt, str]], *, desc: str | None = None) -> list[float]:
        encoded = [encode_pair(self.tokenizer, context, continuation) for context, continuation in pairs]
        rows = [dict(row_id=i, prompt=self.tokenizer.decode(ctx + cont), tokenized_prompt=ctx + cont,
                     sampling_params=dict(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False))
                for i, (ctx, cont) in enumerate(encoded)]
        results = []
        for row, (ctx, cont) in zip(self._run(rows), encoded):
            entries = row["prompt_logprobs"]
            results.append(sum(_logprob_of(entries[p], t) for p, t in enumerate(cont, start=len(ctx))))
        return results

    def close(self) -> None:
        pass
