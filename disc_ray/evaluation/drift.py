"""Drift from the original model (``drift``): an early-warning metric that needs no labels.

The ORIGINAL model answers a fixed set of general prompts once, greedily, with its chat template;
the responses are cached as JSONL under ``<cache>/eval/drift/<hash>.jsonl``, the hash covering the
original model (path and weight files' sizes and times), the prompts and the generation settings.
Then, on the response tokens only (the chat-formatted prompt is context):

* ``kl``: mean per-token KL(original || adapted), in nats;
* ``nll``: the adapted model's mean per-token negative log-likelihood, in nats.

Both are kept per prompt (``per_item``: nats summed over the response, weighted by its tokens), so they get
95% intervals that resample prompts whole, and paired deltas (:mod:`disc_ray.evaluation.stats`).

Both come from :func:`compute_drift`, which reuses the training loss's chunked projection
(:func:`disc_ray.objectives.chunked_linear_divergence`), so no ``[tokens, vocab]`` tensor is built and
it can run during training on pre-tokenized batches (:func:`build_drift_batches`) without generating.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch

from disc_ray.evaluation.config import SUITE_VERSIONS, EvalConfig, EvalInputError
from disc_ray.evaluation.data import load_prompts, seeded_subset
from disc_ray.evaluation.prompts import context_window, encode_pair, fit_pair_to_window
from disc_ray.evaluation.stats import per_item_table
from disc_ray.evaluation.suite import SuiteResult
from disc_ray.records import load_jsonl

DRIFT_PROMPTS = (
    "Explain why the sky is blue to a ten-year-old.",
    "Write a short poem about autumn leaves.",
    "What are three tips for staying productive while working from home?",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "How do I make a simple tomato pasta sauce?",
    "What is the difference between a virus and a bacterium?",
    "Write a polite email asking my manager for a day off next Friday.",
    "Give me a Python function that checks whether a string is a palindrome.",
    "What causes the seasons on Earth?",
    "Suggest five names for a small coffee shop.",
    "Explain what a budget is and why it is useful.",
    "Translate 'Good morning, how are you?' into French and Spanish.",
    "What are the main benefits of regular exercise?",
    "Describe the water cycle step by step.",
    "Write a haiku about the ocean.",
    "How does a refrigerator keep food cold?",
    "List three famous paintings and who painted them.",
    "What should I pack for a weekend hiking trip?",
    "Explain the rules of tic-tac-toe.",
    "Why is sleep important for health?",
    "Write a two-sentence horror story.",
    "What is photosynthesis?",
    "Give me a recipe for pancakes.",
    "How can I improve my public speaking skills?",
    "Compare cats and dogs as pets in a few sentences.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Explain what machine learning is in simple terms.",
    "Write a short thank-you note to a teacher.",
    "What are some ways to reduce plastic waste at home?",
    "Describe a sunset using vivid language.",
    "How do vaccines help the body fight disease?",
    "Give three arguments for learning a second language.",
)


# --------------------------------------------------------------------------- reference responses (cached)


def model_fingerprint(name_or_path: str) -> dict:
    """What identifies a model for the cache: its resolved path and its weight/config files' sizes and times."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        from disc_ray.models import resolve_model_source

        resolved = resolve_model_source(name_or_path)
        path = Path(resolved)
        if not path.is_dir():  # a hub id: the name is all we have
            return {"source": name_or_path}
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin", ".json", ".jinja")))
    return {"source": str(path.resolve()), "files": [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in files]}


def reference_cache_path(original: str, prompts: Sequence[str], settings: dict, cache_dir: str | Path | None = None) -> Path:
    from disc_ray.models import default_cache_dir

    key = json.dumps({"model": model_fingerprint(original), "prompts": list(prompts), "settings": settings}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Path(cache_dir or default_cache_dir()) / "eval" / "drift" / f"{digest}.jsonl"


def drift_prompts(cfg: EvalConfig) -> list[str]:
    prompts = load_prompts(cfg.drift_prompts_path) if cfg.drift_prompts_path else list(DRIFT_PROMPTS)
    count = min(cfg.drift_num_prompts, cfg.limit or cfg.drift_num_prompts)
    return seeded_subset(prompts, count, cfg.seed)


def reference_responses(original: str, prompts: Sequence[str], *, max_new_tokens: int, backend=None,
                        cfg: EvalConfig | None = None) -> tuple[list[dict], Path]:
    """``([{"prompt", "response"}], cache_path)``: the original model's greedy responses, generated on a cache miss
    with ``backend`` (or a new ``cfg.backend`` backend for ``original``)."""
    cfg = cfg or EvalConfig()
    backend_name = backend.name if backend is not None else cfg.backend
    settings = {"max_new_tokens": max_new_tokens, "temperature": 0.0, "backend": backend_name, "chat_template": True}
    if cfg.repetition_penalty is not None:  # the one decoding override a greedy answer depends on (backends/settings.py)
        settings["repetition_penalty"] = cfg.repetition_penalty
    path = reference_cache_path(original, prompts, settings, cfg.cache_dir)
    if path.is_file():
        return load_jsonl(path), path
    own_backend = backend is None
    if own_backend:
        from disc_ray.evaluation.backends import build_backend

        backend = build_backend(original, cfg)
    try:
        completions = backend.generate([[{"role": "user", "content": p}] for p in prompts], n=1, temperature=0.0,
                                       max_new_tokens=max_new_tokens, seed=0, desc="drift (original's responses)")
    finally:
        if own_backend:
            backend.close()
    records = [{"prompt": p, "response": c[0]} for p, c in zip(prompts, completions)]
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".tmp-{os.getpid()}")
    staging.write_text("".join(json.dumps(r) + "\n" for r in records))
    staging.replace(path)
    return records, path


# --------------------------------------------------------------------------- batches and the metric


@dataclasses.dataclass
class DriftBatch:
    """Prompt+response sequences packed into one row (``position_ids`` restart at 0 per sequence)."""

    input_ids: torch.Tensor  # [1, S] long
    position_ids: torch.Tensor  # [1, S] long
    scored_positions: torch.Tensor  # [N] long: positions whose next-token distribution is compared
    target_ids: torch.Tensor  # [N] long: the response tokens they predict
    num_sequences: int


def build_drift_batches(tokenizer, records: Iterable[dict], max_tokens_per_batch: int = 2048,
                        window: int | None = None) -> list[DriftBatch]:
    """Tokenize ``{"prompt", "response"}`` records (chat template on the prompt) and pack them.

    Responses with no tokens are skipped. A sequence longer than ``max_tokens_per_batch`` gets a batch alone.
    ``window``: the model's context window; a longer prompt loses tokens from the left so the response is
    scored in full, and a response that does not fit with one prompt token raises ``EvalInputError``.
    """
    sequences = []
    for record in records:
        context, response = encode_pair(tokenizer, [{"role": "user", "content": record["prompt"]}], record["response"])
        if response:
            sequences.append(fit_pair_to_window(context, response, window))
    if not sequences:
        raise ValueError("drift: no response tokens to score (every reference response is empty)")
    batches, current = [], []

    def flush():
        ids, positions, scored, targets = [], [], [], []
        for context, response in current:
            offset = len(ids)
            ids += context + response
            positions += range(len(context) + len(response))
            scored += range(offset + len(context) - 1, offset + len(context) + len(response) - 1)
            targets += response
        batches.append(DriftBatch(torch.tensor([ids]), torch.tensor([positions]), torch.tensor(scored),
                                  torch.tensor(targets), len(current)))

    for sequence in sequences:
        if current and sum(len(c) + len(r) for c, r in current) + len(sequence[0]) + len(sequence[1]) > max_tokens_per_batch:
            flush()
            current = []
        current.append(sequence)
    flush()
    return batches


@torch.no_grad()
def compute_drift(original_model, adapted_model, tokenized_batches: Iterable[DriftBatch], chunk_size: int = 256) -> dict:
    """``{"drift_kl", "drift_nll", "drift_tokens"}``: mean per-token KL(original || adapted) and the adapted
    model's mean NLL (nats) over the batches' scored tokens. No generation; both models must share the
    vocabulary. Models are put in eval mode for the call and restored to their previous mode after."""
    from disc_ray.objectives import chunked_linear_divergence, last_hidden_states, output_head

    if original_model.config.vocab_size != adapted_model.config.vocab_size:
        raise ValueError("drift: the original and adapted models have different vocabularies")
    modes = (original_model.training, adapted_model.training)
    original_model.eval()
    adapted_model.eval()
    try:
        device = next(adapted_model.parameters()).device
        original_device = next(original_model.parameters()).device
        adapted_head, original_head = output_head(adapted_model), output_head(original_model)
        if (adapted_head.logit_scale, adapted_head.softcap) != (original_head.logit_scale, original_head.softcap):
            raise ValueError("drift: the original and adapted models transform their logits differently")
        adapted_weight = adapted_head.weight.detach()
        original_weight = original_head.weight.detach().to(device)
        nll_sum = kl_sum = 0.0
        tokens = 0
        for batch in tokenized_batches:
            adapted_hidden = last_hidden_states(adapted_model, batch.input_ids.to(device), batch.position_ids.to(device))
            adapted_hidden = adapted_hidden.index_select(0, batch.scored_positions.to(device))
            original_hidden = last_hidden_states(original_model, batch.input_ids.to(original_device),
                                                 batch.position_ids.to(original_device))
            original_hidden = original_hidden.index_select(0, batch.scored_positions.to(original_device)).to(device)
            rows = batch.target_ids.numel()
            _, stats = chunked_linear_divergence(adapted_hidden.detach(), adapted_weight, original_hidden, original_weight,
                                                 batch.target_ids.to(device), torch.ones(rows, device=device),
                                                 ce_scale=1.0, kl_scale=1.0, temperature=1.0, chunk_size=chunk_size,
                                                 softcap=adapted_head.softcap, logit_scale=adapted_head.logit_scale)
            nll_sum += float(stats[0])
            kl_sum += float(stats[1])
            tokens += rows
    finally:
        original_model.train(modes[0])
        adapted_model.train(modes[1])
    if tokens == 0:
        raise ValueError("drift: the batches hold no scored tokens")
    return {"drift_kl": max(kl_sum / tokens, 0.0), "drift_nll": nll_sum / tokens, "drift_tokens": tokens}


def run_drift_suite(adapted_model, tokenizer, original: str, cfg: EvalConfig, *, original_model=None,
                    reference_backend=None) -> SuiteResult:
    """Drift of ``adapted_model`` (a transformers model) from ``original`` (a path or name).

    ``original_model``: the original, already loaded (else loaded here on the adapted model's device);
    ``reference_backend``: a backend holding the original, used to generate the references on a cache miss.
    """
    prompts = drift_prompts(cfg)
    records, cache_path = reference_responses(original, prompts, max_new_tokens=cfg.drift_max_new_tokens,
                                              backend=reference_backend, cfg=cfg)
    if original_model is None:
        from disc_ray.models import load_model_and_tokenizer

        original_model, _ = load_model_and_tokenizer(original, dtype=next(adapted_model.parameters()).dtype,
                                                     device=next(adapted_model.parameters()).device, cache_dir=cfg.cache_dir)
    from disc_ray.model_check import check_model

    check_model(adapted_model, tokenizer)  # exact scores, or a ModelCheckError naming what is wrong
    check_model(original_model, tokenizer)
    window = context_window(adapted_model)
    ids, kl_sums, nll_sums, tokens, empty = [], [], [], [], 0
    for record in records:  # one prompt at a time: per-prompt sums for the intervals (packed == unpacked, tested)
        try:
            batches = build_drift_batches(tokenizer, [record], window=window)
        except EvalInputError:  # a response that does not fit the window: a clear error, never a skip
            raise
        except ValueError:  # the response has no tokens: counted below
            empty += 1
            continue
        drift = compute_drift(original_model, adapted_model, batches)
        ids.append(record["prompt"])
        kl_sums.append(drift["drift_kl"] * drift["drift_tokens"])
        nll_sums.append(drift["drift_nll"] * drift["drift_tokens"])
        tokens.append(drift["drift_tokens"])
    if not tokens:
        raise ValueError("drift: no response tokens to score (every reference response is empty)")
    total = sum(tokens)
    # per prompt: nats summed over its response tokens, weighted by its token count, so the score (and the
    # bootstrap, which resamples prompts whole) is the per-token mean over all response tokens
    per_item = per_item_table(ids, {"kl": kl_sums, "nll": nll_sums}, weights={"kl": tokens, "nll": tokens})
    metrics = dict(kl=max(sum(kl_sums) / total, 0.0), nll=sum(nll_sums) / total, n=len(records), tokens=total,
                   empty_responses_skipped=empty,
                   version=SUITE_VERSIONS["drift"], original=str(original), unit="nats/token",
                   max_new_tokens=cfg.drift_max_new_tokens, references=str(cache_path), per_item=per_item)
    return SuiteResult(metrics=metrics, samples=records)
