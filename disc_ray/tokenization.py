"""Text -> tokens -> sentence token spans -> windows: the ONE implementation, for a batch of documents.

The core's single-document API (:func:`disc_ray.splits.tokenize_document` / ``prepare_document``) is a
batch of one; the Ray Data pipeline (:func:`disc_ray.data.prepare_documents`) calls it on batches of
``data.batch_rows`` documents. Numpy and the tokenizer only: no torch, no Ray.

* Each document is tokenized ONCE; sentences (:mod:`disc_ray.segmentation`) are mapped to token spans
  of that tokenization (a token belongs to the sentence holding its first non-space character).
* **Special-token text is text**: a document that contains ``<|im_end|>`` or ``<|endoftext|>`` is
  tokenized with those strings spelled out (``split_special_tokens``), never as control ids; only the
  tokens the tokenizer's post-processor adds (BOS, ...) are special. Such documents are flagged
  (:attr:`DocumentExample.special_token_text`) and counted in the data report.
* **Fallback**: a document whose segmenter finds one sentence (no boundary) but which holds more than
  ``FALLBACK_WINDOW_TOKENS`` tokens is cut into pieces of that many tokens, so it still trains;
  such examples carry ``segmentation == "token_windows"`` and are counted in the data report.
* Byte-level BPE tokenizers (GPT-2, SmolLM2, Qwen, Llama 3) take an offset-free path
  (:class:`ByteLevelTokens`); every other tokenizer, and any document whose tokens do not spell out its
  bytes, the tokenizer's offsets. The tests check that both paths give identical examples.
"""

from __future__ import annotations

import itertools
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from disc_ray.segmentation import segment_sentences
from disc_ray.splits import MIN_SPLIT_TOKENS, DocumentSkipped, window_examples

FALLBACK_WINDOW_TOKENS = 32
"""Piece length (tokens) of the fallback for a document in which no sentence boundary is found."""


# str.isspace() for every code point up to U+3000 (the last whitespace character in Unicode).
_WHITESPACE = np.array([chr(c).isspace() for c in range(0x3001)], dtype=bool)


def _whitespace_mask(text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return _WHITESPACE[np.minimum(codes, len(_WHITESPACE) - 1)] & (codes < len(_WHITESPACE))


def sentence_token_spans_batch(texts: list[str], token_offsets: list[list], firsts: list[int], lasts: list[int]) -> list[list[tuple[int, int]]]:
    """Sentence token spans of a batch of documents from the tokenizer's character offsets, vectorized over the batch.

    Document ``j`` has tokens ``[firsts[j], lasts[j])`` (``lasts[j] > firsts[j]``) with character
    ``token_offsets[j]``; a token belongs to the sentence holding its first non-space character (BPE
    tokenizers glue the space before a sentence to its first token), sentences come from
    :func:`disc_ray.segmentation.segment_sentences`. Returns per document contiguous, non-overlapping
    spans covering tokens ``firsts[j]..lasts[j]``.
    """
    counts = np.array([last - first for first, last in zip(firsts, lasts)], dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(
        offsets[first:last] for offsets, first, last in zip(token_offsets, firsts, lasts))), dtype=np.int64, count=2 * int(counts.sum()))
    return _sentence_spans_of_tokens(texts, flat[0::2], flat[1::2], counts, firsts)


def _sentence_spans_of_tokens(texts: list[str], starts: np.ndarray, ends: np.ndarray, counts: np.ndarray,
                              firsts: list[int]) -> list[list[tuple[int, int]]]:
    """Sentence token spans from the documents' content tokens: ``counts[j]`` tokens for document ``j``, whose
    character ``starts`` / ``ends`` (flat over the batch) are relative to that document; token ``i`` of
    document ``j`` is token ``firsts[j] + i`` of its ``input_ids``."""
    sentences = [segment_sentences(text) for text in texts]
    char_base = np.concatenate(([0], np.cumsum([len(text) for text in texts], dtype=np.int64)))
    token_base = np.concatenate(([0], np.cumsum(counts)))
    total = int(token_base[-1])
    doc_of_token = np.repeat(np.arange(len(texts)), counts)
    shift = char_base[:-1][doc_of_token]
    starts, ends = starts + shift, ends + shift
    # move a token's start past leading whitespace (never past its end): its first non-space character
    whitespace = _whitespace_mask("".join(texts))
    inside = np.flatnonzero(starts < ends)
    leading_space = inside[whitespace[starts[inside]]]
    if len(leading_space):
        non_space = np.append(np.flatnonzero(~whitespace), char_base[-1])
        following = non_space[np.searchsorted(non_space, starts[leading_space])]
        starts[leading_space] = np.minimum(following, ends[leading_space])
    # owner sentence = last sentence starting at or before that character (0 when none does)
    num_sentences = np.array([len(s) for s in sentences], dtype=np.int64)
    sentence_base = np.concatenate(([0], np.cumsum(num_sentences)))
    sentence_starts = np.fromiter(itertools.chain.from_iterable(
        (start + int(base) for start, _ in spans) for spans, base in zip(sentences, char_base)), dtype=np.int64, count=int(sentence_base[-1]))
    owner = np.searchsorted(sentence_starts, starts, side="right") - 1 - sentence_base[:-1][doc_of_token]
    owner = np.clip(owner, 0, np.maximum(num_sentences - 1, 0)[doc_of_token])
    # a span starts where the owner changes or a document starts
    new_span = np.ones(total, dtype=bool)
    new_span[1:] = owner[1:] != owner[:-1]
    new_span[token_base[:-1]] = True
    span_starts = np.flatnonzero(new_span)
    cuts = np.searchsorted(span_starts, token_base).tolist()
    span_starts_list, token_base_list = span_starts.tolist(), token_base.tolist()
    result = []
    for j, first in enumerate(firsts):
        doc_starts = span_starts_list[cuts[j]:cuts[j + 1]]
        local = first - token_base_list[j]
        result.append([(a + local, b + local) for a, b in zip(doc_starts, doc_starts[1:] + [token_base_list[j + 1]])])
    return result


def _special_bounds(ids: list[int], offsets: list, special: set[int]) -> tuple[int, int]:
    """(first, last): tokens ``[:first]`` are the special prefix, ``[last:]`` trailing special tokens (e.g. EOS)."""
    first = 0
    while first < len(ids) and ids[first] in special and tuple(offsets[first]) == (0, 0):
        first += 1
    last = len(ids)
    while last > first and ids[last - 1] in special and tuple(offsets[last - 1]) == (0, 0):
        last -= 1
    return first, last


@dataclass(frozen=True)
class ByteLevelTokens:
    """Surface length in UTF-8 bytes of every token of a byte-level BPE tokenizer (GPT-2, SmolLM2, Qwen, Llama 3).

    A byte-level tokenizer's tokens spell out the text's bytes exactly, so token offsets are a running sum
    of these lengths. That lets the pipeline call the tokenizer's offset-free ``encode_batch_fast`` (~20%
    cheaper than ``tokenizer(batch)`` itself) instead of building and converting an offset pair per token.
    A document whose token lengths do not add up to its byte count takes the offsets path instead.
    """

    lengths: np.ndarray
    """int64, token id -> bytes it stands for; -1 where not known (that document takes the offsets path)."""
    prefix: int
    """special tokens the tokenizer's post-processor puts before the text (e.g. BOS) ..."""
    suffix: int
    """... and after it (e.g. EOS)."""

    @classmethod
    def of(cls, tokenizer) -> ByteLevelTokens | None:
        """The table for ``tokenizer``, or None when it is not a plain byte-level BPE (normalizer, prefix space,
        SentencePiece, WordPiece ...): such tokenizers keep the offsets path."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_batch_fast"):  # tokenizers < 0.21
            return None
        spec = json.loads(backend.to_str())
        parts = _flat_pre_tokenizers(spec.get("pre_tokenizer"))
        if (spec.get("normalizer") is not None or spec["model"].get("type") != "BPE" or spec["model"].get("byte_fallback")
                or not any(p["type"] == "ByteLevel" for p in parts)
                or not all((p["type"] == "ByteLevel" and not p.get("add_prefix_space")) or p["type"] == "Digits"
                           or (p["type"] == "Split" and p.get("behavior") != "Removed") for p in parts)):
            return None
        plain = backend.encode("a b", add_special_tokens=False).ids
        full = backend.encode("a b", add_special_tokens=True).ids
        prefix = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
        if prefix is None:
            return None
        from tokenizers.pre_tokenizers import ByteLevel

        alphabet = set(ByteLevel.alphabet())  # the 256 characters standing for the 256 byte values
        vocab = backend.get_vocab(with_added_tokens=True)
        lengths = np.full(max(vocab.values()) + 1, -1, dtype=np.int64)
        for token, index in vocab.items():
            if alphabet.issuperset(token):
                lengths[index] = len(token)
        for index, added in backend.get_added_tokens_decoder().items():  # matched literally in the text
            lengths[index] = -1 if added.lstrip or added.rstrip else len(added.content.encode("utf-8"))
        return cls(lengths, prefix, len(full) - prefix - len(plain))

    def char_offsets(self, texts: list[str], ids: list[list[int]]) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(indices of the documents whose tokens spell out their text exactly, then those documents' content
        tokens' character starts and ends, flat, relative to each document, as the tokenizer's offsets give them)."""
        counts = np.fromiter((max(len(x) - self.prefix - self.suffix, 0) for x in ids), dtype=np.int64, count=len(ids))
        flat_ids = np.fromiter(itertools.chain.from_iterable(itertools.islice(x, self.prefix, len(x) - self.suffix) for x in ids),
                               dtype=np.int64, count=int(counts.sum()))
        lengths = np.where(flat_ids < len(self.lengths), self.lengths[np.minimum(flat_ids, len(self.lengths) - 1)], -1)
        token_base = np.concatenate(([0], np.cumsum(counts)))
        data = "".join(texts).encode("utf-8")
        num_chars = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        ascii_only = len(data) == int(num_chars.sum())
        doc_bytes = num_chars if ascii_only else np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))

        def per_document(values: np.ndarray) -> np.ndarray:
            running = np.concatenate(([0], np.cumsum(values)))
            return running[token_base[1:]] - running[token_base[:-1]]

        exact = (counts > 0) & (per_document(lengths < 0) == 0) & (per_document(lengths) == doc_bytes)
        keep = np.repeat(exact, counts)
        lengths, doc_of_token = lengths[keep], np.repeat(np.arange(len(texts)), counts)[keep]
        byte_base = np.concatenate(([0], np.cumsum(doc_bytes)))
        # running sum over the kept documents, moved to each document's place in the joined bytes
        ends = np.cumsum(lengths) + (byte_base[:-1] - np.concatenate(([0], np.cumsum(np.where(exact, doc_bytes, 0))))[:-1])[doc_of_token]
        starts = ends - lengths
        char_base = byte_base
        if not ascii_only:  # a token starting inside a multi-byte character starts at it; one ending inside it ends after it
            chars_before = np.zeros(len(data) + 1, dtype=np.int64)
            np.cumsum((np.frombuffer(data, np.uint8) & 0xC0) != 0x80, out=chars_before[1:])
            starts, ends = chars_before[np.minimum(starts + 1, len(data))] - 1, chars_before[ends]
            char_base = chars_before[byte_base]
        shift = char_base[:-1][doc_of_token]
        return np.flatnonzero(exact).tolist(), starts - shift, ends - shift


def _flat_pre_tokenizers(spec: dict | None) -> list[dict]:
    if spec is None:
        return []
    if spec["type"] == "Sequence":
        return [part for inner in spec["pretokenizers"] for part in _flat_pre_tokenizers(inner)]
    return [spec]


_BYTE_LEVEL: dict[int, tuple[Any, ByteLevelTokens | None]] = {}


def _byte_level_tokens(tokenizer) -> ByteLevelTokens | None:
    """The tokenizer's ByteLevelTokens (built once per tokenizer), or None: offsets path. Also None while the
    backend pads or truncates (a caller's earlier ``tokenizer(..., padding=True)`` leaves that set)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.padding is not None or backend.truncation is not None:
        return None
    if id(backend) not in _BYTE_LEVEL:  # the backend is kept with its table, so its id is not reused
        _BYTE_LEVEL[id(backend)] = (backend, ByteLevelTokens.of(tokenizer))
    return _BYTE_LEVEL[id(backend)][1]


_SPECIAL_TEXT: dict[int, tuple[Any, re.Pattern | None]] = {}


def special_token_pattern(tokenizer) -> re.Pattern | None:
    """A regex matching any of the tokenizer's special tokens written out as text (None: it has none)."""
    key = id(tokenizer)
    if key not in _SPECIAL_TEXT:  # the tokenizer is kept with its pattern, so its id is not reused
        names = set(getattr(tokenizer, "all_special_tokens", []) or [])
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            names |= {added.content for added in backend.get_added_tokens_decoder().values() if added.special}
        names = sorted((n for n in names if n), key=len, reverse=True)
        _SPECIAL_TEXT[key] = (tokenizer, re.compile("|".join(map(re.escape, names))) if names else None)
    return _SPECIAL_TEXT[key][1]


@contextmanager
def _special_tokens_as_text(tokenizer):
    """While inside, the backend spells special-token strings in the text out as ordinary text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_special_tokens"):
        yield
        return
    before = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        yield
    finally:
        backend.encode_special_tokens = before


def fallback_token_windows(first: int, last: int) -> list[tuple[int, int]]:
    """Tokens ``[first, last)`` cut into pieces of FALLBACK_WINDOW_TOKENS (a last piece too short to be a
    split joins the one before)."""
    pieces = [(start, min(start + FALLBACK_WINDOW_TOKENS, last)) for start in range(first, last, FALLBACK_WINDOW_TOKENS)]
    if len(pieces) > 1 and pieces[-1][1] - pieces[-1][0] < MIN_SPLIT_TOKENS:
        pieces[-2:] = [(pieces[-2][0], pieces[-1][1])]
    return pieces


def tokenize_documents(texts: list, tokenizer, max_length: int = 2048, *, use_offsets: bool = False) -> list:
    """Tokenize a batch of documents once each, find their sentences' token spans, window them to ``max_length``.

    Returns, per text, its list of DocumentExample (``input_ids`` start with the tokenizer's special prefix,
    e.g. BOS; a trailing EOS the tokenizer adds is dropped) or the DocumentSkipped saying why there is none
    (``not_text``, ``empty``, ``no_tokens``). One tokenizer call for the batch. Raises ValueError when
    ``max_length`` leaves no room for document tokens after the special prefix. ``use_offsets``: take the
    tokenizer's offsets even for a byte-level tokenizer (the reference the offset-free path is tested against).
    """
    results: list = [None] * len(texts)
    valid = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            results[i] = DocumentSkipped("not_text", f"expected a string document, got {type(text).__name__}")
        elif not text.strip():
            results[i] = DocumentSkipped("empty", "document is empty or whitespace only")
        else:
            valid.append(i)
    docs: list[tuple[int, list[int], int]] = []  # (index in texts, input_ids, first content token)
    spans: list[list[tuple[int, int]]] = []
    table = None if use_offsets else _byte_level_tokens(tokenizer)
    if valid and table is not None:
        valid_texts = [texts[i] for i in valid]
        with _special_tokens_as_text(tokenizer):
            ids = [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(valid_texts, add_special_tokens=True)]
        exact, starts, ends = table.char_offsets(valid_texts, ids)
        counts = np.array([len(ids[j]) - table.prefix - table.suffix for j in exact], dtype=np.int64)
        spans += _sentence_spans_of_tokens([valid_texts[j] for j in exact], starts, ends, counts, [table.prefix] * len(exact))
        docs += [(valid[j], ids[j][:len(ids[j]) - table.suffix], table.prefix) for j in exact]
        done = set(exact)
        valid = [i for j, i in enumerate(valid) if j not in done]
    if valid:
        with _special_tokens_as_text(tokenizer):  # the backend's setting is restored after the call
            encoding = tokenizer([texts[i] for i in valid], return_offsets_mapping=True, add_special_tokens=True,
                                 return_attention_mask=False, return_token_type_ids=False, split_special_tokens=True)
        special = set(tokenizer.all_special_ids)
        offset_docs = []  # (index, ids, offsets, first, last)
        for j, i in enumerate(valid):
            ids, offsets = encoding["input_ids"][j], encoding["offset_mapping"][j]
            first, last = _special_bounds(ids, offsets, special)
            if last == first:
                results[i] = DocumentSkipped("no_tokens", "document tokenizes to nothing")
            else:
                offset_docs.append((i, ids[:last], offsets, first, last))
        if offset_docs:
            spans += sentence_token_spans_batch([texts[d[0]] for d in offset_docs], [d[2] for d in offset_docs],
                                                [d[3] for d in offset_docs], [d[4] for d in offset_docs])
            docs += [(i, ids, first) for i, ids, _, first, _ in offset_docs]
    pattern = special_token_pattern(tokenizer)
    for (i, ids, first), doc_spans in zip(docs, spans):
        segmentation = "sentences"
        if len(doc_spans) == 1 and doc_spans[0][1] - first > FALLBACK_WINDOW_TOKENS:
            doc_spans, segmentation = fallback_token_windows(first, doc_spans[0][1]), "token_windows"
        examples = window_examples(ids, doc_spans, first, max_length)
        flagged = pattern is not None and pattern.search(texts[i]) is not None
        for example in examples:
            example.segmentation, example.special_token_text = segmentation, flagged
        results[i] = examples
    return results
