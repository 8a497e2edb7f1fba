"""Engines that turn prompts into completions and (context, continuation) pairs into log-likelihoods.

Every backend implements :class:`GenerationBackend`. Prompts are turned into token ids by
:mod:`disc_ray.evaluation.prompts` before they reach the engine, and completions are decoded with the
same tokenizer afterwards, so with greedy decoding the backends produce the same scores.

* :class:`HFBackend`: transformers on CPU or GPU; left-padded batched ``generate``; log-likelihoods
  from hidden states projected in row chunks (no ``[batch, seq, vocab]`` logits).
* :class:`VLLMBackend`: one ``vllm.LLM`` offline engine (imported lazily).
* ``RayDataVLLMBackend`` (:mod:`disc_ray.evaluation.ray_backend`): Ray Data + ``ray.data.llm`` replicas.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol, Sequence

import torch

from disc_ray.evaluation.config import BackendUnavailableError, EvalConfig, EvalInputError, VLLMConfig
from disc_ray.evaluation.data import check_tokenizer_files
from disc_ray.evaluation.prompts import Prompt, context_window, encode_pair, encode_prompt, fit_pair_to_window
from disc_ray.models import sdpa_without_cudnn

VLLM_INSTALL_HINT = "pip install 'disc-ray[vllm]' (needs Linux and an NVIDIA GPU)"


@dataclasses.dataclass
class GenerationStats:
    """Throughput counters a backend accumulates (for progress lines and the benchmark)."""

    prompts: int = 0
    sequences: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        rate = lambda x: x / self.seconds if self.seconds else 0.0  # noqa: E731
        return dict(dataclasses.asdict(self), prompts_per_s=rate(self.prompts), tokens_per_s=rate(self.generated_tokens))


class GenerationBackend(Protocol):
    """What the suites need from an engine."""

    name: str
    tokenizer: object
    stats: GenerationStats

    def generate(self, prompts: Sequence[Prompt], *, n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
                 seed: int = 0, desc: str | None = None) -> list[list[str]]:
        """``n`` completions per prompt (temperature 0: greedy). Returns ``[len(prompts)][n]`` strings."""

    def loglikelihood(self, pairs: Sequence[tuple[Prompt, str]], *, desc: str | None = None) -> list[float]:
        """Sum of log-probabilities (nats) of each continuation's tokens given its context."""

    def close(self) -> None:
        """Free the engine's memory."""


# --------------------------------------------------------------------------- shared helpers


def stop_token_ids(tokenizer, model_generation_config=None) -> list[int]:
    """End-of-sequence ids: the tokenizer's and those of the model's generation config."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model_generation_config, "eos_token_id", None)
    if configured is not None:
        ids |= set(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(ids)


def decode_completion(tokenizer, token_ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[str, int]:
    """``(text, generated_length)``: tokens up to the first stop token (counted), decoded without special tokens."""
    token_ids = list(token_ids)
    length = len(token_ids)
    for position, token in enumerate(token_ids):
        if token in stop_ids:
            length = position + 1
            break
    return tokenizer.decode(token_ids[:length], skip_special_tokens=True), length


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise EvalInputError(f"unknown dtype {dtype!r}")
    return value


def _progress(total: int, desc: str | None, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------- transformers


class HFBackend:
    """transformers on CPU or GPU. Prompts are sorted by length and generated in left-padded batches.

    Sampling is seeded per batch (``seed + batch_index``), so results are reproducible for a given
    prompt list and batch size; greedy results do not depend on the batch size.
    """

    name = "hf"

    def __init__(self, model, tokenizer, *, batch_size: int = 8, progress: bool = True, source: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.source = source
        self.stats = GenerationStats()
        self.stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    @classmethod
    def load(cls, name_or_path: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 8,
             progress: bool = True, cache_dir: str | None = None) -> "HFBackend":
        from disc_ray.models import load_model_and_tokenizer

        check_tokenizer_files(name_or_path)
        device = resolve_device(device)
        model, tokenizer = load_model_and_tokenizer(name_or_path, dtype=resolve_dtype(dtype, device), device=device,
                                                    cache_dir=cache_dir)
        return cls(model, tokenizer, batch_size=batch_size, progress=progress, source=name_or_path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _max_prompt_tokens(self, max_new_tokens: int) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", None) or 1_000_000
        return max(limit - max_new_tokens, 1)

    def _left_pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq):] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], *, n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
                 seed: int = 0, desc: str | None = None) -> list[list[str]]:
        from transformers import GenerationConfig

        keep = self._max_prompt_tokens(max_new_tokens)
        encoded = [encode_prompt(self.tokenizer, p)[-keep:] for p in prompts]
        sampling = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=sampling, num_return_sequences=n,
            pad_token_id=self.pad_id, eos_token_id=self.stop_ids,
            **(dict(temperature=temperature, top_k=0, top_p=1.0) if sampling else {}),
        )
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[list[str] | None] = [None] * len(encoded)
        started = time.perf_counter()
        with _progress(len(encoded), desc, self.progress) as bar:
            for batch_index, start in enumerate(range(0, len(order), self.batch_size)):
                rows = order[start : start + self.batch_size]
                input_ids, attention_mask = self._left_pad([encoded[i] for i in rows])
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(seed + batch_index)
                    with sdpa_without_cudnn():
                        output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
                new_tokens = output[:, input_ids.shape[1]:].tolist()
                for j, i in enumerate(rows):
                    decoded = [decode_completion(self.tokenizer, new_tokens[j * n + k], self.stop_ids) for k in range(n)]
                    results[i] = [text for text, _ in decoded]
                    self.stats.generated_tokens += sum(length for _, length in decoded)
                bar.update(len(rows))
        self.stats.prompts += len(encoded)
        self.stats.sequences += len(encoded) * n
        self.stats.seconds += time.perf_counter() - started
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def loglikelihood(self, pairs: Sequence[tuple[Prompt, str]], *, desc: str | None = None) -> list[float]:
        """Contexts longer than the model's window lose tokens from the left; a continuation that does not fit
        with one context token raises :class:`EvalInputError`. The model is probed first
        (:func:`disc_ray.model_check.check_model`): a :class:`ModelCheckError` if its scores would not be exact."""
        from disc_ray.model_check import check_model
        from disc_ray.objectives import chunked_linear_divergence, output_head

        check_model(self.model, self.tokenizer)
        window = context_window(self.model)
        encoded = [fit_pair_to_window(*encode_pair(self.tokenizer, context, continuation), window) for context, continuation in pairs]
        encoded = [(ctx + cont, len(cont)) for ctx, cont in encoded]
        head = output_head(self.model)
        weight = head.weight.detach()
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
        results = [0.0] * len(encoded)
        no_logits = torch.zeros(0, dtype=torch.long, device=self.device)
        with _progress(len(encoded), desc, self.progress) as bar:
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                width = max(len(encoded[i][0]) for i in rows)
                input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):  # right padding: real tokens keep positions 0..L-1
                    input_ids[r, : len(encoded[i][0])] = torch.tensor(encoded[i][0])
                    attention_mask[r, : len(encoded[i][0])] = 1
                with sdpa_without_cudnn():
                    out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                     use_cache=False, output_hidden_states=True, logits_to_keep=no_logits)
                hidden = out.hidden_states[-1]
                for r, i in enumerate(rows):
                    ids, cont_len = encoded[i]
                    if cont_len == 0:
                        continue
                    first = len(ids) - cont_len  # position first - 1 predicts token `first`
                    rows_hidden = hidden[r, first - 1 : len(ids) - 1]
                    targets = torch.tensor(ids[first:], dtype=torch.long, device=self.device)
                    _, stats = chunked_linear_divergence(rows_hidden, weight, None, None, targets,
                                                         torch.ones(cont_len, device=self.device),
                                                         ce_scale=1.0, kl_scale=0.0, softcap=head.softcap,
                                                         logit_scale=head.logit_scale)
                    results[i] = -float(stats[0])
                bar.update(len(rows))
        return results

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- vLLM


def import_vllm():
    """``vllm``, or a :class:`BackendUnavailableError` saying how to install it."""
    try:
        import vllm
    except ImportError as err:
        raise BackendUnavailableError(f"the vllm backend needs vLLM, which is not installed here ({err}); {VLLM_INSTALL_HINT}") from None
    return vllm


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
                 seed: int = 0, desc: str | None = None) -> list[list[str]]:
        from vllm import SamplingParams

        encoded = [{"prompt_token_ids": encode_prompt(self.tokenizer, p)} for p in prompts]
        params = SamplingParams(n=n, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens, seed=seed,
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


# --------------------------------------------------------------------------- factory


def build_backend(name_or_path: str, cfg: EvalConfig) -> GenerationBackend:
    """The backend ``cfg.backend`` names, loaded with ``name_or_path``."""
    if cfg.backend == "hf":
        return HFBackend.load(name_or_path, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                              progress=cfg.progress, cache_dir=cfg.cache_dir)
    if cfg.backend == "vllm":
        return VLLMBackend(name_or_path, settings=cfg.vllm, dtype=cfg.dtype, seed=cfg.seed, progress=cfg.progress,
                           cache_dir=cfg.cache_dir)
    if cfg.backend == "ray_vllm":
        from disc_ray.evaluation.ray_backend import RayDataVLLMBackend

        return RayDataVLLMBackend(name_or_path, settings=cfg.vllm, dtype=cfg.dtype, seed=cfg.seed, cache_dir=cfg.cache_dir)
    raise EvalInputError(f"unknown backend {cfg.backend!r}")
