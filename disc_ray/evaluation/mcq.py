"""Closed-book multiple-choice domain suite (``domain_mcq``), scored two ways.

* ``ll``: the log-likelihood of each option's text as the assistant's reply to the chat-formatted
  question; ``accuracy_ll`` takes the option with the highest sum, ``accuracy_ll_norm`` the highest
  sum per UTF-8 byte of the option (lm-eval's ``acc_norm``). Deterministic; robust for small models.
* ``gen``: the paper's protocol. The chat-formatted question lists lettered options and asks for
  ``<answer>X</answer>``; ``n_samples`` completions at ``temperature``; majority vote over the parsed
  samples, ties (and no parsed sample) count as wrong. ``n_samples=1, temperature=0`` is greedy.
  ``invalid_gen``: % of samples without a parseable tag; ``tie_gen``: % of questions lost to a tie.
  ``accuracy_gen_lenient`` / ``invalid_gen_lenient``: the same samples read the way lm-eval's flexible
  extraction reads them (a bare letter or number, ``B. 24``, the option's text:
  :func:`~disc_ray.evaluation.prompts.parse_answer_lenient`); reported BESIDE the strict protocol.

Continuous scores (from the ``ll`` pass; they move before the argmax flips):

* ``prob_correct`` (points, 0-100): the probability on the correct option of a softmax over the options'
  length-normalized log-likelihoods (nats per UTF-8 byte, the normalization of ``accuracy_ll_norm``),
  ``100 * exp(n_c) / sum_j exp(n_j)``, averaged over items. Chance is ``100 / options`` only when the model
  is indifferent; the normalization removes ``accuracy_ll``'s preference for short options.
* ``margin`` (nats/byte): ``n_c - max_{j != c} n_j``, the correct option's lead over the best distractor,
  averaged over items; > 0 on an item exactly when ``accuracy_ll_norm`` counts it right.

Every score is also kept per item (``metrics["per_item"]``, see :mod:`disc_ray.evaluation.stats`) so two
runs can be compared item by item with paired intervals.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import Sequence

from disc_ray.evaluation.backends import GenerationBackend
from disc_ray.evaluation.config import SUITE_VERSIONS, EvalConfig
from disc_ray.evaluation.data import MCQItem, file_sha256, load_mcq, seeded_subset
from disc_ray.evaluation.prompts import (LETTERS, majority_vote, mcq_generation_prompt, mcq_loglikelihood_context,
                                         parse_answer_lenient, parse_answer_letter)
from disc_ray.evaluation.stats import per_item_table
from disc_ray.evaluation.suite import SuiteResult, percent

ACCURACY_KEYS = (("correct_ll", "accuracy_ll"), ("correct_ll_norm", "accuracy_ll_norm"), ("correct_gen", "accuracy_gen"),
                 ("correct_gen_lenient", "accuracy_gen_lenient"))
"""Per-item correctness field -> score name (points: 100 x the share of items right)."""
CONTINUOUS_KEYS = (("prob_correct", "prob_correct"), ("margin", "margin"))
"""Per-item continuous field -> score name (``prob_correct`` in points, ``margin`` in nats/byte)."""


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
                            correct_ll=prediction == item.correct_index, correct_ll_norm=prediction_norm == item.correct_index,
                            **continuous_scores(normalized, item.correct_index)))
    return records


def continuous_scores(normalized: Sequence[float], correct_index: int) -> dict:
    """``{"prob_correct", "margin"}`` of one item from its options' log-likelihoods per byte (nats/byte):
    ``prob_correct = 100 * softmax(normalized)[correct]`` (points), ``margin = normalized[correct] - max of the
    others`` (nats/byte; 0 for a one-option item). The softmax subtracts the maximum first (no overflow)."""
    top = max(normalized)
    weights = [math.exp(v - top) for v in normalized]
    distractors = [v for i, v in enumerate(normalized) if i != correct_index]
    return dict(prob_correct=100.0 * weights[correct_index] / sum(weights),
                margin=normalized[correct_index] - max(distractors) if distractors else 0.0)


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
        lenient = [parse_answer_lenient(text, item.options) for text in samples]
        lenient_answer = majority_vote(lenient)
        records.append(dict(completions=samples, votes=[LETTERS[v] if v is not None else None for v in votes],
                            prediction_gen=LETTERS[answer] if answer is not None else None,
                            correct_gen=answer == item.correct_index, invalid_samples=sum(v is None for v in votes),
                            tie=answer is None and any(v is not None for v in votes),
                            votes_lenient=[LETTERS[v] if v is not None else None for v in lenient],
                            correct_gen_lenient=lenient_answer == item.correct_index,
                            invalid_samples_lenient=sum(v is None for v in lenient)))
    return records


def item_key(item: MCQItem) -> str:
    """What pairs an item across runs: its ``meta.id``, else a hash of the question and options."""
    if item.item_id is not None:
        return item.item_id
    return "sha:" + hashlib.sha256(_item_text(item).encode("utf-8")).hexdigest()[:16]


def _item_text(item: MCQItem) -> str:
    return "\x1f".join([item.question, *item.options, str(item.correct_index)])


def summarize_mcq(items: Sequence[MCQItem], records: Sequence[dict]) -> dict:
    """Accuracies in points over all items, and per ``meta.kind`` when the rows carry one."""
    def accuracies(indices: list[int]) -> dict:
        out = {"n": len(indices)}
        for key, name in ACCURACY_KEYS:
            if key in records[0]:
                out[name] = percent(sum(records[i][key] for i in indices), len(indices))
        for key, name in CONTINUOUS_KEYS:
            if key in records[0]:
                out[name] = sum(records[i][key] for i in indices) / len(indices) if indices else 0.0
        return out

    metrics = accuracies(list(range(len(items))))
    if "invalid_samples" in records[0]:
        total_samples = sum(len(r["completions"]) for r in records)
        metrics["invalid_gen"] = percent(sum(r["invalid_samples"] for r in records), total_samples)
        metrics["tie_gen"] = percent(sum(r.get("tie", False) for r in records), len(records))
        if "invalid_samples_lenient" in records[0]:
            metrics["invalid_gen_lenient"] = percent(sum(r["invalid_samples_lenient"] for r in records), total_samples)
    kinds = defaultdict(list)
    for i, item in enumerate(items):
        if item.kind is not None:
            kinds[item.kind].append(i)
    if kinds:
        metrics["by_kind"] = {kind: accuracies(indices) for kind, indices in sorted(kinds.items())}
    values = {name: [100.0 * bool(r[key]) for r in records] for key, name in ACCURACY_KEYS if key in records[0]}
    values.update({name: [float(r[key]) for r in records] for key, name in CONTINUOUS_KEYS if key in records[0]})
    groups = {"by_kind": [item.kind if item.kind is not None else "" for item in items]} if kinds else None
    metrics["per_item"] = per_item_table([item_key(item) for item in items], values, groups=groups)
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
