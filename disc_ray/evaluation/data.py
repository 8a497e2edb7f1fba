"""Reading evaluation files (JSONL) into typed items, with errors that name the file and line.

    items = load_mcq("../shared/data/bioasq_mcq/bioasq_mcq_hardest_full.jsonl")
    items = seeded_subset(items, limit=16, seed=0)   # the same 16 for every model and backend
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from pathlib import Path
from typing import Any, Sequence, TypeVar

from disc_ray import records
from disc_ray.evaluation.config import EvalInputError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class MCQItem:
    question: str
    options: tuple[str, ...]
    correct_index: int
    kind: str | None = None
    """``meta.kind`` of the row (e.g. ``restated`` / ``single``); accuracy is reported per kind."""
    item_id: str | None = None


@dataclasses.dataclass(frozen=True)
class QAItem:
    question: str
    answers: tuple[str, ...]
    """Accepted aliases; a prediction matching any of them is right."""


@dataclasses.dataclass(frozen=True)
class IFEvalItem:
    key: int
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict, ...]


def file_sha256(path: str | Path) -> str:
    """First 16 hex digits of the file's SHA-256: recorded with the scores so data changes are visible."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def read_jsonl(path: str | Path, what: str = "evaluation file") -> list[tuple[int, dict]]:
    """``(line_number, row)`` for every non-blank line; clear errors for a missing file or bad JSON."""
    return records.read_jsonl(path, what, error=EvalInputError)  # splits on "\n" only: U+2028 inside a string is text


def _fail(path, number: int, message: str):
    raise EvalInputError(f"{path}:{number}: malformed row, {message}")


def _non_empty_string(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def load_mcq(path: str | Path) -> list[MCQItem]:
    """Multiple-choice rows: ``question`` (str), ``options`` (>= 2 strings), ``correct_index`` (int)."""
    items = []
    for number, row in read_jsonl(path, "MCQ file"):
        question, options, correct = row.get("question"), row.get("options"), row.get("correct_index")
        if not _non_empty_string(question):
            _fail(path, number, "'question' must be a non-empty string")
        if not isinstance(options, list) or len(options) < 2 or not all(_non_empty_string(o) for o in options):
            _fail(path, number, "'options' must be a list of at least 2 non-empty strings")
        if len(options) > 26:
            _fail(path, number, "at most 26 options (lettered A-Z) are supported")
        if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct < len(options):
            _fail(path, number, f"'correct_index' must be an integer in [0, {len(options) - 1}], got {correct!r}")
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        kind = meta.get("kind", row.get("kind"))
        item_id = meta.get("id", row.get("id"))
        items.append(MCQItem(question.strip(), tuple(o.strip() for o in options), correct,
                             str(kind) if kind is not None else None, str(item_id) if item_id is not None else None))
    return items


def load_qa(path: str | Path) -> list[QAItem]:
    """Free-form rows: ``question`` and ``answer`` (a string) or ``answers`` / ``aliases`` (a list)."""
    items = []
    for number, row in read_jsonl(path, "QA file"):
        question = row.get("question")
        if not _non_empty_string(question):
            _fail(path, number, "'question' must be a non-empty string")
        answers = row.get("answers", row.get("aliases", row.get("answer")))
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers or not all(_non_empty_string(a) for a in answers):
            _fail(path, number, "needs 'answer' (a string) or 'answers' (a non-empty list of strings)")
        items.append(QAItem(question.strip(), tuple(a.strip() for a in answers)))
    return items


def load_ifeval(path: str | Path) -> list[IFEvalItem]:
    """IFEval rows: ``key``, ``prompt``, ``instruction_id_list`` and one ``kwargs`` dict per instruction."""
    items = []
    for number, row in read_jsonl(path, "IFEval file"):
        prompt, ids, kwargs = row.get("prompt"), row.get("instruction_id_list"), row.get("kwargs")
        if not _non_empty_string(prompt):
            _fail(path, number, "'prompt' must be a non-empty string")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            _fail(path, number, "'instruction_id_list' must be a non-empty list of strings")
        if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
            _fail(path, number, "'kwargs' must be a list with one object per instruction")
        items.append(IFEvalItem(int(row.get("key", number)), prompt, tuple(ids), tuple(kwargs)))
    return items


def load_prompts(path: str | Path) -> list[str]:
    """Rows with a ``prompt`` string (the drift suite's general prompts)."""
    prompts = []
    for number, row in read_jsonl(path, "prompts file"):
        if not _non_empty_string(row.get("prompt")):
            _fail(path, number, "'prompt' must be a non-empty string")
        prompts.append(row["prompt"])
    return prompts


def check_tokenizer_files(model_dir: str | Path) -> None:
    """A local model directory must carry its tokenizer (evaluation renders prompts with it)."""
    path = Path(model_dir).expanduser()
    if path.is_dir() and not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise EvalInputError(f"{path} has no tokenizer (tokenizer.json / tokenizer_config.json): "
                             "save the tokenizer next to the model (tokenizer.save_pretrained(dir))")


def seeded_subset(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """``limit`` items drawn with ``random.Random(seed)``, kept in file order; all items when limit is None."""
    if limit is None or limit >= len(items):
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]
