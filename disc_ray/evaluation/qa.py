"""Free-form closed-book QA suite (``domain_qa``): greedy short answers scored against answer aliases.

``exact_match``: the normalized answer (SQuAD normalization) equals an alias; ``contains``: an alias
appears in the normalized answer as whole words. The answer is the last ``<answer>...</answer>``
tag's content, or the whole response when the model used no tag.
"""

from __future__ import annotations

from disc_ray.evaluation.backends import GenerationBackend
from disc_ray.evaluation.config import SUITE_VERSIONS, EvalConfig
from disc_ray.evaluation.data import file_sha256, load_qa, seeded_subset
from disc_ray.evaluation.prompts import contains_answer, exact_match, extract_free_answer, qa_prompt
from disc_ray.evaluation.suite import SuiteResult, percent


def run_qa_suite(backend: GenerationBackend, cfg: EvalConfig) -> SuiteResult:
    items = seeded_subset(load_qa(cfg.qa_path), cfg.limit, cfg.seed)
    completions = backend.generate([qa_prompt(item) for item in items], n=1, temperature=0.0,
                                   max_new_tokens=cfg.qa_max_new_tokens, seed=cfg.seed, desc="domain_qa")
    records = []
    for item, (completion,) in zip(items, completions):
        answer = extract_free_answer(completion)
        records.append(dict(question=item.question, answers=list(item.answers), completion=completion, answer=answer,
                            exact_match=exact_match(answer, item.answers), contains=contains_answer(answer, item.answers)))
    metrics = dict(
        exact_match=percent(sum(r["exact_match"] for r in records), len(records)),
        contains=percent(sum(r["contains"] for r in records), len(records)),
        n=len(records), version=SUITE_VERSIONS["domain_qa"], data=str(cfg.qa_path), data_sha256=file_sha256(cfg.qa_path),
        max_new_tokens=cfg.qa_max_new_tokens,
    )
    return SuiteResult(metrics=metrics, samples=records)
