"""What every evaluation backend shares: the interface, generation statistics, prompt encoding under the window
rule, completion decoding (the settings themselves: :mod:`.settings`).

Every backend implements :class:`GenerationBackend`. Prompts are turned into token ids by
:mod:`disc_ray.evaluation.prompts` before they reach the engine, and completions are decoded with the
same tokenizer afterwards (:func:`decode_completion`), so with greedy decoding the backends produce the
same scores.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

from disc_ray.evaluation.backends.settings import BackendSettings, fit_prompt
from disc_ray.evaluation.config import BackendUnavailableError
from disc_ray.evaluation.prompts import Prompt, encode_pair, encode_prompt, fit_pair_to_window

VLLM_INSTALL_HINT = "pip install 'disc-ray[vllm]' (needs Linux and an NVIDIA GPU)"


@dataclasses.dataclass
class GenerationStats:
    """Throughput counters a backend accumulates (for progress lines and the benchmark)."""

    prompts: int = 0
    sequences: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    truncated_prompts: int = 0
    """Prompts (and log-likelihood contexts) cut from the left to fit the evaluation window."""
    truncated_tokens: int = 0

    def as_dict(self) -> dict:
        rate = lambda x: x / self.seconds if self.seconds else 0.0  # noqa: E731
        return dict(dataclasses.asdict(self), prompts_per_s=rate(self.prompts), tokens_per_s=rate(self.generated_tokens))


class GenerationBackend(Protocol):
    """What the suites need from an engine."""

    name: str
    tokenizer: object
    stats: GenerationStats
    settings: BackendSettings
    """Decoding, dtype and window, resolved once (:mod:`.settings`); recorded in ``eval.json``."""

    def generate(self, prompts: Sequence[Prompt], *, n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
                 seed: int = 0, desc: str | None = None, top_p: float | None = None) -> list[list[str]]:
        """``n`` completions per prompt (temperature 0: greedy; ``n > 1`` then raises :class:`EvalInputError`), decoded
        with ``settings.for_call`` (``top_p``: this call's nucleus, None: the resolved one). Returns ``[len(prompts)][n]`` strings."""

    def loglikelihood(self, pairs: Sequence[tuple[Prompt, str]], *, desc: str | None = None) -> list[float]:
        """Sum of log-probabilities (nats) of each continuation's tokens given its context."""

    def close(self) -> None:
        """Free the engine's memory."""


# --------------------------------------------------------------------------- shared helpers


def encode_prompts(tokenizer, prompts: Sequence[Prompt], settings: BackendSettings, max_new_tokens: int,
                   stats: GenerationStats) -> list[list[int]]:
    """Token ids of each prompt fitted to ``settings.window`` by the one truncation rule (:func:`fit_prompt`: cut from
    the left), counting the prompts and tokens cut in ``stats``. Every backend generates from these ids."""
    encoded = []
    for prompt in prompts:
        ids, cut = fit_prompt(encode_prompt(tokenizer, prompt), settings.window, max_new_tokens)
        stats.truncated_prompts += cut > 0
        stats.truncated_tokens += cut
        encoded.append(ids)
    return encoded


def encode_pairs(tokenizer, pairs: Sequence[tuple[Prompt, str]], settings: BackendSettings,
                 stats: GenerationStats) -> list[tuple[list[int], list[int]]]:
    """``(context_ids, continuation_ids)`` of each pair, the context cut from the left to fit ``settings.window``
    (:func:`~disc_ray.evaluation.prompts.fit_pair_to_window`), counted in ``stats`` like prompts."""
    encoded = []
    for context, continuation in pairs:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        fitted, continuation_ids = fit_pair_to_window(context_ids, continuation_ids, settings.window)
        cut = len(context_ids) - len(fitted)
        stats.truncated_prompts += cut > 0
        stats.truncated_tokens += cut
        encoded.append((fitted, continuation_ids))
    return encoded


def decode_completion(tokenizer, token_ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[str, int]:
    """``(text, generated_length)``: tokens up to the first stop token (counted), decoded without special tokens."""
    token_ids = list(token_ids)
    length = len(token_ids)
    for position, token in enumerate(token_ids):
        if token in stop_ids:
            length = position + 1
            break
    return tokenizer.decode(token_ids[:length], skip_special_tokens=True), length


def _progress(total: int, desc: str | None, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------- vLLM


def import_vllm():
    """``vllm``, or a :class:`BackendUnavailableError` saying how to install it."""
    try:
        import vllm
    except ImportError as err:
        raise BackendUnavailableError(f"the vllm backend needs vLLM, which is not installed here ({err}); {VLLM_INSTALL_HINT}") from None
    return vllm
