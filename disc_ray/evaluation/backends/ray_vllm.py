"""``ray_vllm``: batch inference with Ray Data and ``ray.data.llm`` vLLM processors.

For many prompts, checkpoints or replicas: the prompts become a Ray Dataset, each row carries its
token ids (built by the shared prompt code, so the engine sees exactly what ``hf`` and ``vllm`` see)
and its sampling parameters, and ``settings.replicas`` vLLM engines process the rows in parallel.
Ray Data returns only the first completion of a request, so ``n`` samples are ``n`` rows with seeds
``seed, seed+1, ...`` (``n > 1`` at temperature 0 raises, as on the other backends). Decoding, dtype and
window: the shared :mod:`.settings`. Needs Ray >= 2.53 (the first whose Ray Data LLM rows carry
``prompt_logprobs``) and vLLM >= 0.12 (``pip install 'disc-ray[vllm]'``). Only this module and the training
code import Ray.
"""

from __future__ import annotations

import time
from typing import Sequence

from disc_ray.evaluation.backends.base import GenerationStats, decode_completion, encode_pairs, encode_prompts, import_vllm
from disc_ray.evaluation.backends.settings import BackendSettings, Decoding, vllm_sampling_kwargs
from disc_ray.evaluation.config import VLLMConfig
from disc_ray.evaluation.prompts import Prompt


def _logprob_of(entry: dict, token: int) -> float:
    """One ``prompt_logprobs`` entry (token id -> info); Arrow may have turned the keys into strings."""
    info = entry.get(token, entry.get(str(token)))
    return float(info["logprob"] if isinstance(info, dict) else info.logprob)


_OUTPUT_FIELDS = ("row_id", "generated_tokens", "prompt_logprobs")


def _keep_output_fields(row: dict) -> dict:
    return {k: row.get(k) for k in _OUTPUT_FIELDS}


def generation_rows(tokenizer, prompts: Sequence[Prompt], settings: BackendSettings, decoding: Decoding,
                    stats: GenerationStats) -> list[dict]:
    """Ray Data rows for ``decoding.n`` samples per prompt: one row per sample (Ray Data keeps only a request's first
    completion), sample ``k`` seeded ``decoding.seed + k``; token ids fitted to the shared window (counted in ``stats``).
    Row ``index * n + k`` is prompt ``index``'s sample ``k``."""
    rows = []
    for index, ids in enumerate(encode_prompts(tokenizer, prompts, settings, decoding.max_new_tokens, stats)):
        for sample in range(decoding.n):
            sampling = dict(vllm_sampling_kwargs(decoding, n=1, seed=decoding.seed + sample), detokenize=False)
            rows.append(dict(row_id=index * decoding.n + sample, prompt=tokenizer.decode(ids), tokenized_prompt=ids,
                             sampling_params=sampling))
    return rows


def loglikelihood_rows(tokenizer, pairs: Sequence[tuple[Prompt, str]], settings: BackendSettings,
                       stats: GenerationStats) -> tuple[list[dict], list[tuple[list[int], list[int]]]]:
    """``(rows, encoded_pairs)``: one prompt-logprobs request per (context, continuation), fitted to the shared window."""
    encoded = encode_pairs(tokenizer, pairs, settings, stats)
    rows = [dict(row_id=i, prompt=tokenizer.decode(ctx + cont), tokenized_prompt=ctx + cont,
                 sampling_params=dict(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False))
            for i, (ctx, cont) in enumerate(encoded)]
    return rows, encoded


class RayDataVLLMBackend:
    """``settings.replicas`` vLLM engines fed by Ray Data (``ray.data.llm.build_processor``). The processor is built
    once per backend object and reused by every call; Ray Data starts its engine replicas for each dataset it
    runs (one per ``generate`` / ``loglikelihood`` call), so prefer ``vllm`` for small evaluations."""

    name = "ray_vllm"

    def __init__(self, name_or_path: str, *, settings: VLLMConfig | None = None, dtype: str = "auto", seed: int = 0,
                 cache_dir: str | None = None, **decoding):
        from disc_ray.evaluation.backends.vllm import load_vllm_model_settings

        import_vllm()  # fail on the driver with the install hint rather than inside an actor
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        engine = settings or VLLMConfig()
        self.source, self.tokenizer, self.settings = load_vllm_model_settings("ray_vllm", name_or_path, dtype=dtype,
                                                                              cache_dir=cache_dir, **decoding)
        self.seed = seed
        self.stats = GenerationStats()
        self.stop_ids = list(self.settings.stop_token_ids)
        engine_kwargs = dict(tensor_parallel_size=engine.tensor_parallel_size, max_model_len=self.settings.window,
                             gpu_memory_utilization=engine.gpu_memory_utilization, dtype=self.settings.dtype, seed=seed,
                             generation_config="vllm")
        self.processor_config = vLLMEngineProcessorConfig(
            model_source=self.source, engine_kwargs=engine_kwargs, concurrency=engine.replicas,
            batch_size=engine.ray_batch_size, chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
        )
        self.processor = build_processor(self.processor_config, postprocess=_keep_output_fields)

    def _run(self, rows: list[dict]) -> list[dict]:
        import ray

        outputs = self.processor(ray.data.from_items(rows)).take_all()
        return sorted(outputs, key=lambda row: row["row_id"])

    def generate(self, prompts: Sequence[Prompt], *, n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
                 seed: int = 0, desc: str | None = None, top_p: float | None = None) -> list[list[str]]:
        decoding = self.settings.for_call(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, top_p=top_p)
        rows = generation_rows(self.tokenizer, prompts, self.settings, decoding, self.stats)
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
        rows, encoded = loglikelihood_rows(self.tokenizer, pairs, self.settings, self.stats)
        results = []
        for row, (ctx, cont) in zip(self._run(rows), encoded):
            entries = row["prompt_logprobs"]
            results.append(sum(_logprob_of(entries[p], t) for p, t in enumerate(cont, start=len(ctx))))
        return results

    def close(self) -> None:
        self.processor = None
