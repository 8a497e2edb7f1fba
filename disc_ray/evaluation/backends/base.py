"""What every evaluation backend shares: the interface, generation statistics, stop ids, decoding, devices.

Every backend implements :class:`GenerationBackend`. Prompts are turned into token ids by
:mod:`disc_ray.evaluation.prompts` before they reach the engine, and completions are decoded with the
same tokenizer afterwards (:func:`decode_completion`), so with greedy decoding the backends produce the
same scores.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import torch

from disc_ray.evaluation.config import BackendUnavailableError, EvalInputError
from disc_ray.evaluation.prompts import Prompt

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
                 seed: int = 0, desc: str | None = None, top_p: float = 1.0) -> list[list[str]]:
        """``n`` completions per prompt (temperature 0: greedy; ``top_p`` < 1: nucleus sampling). Returns ``[len(prompts)][n]`` strings."""

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


def import_vllm():
    """``vllm``, or a :class:`BackendUnavailableError` saying how to install it."""
    try:
        import vllm
    except ImportError as err:
        raise BackendUnavailableError(f"the vllm backend needs vLLM, which is not installed here ({err}); {VLLM_INSTALL_HINT}") from None
    return vllm
