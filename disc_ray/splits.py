"""Documents -> training examples, and DiSC split strategies (pure Python, no torch).

A document is tokenized ONCE (:mod:`disc_ray.tokenization`, shared with the Ray Data pipeline);
sentences found by the segmenter (:mod:`disc_ray.segmentation`) are mapped to token spans of that single
tokenization (re-tokenizing sentences separately would drop the whitespace between them and change
token ids). A *split* is a token span ``[start, end)`` of the
document: the teacher reads ``input_ids[:end]`` (the prefix, then the span), the student reads the
span alone. Every strategy returns such spans, so one teacher forward over the document serves all.

Long documents are cut into windows of at most ``max_length`` tokens at sentence boundaries; each
window is its own training example with its own split points (a sentence longer than a window is
cut into window-sized pieces). So the teacher's context never exceeds ``max_length`` tokens.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable

from disc_ray.segmentation import segment_sentences  # noqa: F401  (re-exported: splits.segment_sentences)

MIN_SPLIT_TOKENS = 2  # the loss covers tokens 2..L of a split, so a split needs at least 2 tokens
Span = tuple[int, int]


class DocumentSkipped(ValueError):
    """A document that yields no training example; ``reason`` is a short code that gets counted."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class SplitConfig:
    """How split points are chosen; see STRATEGIES for the names."""

    strategy: str = "sentence_boundary"
    num_splits: int = 5
    """k: split points per document (``sentence_boundary``: k-1 random sentences + the last one)."""
    suffix_tokens: int = 32
    """Suffix length for ``token_random_variable_suffix`` (0: run to the end of the document)."""
    seed: int = 0
    """Split points of a document depend only on (seed, document text): re-runs give identical rows."""

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"split.strategy: unknown strategy {self.strategy!r}; choose from {sorted(STRATEGIES)}")
        if self.num_splits < 1:
            raise ValueError(f"split.num_splits must be >= 1, got {self.num_splits}")
        if self.suffix_tokens < 0:
            raise ValueError(f"split.suffix_tokens must be >= 0, got {self.suffix_tokens}")


@dataclass
class DocumentExample:
    """One training example: a document (or a window of one) and its chosen splits.

    ``input_ids`` starts with ``num_special_prefix`` special tokens the tokenizer adds (e.g. BOS); the
    student sees those too, then the split's tokens. ``split_spans`` index into ``input_ids``.
    """

    input_ids: list[int]
    sentence_spans: list[Span]
    split_spans: list[Span] = field(default_factory=list)
    num_special_prefix: int = 0
    segmentation: str = "sentences"
    """``sentences`` (the segmenter's), or ``token_windows``: no sentence boundary was found, so the document
    was cut into pieces of :data:`disc_ray.tokenization.FALLBACK_WINDOW_TOKENS` tokens."""
    special_token_text: bool = False
    """The document's text holds a special token's string (e.g. ``<|im_end|>``), tokenized as plain text."""


# --------------------------------------------------------------------------- tokenization


def tokenize_document(text, tokenizer, max_length: int = 2048) -> list[DocumentExample]:
    """Tokenize a document once, find its sentences' token spans, window it to ``max_length`` tokens.

    A batch of one of :func:`disc_ray.tokenization.tokenize_documents`, the implementation the Ray Data
    pipeline runs too (special-token text stays text; a document with no sentence boundary falls back
    to token windows). Raises DocumentSkipped for inputs that give nothing to train on (not text,
    empty, no tokens) and ValueError when ``max_length`` leaves no room after the special prefix.
    """
    from disc_ray.tokenization import tokenize_documents  # numpy + tokenizer; imported here to keep this module light

    (result,) = tokenize_documents([text], tokenizer, max_length)
    if isinstance(result, DocumentSkipped):
        raise result
    return result


def _window_sentence_spans(spans: list[Span], max_content: int) -> list[list[Span]]:
    """Group consecutive sentence spans into windows of at most ``max_content`` tokens (cutting long sentences)."""
    pieces: list[Span] = []
    for start, end in spans:
        for cut in range(start, end, max_content):
            pieces.append((cut, min(cut + max_content, end)))
    windows: list[list[Span]] = [[]]
    for piece in pieces:
        window_start = windows[-1][0][0] if windows[-1] else piece[0]
        if windows[-1] and piece[1] - window_start > max_content:
            windows.append([])
        windows[-1].append(piece)
    return [w for w in windows if w]


def window_examples(ids: list[int], spans: list[Span], first: int, max_length: int) -> list[DocumentExample]:
    """Cut a tokenized document (special prefix ``ids[:first]``, sentence token ``spans``) into examples of at
    most ``max_length`` tokens at sentence boundaries; each example keeps the special prefix."""
    max_content = max_length - first
    if max_content < MIN_SPLIT_TOKENS:
        raise ValueError(f"max_length={max_length} leaves no room for document tokens after {first} special tokens")
    if spans[-1][1] - first <= max_content:  # the usual case: the whole document is one example
        return [DocumentExample(input_ids=ids[:spans[-1][1]], sentence_spans=spans, num_special_prefix=first)]
    prefix = ids[:first]
    examples = []
    for window in _window_sentence_spans(spans, max_content):
        start, end = window[0][0], window[-1][1]
        shift = start - first
        examples.append(
            DocumentExample(
                input_ids=prefix + ids[start:end],
                sentence_spans=[(s - shift, e - shift) for s, e in window],
                num_special_prefix=first,
            )
        )
    return examples


# --------------------------------------------------------------------------- split strategies
# Each strategy takes the sentence token spans of one example, the content token range
# [first, total) and a seeded RNG, and returns split spans. A split at the first sentence
# (or token ``first``) is never chosen: with no prefix the teacher knows nothing extra.


def _long_enough(spans: list[Span]) -> list[Span]:
    return [(s, e) for s, e in spans if e - s >= MIN_SPLIT_TOKENS]


def sentence_boundary(sentences, first, total, rng, cfg) -> list[Span]:
    """Paper default: k-1 random interior sentences plus always the last sentence."""
    candidates = list(range(1, len(sentences) - 1))
    chosen = rng.sample(candidates, min(cfg.num_splits - 1, len(candidates))) if len(sentences) > 1 else []
    if len(sentences) > 1:
        chosen.append(len(sentences) - 1)
    return _long_enough([sentences[i] for i in sorted(chosen)])


def middle_only(sentences, first, total, rng, cfg) -> list[Span]:
    """Ablation: one split at the middle sentence."""
    return _long_enough([sentences[len(sentences) // 2]]) if len(sentences) > 1 else []


def fixed_uniform_sentence(sentences, first, total, rng, cfg) -> list[Span]:
    """Ablation: k evenly spaced sentences, ending at the last one."""
    n = len(sentences)
    if n < 2:
        return []
    k = min(cfg.num_splits, n - 1)
    step = (n - 1) / k
    chosen = sorted({max(1, round(step * (i + 1))) for i in range(k)})
    return _long_enough([sentences[i] for i in chosen])


def _random_positions(first, total, rng, k) -> list[int]:
    candidates = range(first + 1, total - 1)
    return sorted(rng.sample(candidates, min(k, len(candidates))))


def _spans_to_next(positions: list[int], total: int) -> list[Span]:
    ends = positions[1:] + [total]
    return _long_enough(list(zip(positions, ends)))


def token_random(sentences, first, total, rng, cfg) -> list[Span]:
    """Ablation: k random token positions; each suffix runs to the next split point (no overlap)."""
    return _spans_to_next(_random_positions(first, total, rng, cfg.num_splits), total)


def token_uniform(sentences, first, total, rng, cfg) -> list[Span]:
    """Ablation: k evenly spaced token positions; each suffix runs to the next one."""
    content = total - first
    if content < 4:
        return []
    k = min(cfg.num_splits, content - 2)
    step = content / (k + 1)
    positions = sorted({first + max(1, round(step * (i + 1))) for i in range(k)})
    return _spans_to_next(positions, total)


def token_random_variable_suffix(sentences, first, total, rng, cfg) -> list[Span]:
    """Ablation: k random token positions, each suffix ``suffix_tokens`` long (0: to the end)."""
    positions = _random_positions(first, total, rng, cfg.num_splits)
    length = cfg.suffix_tokens or total
    return _long_enough([(p, min(p + length, total)) for p in positions])


STRATEGIES: dict[str, Callable[..., list[Span]]] = {
    "sentence_boundary": sentence_boundary,
    "middle_only": middle_only,
    "fixed_uniform_sentence": fixed_uniform_sentence,
    "token_random": token_random,
    "token_uniform": token_uniform,
    "token_random_variable_suffix": token_random_variable_suffix,
}


def document_rng(seed: int, text: str, window: int = 0) -> random.Random:
    """An RNG that depends only on the seed and the document's content (not on order or worker)."""
    digest = hashlib.sha256(f"{seed}\x00{window}\x00{text}".encode("utf-8", "surrogatepass")).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def choose_split_spans(example: DocumentExample, cfg: SplitConfig, rng: random.Random) -> list[Span]:
    """Apply the configured strategy to one example; short sentences (< 2 tokens) are never chosen."""
    sentences = example.sentence_spans
    return STRATEGIES[cfg.strategy](sentences, example.num_special_prefix, len(example.input_ids), rng, cfg)


def prepare_document(text, tokenizer, cfg: SplitConfig, max_length: int = 2048, with_splits: bool = True) -> list[DocumentExample]:
    """Text -> training examples with split spans (DiSC) or without (``with_splits=False``: ft, ft_kl).

    Raises DocumentSkipped with a reason code when nothing can be trained on; callers count these.
    """
    return choose_document_splits(text, tokenize_document(text, tokenizer, max_length), cfg, with_splits)


def choose_document_splits(text: str, examples: list[DocumentExample], cfg: SplitConfig,
                           with_splits: bool = True) -> list[DocumentExample]:
    """Sample each window's split spans (seeded by the document's text and window), keep the windows that
    can be trained on; the Ray Data pipeline calls this on its batched tokenization too."""
    if not with_splits:
        kept = [ex for ex in examples if len(ex.input_ids) - ex.num_special_prefix >= MIN_SPLIT_TOKENS]
        if not kept:
            raise DocumentSkipped("too_short", "document has fewer than 2 tokens")
        return kept
    kept = []
    for window, example in enumerate(examples):
        example.split_spans = choose_split_spans(example, cfg, document_rng(cfg.seed, text, window))
        if example.split_spans:
            kept.append(example)
    if not kept:
        if all(len(ex.sentence_spans) < 2 for ex in examples) and cfg.strategy in ("sentence_boundary", "middle_only", "fixed_uniform_sentence"):
            raise DocumentSkipped("single_sentence", "a sentence-level split needs at least 2 sentences")
        raise DocumentSkipped("no_split_points", f"strategy {cfg.strategy} found no split of >= {MIN_SPLIT_TOKENS} tokens")
    return kept


# --------------------------------------------------------------------------- Arrow rows
# The row schema the data pipeline writes and the trainer reads (lists of ints, Arrow-friendly).
ROW_COLUMNS = ("input_ids", "split_starts", "split_ends", "num_special_prefix")


def example_to_row(example: DocumentExample) -> dict:
    """A DocumentExample as a flat row: token ids, split spans as two int lists, the special-prefix length."""
    return {
        "input_ids": list(example.input_ids),
        "split_starts": [s for s, _ in example.split_spans],
        "split_ends": [e for _, e in example.split_spans],
        "num_special_prefix": example.num_special_prefix,
        "num_tokens": len(example.input_ids),
    }


def batch_to_examples(batch) -> list[DocumentExample]:
    """Rows of :func:`example_to_row` -> DocumentExamples (the one converter in that direction).

    ``batch`` is columnar, indexed by column name: a dict of numpy arrays or lists (``iter_batches(batch_format=
    "numpy")``, or ``{column: [row[column] for row in rows]}``), a pyarrow Table or a pandas DataFrame. Only the
    :data:`ROW_COLUMNS` are read; ``sentence_spans`` are not stored in rows and come back empty.
    """
    columns = {}
    for name in ROW_COLUMNS:
        column = batch[name]
        columns[name] = column.to_pylist() if hasattr(column, "to_pylist") else list(column)  # pyarrow, or numpy/list/pandas
    return [
        DocumentExample(
            input_ids=[int(t) for t in ids],
            sentence_spans=[],
            split_spans=[(int(s), int(e)) for s, e in zip(starts, ends)],
            num_special_prefix=int(prefix),
        )
        for ids, starts, ends, prefix in zip(*(columns[name] for name in ROW_COLUMNS))
    ]
