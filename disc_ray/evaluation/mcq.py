"""Closed-book multiple-choice domain suite (``domain_mcq``), scored two ways.

* ``ll``: the log-likelihood of each option's text as the assistant's reply to the chat-formatted
  question; ``accuracy_ll`` takes the option with the highest sum, ``accuracy_ll_norm`` the highest
  sum per UTF-8 byte of the option (lm-eval's ``acc_norm``). Deterministic; robust for small models.
* ``gen``: the paper's protocol. The chat-formatted question lists lettered options and asks for
  ``<answer>X</answer>``; ``n_samples`` completions at ``temperature``; majority vote over the parsed
  samples, ties (and no parsed sample) count as wrong. ``n_samples=1, temperature=0`` is greedy.
  ``invalid_gen``: % of samples without a parseable tag; ``tie_gen``: % of questions lost to a tie.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from disc_ray.evaluation.backends import GenerationBackend
from disc_ray.evaluation.config import SUITE_VERSIONS, EvalConfig
from disc_ray.evaluation.data import MCQItem, file_sha256, load_mcq, seeded_subset
from disc_ray.evaluation.prompts import (LETTERS, majority_vote, mcq_generation_prompt, mcq_loglikelihood_context,
                                         parse_answer_letter)
from disc_ray.evaluation.suite import SuiteResult, percent


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def score_mcq_loglikelihood(backend: GenerationBackend, items: Sequence[MCQItem]) -> list[dict]:
    """Per item: option log-likelihoods, the raw and length-normalized predictions, and correctness."""
    pairs = [(mcq_loglikelihood_context(item), option) for item in items for option in item.options]
    scores = backend.loglikelihood(pairs, desc="domain_mcq (log-likelihood)")
    records, offset = [], 0
    for item in items:
        option_scores = scores[offset : offset + len(item.options)]
        offset += len(item.options)
        normalized = [s / max(len(o.encode("utf-8")), 1) for s, o in zip(option_scores, item.options)]
        prediction, prediction_norm = _argmax(option_scores), _argmax(normalized)
        records.append(dict(option_loglikelihoods=option_scores, prediction_ll=prediction, prediction_ll_norm=prediction_norm,
                            correct_ll=prediction == item.correct_index, correct_ll_norm=prediction_norm == item.correct_index))
    return records


def score_mcq_generation(backend: GenerationBackend, items: Sequence[MCQItem], *, n_samples: int, temperature: float,
                         max_new_tokens: int, seed: int) -> list[dict]:
    """Per item: the completions, the parsed votes, the majority answer and correctness."""
    prompts = [mcq_generation_prompt(item) for item in items]
    completions = backend.generate(prompts, n=n_samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                                   desc="domain_mcq (generation)")
    records = []
    for item, samples in zip(items, completions):
        votes = [parse_answer_letter(text, len(item.options)) for text in samples]
        answer = majority_vote(votes)
        records.append(dict(completions=samples, votes=[LETTERS[v] if v is not None else None for v in votes],
                            prediction_gen=LETTERS[answer] if answer is not None else None,
                            correct_gen=answer == item.correct_index, invalid_samples=sum(v is None for v in votes),
                            tie=answer is None and any(v is not None for v in votes)))
    return records


def summarize_mcq(items: Sequence[MCQItem], records: Sequence[dict]) -> dict:
    """Accuracies in points over all items, and per ``meta.kind`` when the rows carry one."""
    def accuracies(indices: list[int]) -> dict:
        out = {"n": len(indices)}
        for key, name in (("correct_ll", "accuracy_ll"), ("correct_ll_norm", "accuracy_ll_norm"), ("correct_gen", "accuracy_gen")):
            if key in records[0]:
                out[name] = percent(sum(records[i][key] for i in indices), len(indices))
        return out

    metrics = accuracies(list(range(len(items))))
    if "invalid_samples" in records[0]:
        total_samples = sum(len(r["completions"]) for r in records)
        metrics["invalid_gen"] = percent(sum(r["invalid_samples"] for r in records), total_samples)
        metrics["tie_gen"] = percent(sum(r.get("tie", False) for r in records), len(records))
    kinds = defaultdict(list)
    for i, item in enumerate(items):
        if item.kind is not None:
            kinds[item.kind].append(i)
    if kinds:
        metrics["by_kind"] = {kind: accuracies(indices) for kind, indices in sorted(kinds.items())}
    return metrics


def run_mcq_suite(backend: GenerationBackend, cfg: EvalConfig) -> SuiteResult:
    items = seeded_subset(load_mcq(cfg.mcq_path), cfg.mcq_limit or cfg.limit, cfg.seed)
    records = [dict(id=item.item_id, question=item.question, options=list(item.options), correct=LETTERS[item.correct_index],
                    kind=item.kind) for item in items]
    if "ll" in cfg.mcq_modes:
        for record, scored in zip(records, score_mcq_loglikelihood(backend, items)):
            record.update(scored)
    if "gen" in cfg.mcq_modes:
        generated = score_mcq_generation(backend, items, n_samples=cfg.n_samples, temperature=cfg.temperature,
                                         max_new_tokens=cfg.mcq_max_new_tokens, seed=cfg.seed)
        for record, scored in zip(records, generated):
            record.update(scored)
    metrics = summarize_mcq(items, records)
    metrics.update(version=SUITE_VERSIONS["domain_mcq"], data=str(cfg.mcq_path), data_sha256=file_sha256(cfg.mcq_path),
                   modes=list(cfg.mcq_modes))
    if "gen" in cfg.mcq_modes:
        metrics.update(n_samples=cfg.n_samples, temperature=cfg.temperature, max_new_tokens=cfg.mcq_max_new_tokens)
    return SuiteResult(metrics=metrics, samples=records)
