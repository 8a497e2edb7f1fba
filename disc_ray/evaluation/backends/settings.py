"""What every backend applies identically: decoding, dtype and the context-window rule, resolved once per model.

``hf``, ``vllm`` and ``ray_vllm`` used to disagree in four ways on the same model: hf filled unset decoding
fields from ``generation_config.json`` while vLLM took only its EOS ids; ``dtype="auto"`` meant bf16 for hf and
the checkpoint's dtype for vLLM; hf cut long prompts while vLLM rejected them; ``ray_vllm`` returned identical
greedy samples for ``n > 1``. Here each of those is one rule, computed in one place and recorded in
``eval.json["backend_settings"]``:

* **Decoding** (:func:`resolve_backend_settings`): ``top_p``, ``top_k`` and ``repetition_penalty`` come from the
  evaluation config when set, else from the model's ``generation_config.json``, else neutral (1.0, 0 = off, 1.0).
  The stop ids are the tokenizer's EOS plus the generation config's ``eos_token_id``. Temperature, samples and
  length come from each suite's protocol (:meth:`BackendSettings.for_call`); the model's own ``temperature`` /
  ``do_sample`` and every other field of ``generation_config.json`` (``min_p``, ``no_repeat_ngram_size``, ...)
  are applied by NO backend and listed under ``ignored_generation_config``. Greedy calls (temperature 0) use
  neutral ``top_p`` / ``top_k`` (they cannot change an argmax); ``repetition_penalty`` applies to both.
* **dtype** (:func:`resolve_dtype_name`): ``auto`` is bfloat16 where the engine runs on CUDA (always for vLLM)
  and float32 on CPU, whatever the checkpoint stores; the resolved name is what every engine is given.
* **Window** (:func:`evaluation_window`, :func:`fit_prompt`): prompt + generated tokens must fit
  ``min(model's context window, max_model_len)``; longer prompts lose tokens from the LEFT (the instruction
  at the end is kept), on every backend, and are counted (``GenerationStats.truncated_prompts``, reported per
  suite as ``truncated_prompts``). Log-likelihood contexts follow the same rule
  (:func:`~disc_ray.evaluation.prompts.fit_pair_to_window`).
* **Samples**: ``n > 1`` at temperature 0 raises :class:`EvalInputError` on every backend (greedy samples are
  identical, so a majority vote over them would silently be one sample).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from disc_ray.evaluation.config import EvalInputError

MODEL_DECODING_FIELDS = ("top_p", "top_k", "repetition_penalty")
"""Fields taken from ``generation_config.json`` when the evaluation config leaves them unset (None)."""
NEUTRAL = {"top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
"""The values that change nothing (``top_k`` 0: off)."""
_IGNORED_FIELDS = {"temperature": 1.0, "do_sample": False, "min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                   "eta_cutoff": 0.0, "num_beams": 1, "no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
                   "length_penalty": 1.0, "min_new_tokens": 0, "min_length": 0, "max_new_tokens": None, "max_length": None,
                   "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
                   "forced_bos_token_id": None, "forced_eos_token_id": None, "sequence_bias": None, "guidance_scale": None}
"""``generation_config.json`` fields no backend applies (each suite's protocol sets temperature and length), with the
value that changes nothing: a field holding anything else is listed under ``ignored_generation_config``."""


@dataclasses.dataclass(frozen=True)
class Decoding:
    """The sampling of one ``generate`` call, identical on every backend (see :func:`hf_generation_kwargs`,
    :func:`vllm_sampling_kwargs`)."""

    n: int
    temperature: float
    top_p: float
    top_k: int
    """0: off."""
    repetition_penalty: float
    max_new_tokens: int
    seed: int
    stop_token_ids: tuple[int, ...]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), stop_token_ids=list(self.stop_token_ids))


@dataclasses.dataclass(frozen=True)
class BackendSettings:
    """One model's resolved settings (every backend; recorded in ``eval.json["backend_settings"]``)."""

    backend: str
    dtype: str
    """torch dtype name the engine computes in (``auto`` resolved)."""
    window: int | None
    """Tokens of prompt + generation (or context + continuation); None: unbounded (a model without a window)."""
    top_p: float
    top_k: int
    repetition_penalty: float
    stop_token_ids: tuple[int, ...]
    sources: dict
    """``{field: "evaluation config" | "generation_config.json" | "neutral"}`` for the model-level fields."""
    ignored_generation_config: dict
    """``generation_config.json`` fields that no backend applies, with their values."""
    truncation: str = "left"

    def for_call(self, *, n: int, temperature: float, max_new_tokens: int, seed: int, top_p: float | None = None) -> Decoding:
        """The :class:`Decoding` of one call. ``top_p``: the caller's own protocol's nucleus (e.g. the ``rephrase``
        baseline's 0.95), replacing the resolved one for this call; None keeps it. Raises :class:`EvalInputError`
        for ``n > 1`` at temperature 0, for ``n < 1``, a negative temperature, ``max_new_tokens < 1`` or a
        ``top_p`` outside (0, 1]."""
        check_sampling(n, temperature)
        if max_new_tokens < 1:
            raise EvalInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if top_p is not None and not 0 < top_p <= 1:
            raise EvalInputError(f"top_p must be in (0, 1], got {top_p}")
        greedy = temperature == 0
        nucleus = self.top_p if top_p is None else float(top_p)
        return Decoding(n=n, temperature=float(temperature), top_p=NEUTRAL["top_p"] if greedy else nucleus,
                        top_k=NEUTRAL["top_k"] if greedy else self.top_k, repetition_penalty=self.repetition_penalty,
                        max_new_tokens=max_new_tokens, seed=seed, stop_token_ids=self.stop_token_ids)

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), stop_token_ids=list(self.stop_token_ids))


def check_sampling(n: int, temperature: float) -> None:
    """Raise :class:`EvalInputError` unless ``n >= 1``, ``temperature >= 0`` and (``n == 1`` or ``temperature > 0``)."""
    if n < 1 or temperature < 0:
        raise EvalInputError(f"need n >= 1 and temperature >= 0, got n={n}, temperature={temperature}")
    if n > 1 and temperature == 0:
        raise EvalInputError(f"n={n} samples at temperature 0 would be {n} identical greedy completions; "
                             "use temperature > 0 or n_samples 1")


def stop_token_ids(tokenizer, model_generation_config=None) -> list[int]:
    """End-of-sequence ids: the tokenizer's and those of the model's generation config."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model_generation_config, "eos_token_id", None)
    if configured is not None:
        ids |= set(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(ids)


def resolve_device(device: str) -> str:
    """``auto``: ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype_name(dtype: str, *, on_cuda: bool) -> str:
    """The ONE dtype rule of every backend: ``auto`` -> ``bfloat16`` on CUDA, ``float32`` on CPU (the checkpoint's
    stored dtype does not matter); else a torch floating dtype name, checked. Raises :class:`EvalInputError`."""
    if dtype == "auto":
        return "bfloat16" if on_cuda else "float32"
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise EvalInputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return str(value).removeprefix("torch.")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """:func:`resolve_dtype_name` as a ``torch.dtype`` for a transformers model on ``device``."""
    return getattr(torch, resolve_dtype_name(dtype, on_cuda=device.startswith("cuda")))


def evaluation_window(model_window: int | None, max_model_len: int | None) -> int | None:
    """``min(model_window, max_model_len)`` over the values that are set (None: no bound)."""
    bounds = [w for w in (model_window, max_model_len) if w is not None]
    return min(bounds) if bounds else None


def resolve_backend_settings(backend: str, tokenizer, generation_config, *, model_window: int | None, dtype: str,
                             top_p: float | None = None, top_k: int | None = None,
                             repetition_penalty: float | None = None, max_model_len: int | None = None) -> BackendSettings:
    """The settings every backend applies to one model (rules in the module docstring). ``generation_config``: the
    model's ``GenerationConfig`` (or None); ``dtype``: already resolved (:func:`resolve_dtype_name`)."""
    chosen, sources = {}, {}
    overrides = {"top_p": top_p, "top_k": top_k, "repetition_penalty": repetition_penalty}
    for field in MODEL_DECODING_FIELDS:
        from_model = getattr(generation_config, field, None)
        if overrides[field] is not None:
            chosen[field], sources[field] = overrides[field], "evaluation config"
        elif from_model is not None:
            chosen[field], sources[field] = from_model, "generation_config.json"
        else:
            chosen[field], sources[field] = NEUTRAL[field], "neutral"
    ignored = {}
    for field, neutral in _IGNORED_FIELDS.items():
        value = getattr(generation_config, field, None)
        if value is not None and value != neutral and value not in ([], ()):
            ignored[field] = value
    stops = tuple(stop_token_ids(tokenizer, generation_config))
    if not stops:
        raise EvalInputError("the model has no end-of-sequence token (tokenizer or generation_config.json): generation could not stop")
    return BackendSettings(backend=backend, dtype=dtype, window=evaluation_window(model_window, max_model_len),
                           top_p=float(chosen["top_p"]), top_k=int(chosen["top_k"]),
                           repetition_penalty=float(chosen["repetition_penalty"]), stop_token_ids=stops, sources=sources,
                           ignored_generation_config=ignored)


def load_generation_config(source: str):
    """The ``GenerationConfig`` stored in a model folder, or None when it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(source)
    except (OSError, ValueError):
        return None


def fit_prompt(prompt_ids: Sequence[int], window: int | None, max_new_tokens: int) -> tuple[list[int], int]:
    """``(ids, tokens_cut)``: ``prompt_ids`` with tokens cut from the LEFT so that ``max_new_tokens`` more fit
    ``window``. Raises :class:`EvalInputError` when ``max_new_tokens`` alone fills the window."""
    if window is None:
        return list(prompt_ids), 0
    keep = window - max_new_tokens
    if keep < 1:
        raise EvalInputError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {window}-token "
                             "evaluation window; lower it or raise max_model_len")
    cut = max(len(prompt_ids) - keep, 0)
    return list(prompt_ids[cut:]), cut


def hf_generation_kwargs(decoding: Decoding, pad_token_id: int) -> dict:
    """``transformers.GenerationConfig`` keywords for ``decoding``. Every decoding field is explicit, so nothing
    is filled in from the model's ``generation_config`` (the hf backend also generates with an empty one)."""
    kwargs = dict(max_new_tokens=decoding.max_new_tokens, num_return_sequences=decoding.n, do_sample=not decoding.greedy,
                  pad_token_id=pad_token_id, eos_token_id=list(decoding.stop_token_ids),
                  repetition_penalty=decoding.repetition_penalty)
    if not decoding.greedy:
        kwargs.update(temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k)
    return kwargs


def vllm_sampling_kwargs(decoding: Decoding, *, n: int | None = None, seed: int | None = None) -> dict:
    """``vllm.SamplingParams`` keywords for ``decoding`` (``top_k`` off is vLLM's -1); ``n`` / ``seed`` override
    for engines that take one sample per request (``ray_vllm``)."""
    return dict(n=decoding.n if n is None else n, temperature=decoding.temperature, top_p=decoding.top_p,
                top_k=decoding.top_k if decoding.top_k > 0 else -1, repetition_penalty=decoding.repetition_penalty,
                max_tokens=decoding.max_new_tokens, seed=decoding.seed if seed is None else seed,
                stop_token_ids=list(decoding.stop_token_ids))
