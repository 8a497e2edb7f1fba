"""Prompt construction and answer parsing shared by every backend (only the engine call differs).

A prompt is either a list of chat messages (rendered with the model's chat template) or a plain
string (used as is). Both become token ids here, so ``hf`` and ``vllm`` see identical inputs.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence, Union

from disc_ray.evaluation.data import MCQItem, QAItem

Prompt = Union[str, list]
"""A plain string, or chat messages ``[{"role": "user", "content": "..."}]``."""

LETTERS = string.ascii_uppercase


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """The text the model reads: chat messages go through the chat template with the generation prompt."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat messages need a tokenizer with a chat template; this tokenizer has none")
    return tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt. A rendered chat template already holds its special tokens, so none are added."""
    text = render_prompt(tokenizer, prompt)
    return tokenizer(text, add_special_tokens=isinstance(prompt, str)).input_ids


def encode_pair(tokenizer, context: Prompt, continuation: str) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` for log-likelihood scoring, split the way lm-eval splits them:
    encode context and context+continuation, the continuation is what the whole adds. Trailing spaces
    of the context move to the continuation so word tokens are not split differently."""
    text = render_prompt(tokenizer, context)
    stripped = text.rstrip(" ")
    continuation = text[len(stripped):] + continuation
    add_special = isinstance(context, str)
    context_ids = tokenizer(stripped, add_special_tokens=add_special).input_ids
    whole_ids = tokenizer(stripped + continuation, add_special_tokens=add_special).input_ids
    if whole_ids[: len(context_ids)] != context_ids:  # the boundary merged into one token: fall back to separate encoding
        return context_ids, tokenizer(continuation, add_special_tokens=False).input_ids
    return context_ids, whole_ids[len(context_ids):]


def fit_pair_to_window(context_ids: Sequence[int], continuation_ids: Sequence[int], window: int | None) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` cut to fit a ``window``-token model: the context loses tokens from the
    left, the continuation is always scored in full, and at least one context token precedes it (the first
    continuation token must be predicted from something).

    Raises :class:`~disc_ray.evaluation.config.EvalInputError` when the context is empty or the continuation
    alone leaves no room for a context token."""
    from disc_ray.evaluation.config import EvalInputError

    if not context_ids:
        raise EvalInputError("log-likelihood scoring needs at least one context token before the continuation; got an empty context")
    if window is not None and len(continuation_ids) + 1 > window:
        raise EvalInputError(f"a continuation of {len(continuation_ids)} tokens does not fit the model's {window}-token "
                             "context window with at least one context token; shorten it or use a longer-context model")
    keep = len(context_ids) if window is None else window - len(continuation_ids)
    return list(context_ids[-keep:]), list(continuation_ids)


def context_window(model_or_config) -> int | None:
    """The most positions a model (or its config) takes: ``max_position_embeddings`` (GPT-2: ``n_positions``), or None."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


# --------------------------------------------------------------------------- multiple choice


def format_options(options: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))


def mcq_generation_prompt(item: MCQItem) -> list[dict]:
    """The paper's closed-book protocol: question, lettered options, answer in ``<answer>X</answer>``."""
    letters = ", ".join(LETTERS[: len(item.options)])
    content = (
        "Answer the following multiple-choice question. "
        f"Give your final answer as the letter of the correct option ({letters}) inside answer tags, "
        "for example <answer>A</answer>.\n\n"
        f"Question: {item.question}\n\n{format_options(item.options)}"
    )
    return [{"role": "user", "content": content}]


def mcq_loglikelihood_context(item: MCQItem) -> list[dict]:
    """Context for scoring each option's text as the assistant's reply (the options are not listed)."""
    return [{"role": "user", "content": item.question}]


_ANSWER_TAG = re.compile(r"<answer>\s*\(?\s*([A-Za-z])\s*\)?\s*(?:[.:)]|</answer>|\s|$)", re.IGNORECASE)


def parse_answer_letter(text: str, num_options: int) -> int | None:
    """Index of the option named in the LAST ``<answer>X</answer>`` tag; None when absent or out of range."""
    matches = _ANSWER_TAG.findall(text)
    if not matches:
        return None
    index = LETTERS.index(matches[-1].upper())
    return index if index < num_options else None


_BARE_CHOICE = re.compile(r"^\W*\(?([A-Za-z]|\d{1,2})\)?\W*$")
_LEADING_LETTER = re.compile(r"^\W*\(?([A-Z])(?:\)|[.:])(?:\s|$)")
_ANSWER_PHRASE = re.compile(r"(?i:answer|option|choice)\s*(?i:is)?\s*:?\s*\(?([A-Z])\)?(?![A-Za-z])")
_PUNCTUATION = re.compile(r"[^\w\s]")


def _fold(text: str) -> str:
    """Lower case, punctuation dropped, single spaces (lm-eval's ``ignore_case`` + ``ignore_punctuation``)."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def parse_answer_lenient(text: str, options: Sequence[str]) -> int | None:
    """The option a response names, read the way lm-eval's flexible extraction (``MultiChoiceRegexFilter``)
    reads free text; reported beside the strict tag protocol, never instead of it. In order:

    1. the strict ``<answer>X</answer>`` tag (:func:`parse_answer_letter`);
    2. the whole response is one option's text (case and punctuation ignored);
    3. the whole response is a bare letter or 1-based number: ``B``, ``(B)``, ``b.``, ``2``;
    4. it starts with a letter and ``.``/``)``/``:``: ``B. 24``, ``(C) the liver``;
    5. an answer phrase: ``the answer is C``, ``Answer: (C)``, ``option C``;
    6. an option's text appears in it: the earliest occurrence, longer options first where they overlap
       (lm-eval sorts the alternation longest-first so a prefix cannot shadow a longer option).

    Returns the option index, or None when nothing names an option in range."""
    count = len(options)
    strict = parse_answer_letter(text, count)
    if strict is not None:
        return strict
    folded_options = [_fold(o) for o in options]
    folded = _fold(text)
    if folded and folded in folded_options and folded_options.count(folded) == 1:
        return folded_options.index(folded)
    bare = _BARE_CHOICE.match(text.strip())
    if bare:
        token = bare.group(1)
        index = int(token) - 1 if token.isdigit() else LETTERS.index(token.upper())
        return index if 0 <= index < count else None
    for pattern in (_LEADING_LETTER, _ANSWER_PHRASE):
        match = pattern.search(text.strip())
        if match and LETTERS.index(match.group(1).upper()) < count:
            return LETTERS.index(match.group(1).upper())
    order = sorted((o for o in folded_options if o), key=len, reverse=True)
    if order and folded:
        found = re.search(r"\b(" + "|".join(re.escape(o) for o in order) + r")\b", folded)
        if found and folded_options.count(found.group(1)) == 1:
            return folded_options.index(found.group(1))
    return None


def majority_vote(votes: Sequence[int | None]) -> int | None:
    """The most frequent parsed vote (unparseable samples, None, do not vote); None when nothing parsed or the
    top count is tied. None counts as wrong: ties are wrong, as in the paper's protocol."""
    counts = collections.Counter(v for v in votes if v is not None).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


# --------------------------------------------------------------------------- free-form QA


def qa_prompt(item: QAItem) -> list[dict]:
    content = ("Answer the question with a short answer (a few words) inside answer tags, "
               f"for example <answer>Paris</answer>.\n\nQuestion: {item.question}")
    return [{"role": "user", "content": content}]


_FREE_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.IGNORECASE | re.DOTALL)


def extract_free_answer(text: str) -> str:
    """The last tagged answer, else the whole response."""
    matches = _FREE_ANSWER.findall(text)
    return matches[-1].strip() if matches else text.strip()


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles (a/an/the), single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    normalized = normalize_answer(prediction)
    return any(normalized == normalize_answer(a) for a in answers)


def contains_answer(prediction: str, answers: Sequence[str]) -> bool:
    """Any normalized alias appears in the normalized prediction as whole words."""
    padded = f" {normalize_answer(prediction)} "
    return any(normalize_answer(a) and f" {normalize_answer(a)} " in padded for a in answers)
