"""Cleaning (Ray tasks): Unicode normalization, whitespace collapse, empty / min / max length; each rule counted."""

from __future__ import annotations

import hashlib
import re
import unicodedata

import pyarrow as pa

from disc_ray.data.config import POLICY_REASONS, DataError
from disc_ray.data.readers import READ_SCHEMA, _locate, _preview

_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_UNICODE_SPACES = tuple(chr(c) for c in range(128, 0x3001) if chr(c).isspace())  # NBSP, U+2028, ideographic space ...


def _is_tidy(text: str, ascii_text: bool) -> bool:
    """True when the whitespace rules below would not change ``text``: substring checks, ~10x cheaper than
    running the rules (most documents need nothing)."""
    if text[:1].isspace() or text[-1:].isspace() or "  " in text or " \n" in text or "\n " in text or "\n\n\n" in text:
        return False
    if "\t" in text or "\r" in text or "\x0b" in text or "\x0c" in text or "\x1c" in text or "\x1d" in text or "\x1e" in text or "\x1f" in text:
        return False
    return ascii_text or not any(space in text for space in _UNICODE_SPACES)


def clean_text(text: str, normalize_unicode: str = "NFKC", collapse_whitespace: bool = True) -> tuple[str, bool, bool]:
    """(cleaned text, changed by normalization, changed by whitespace collapse)."""
    ascii_text = text.isascii()
    normalized = False
    if normalize_unicode != "none" and not ascii_text and not unicodedata.is_normalized(normalize_unicode, text):
        text, normalized = unicodedata.normalize(normalize_unicode, text), True
    collapsed = False
    if collapse_whitespace and not _is_tidy(text, ascii_text):
        before = text
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _HORIZONTAL_SPACE.sub(" ", text)
        text = _SPACE_AROUND_NEWLINE.sub("\n", text)
        text = _MANY_NEWLINES.sub("\n\n", text).strip()
        collapsed = text != before
    return text, normalized, collapsed


def document_hash(text: str) -> bytes:
    """8-byte BLAKE2b of the cleaned text: the document's id and its dedupe key."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def clean_block(block: pa.Table, *, normalize_unicode: str, collapse_whitespace: bool, min_chars: int, max_chars: int,
                strict: bool, line_based: bool) -> pa.Table:
    """Ray Data UDF: READ_SCHEMA block -> adds cleaned ``text``, ``doc_id``, ``doc_hash``, ``order_key`` and cleaning flags."""
    columns = block.to_pydict()
    texts, reasons, details = columns["text"], columns["reason"], columns["detail"]
    n = len(texts)
    doc_ids, hashes, normalized_flags, collapsed_flags = [""] * n, [0] * n, [False] * n, [False] * n
    for i in range(n):
        if reasons[i]:
            continue
        text = texts[i]
        reason = detail = ""
        text, normalized_flags[i], collapsed_flags[i] = clean_text(text, normalize_unicode, collapse_whitespace)
        if not text.strip():
            reason, detail = "empty", "document is empty or whitespace only"
        elif len(text) < min_chars:
            reason, detail = "below_min_chars", f"{len(text)} chars < data.min_chars={min_chars}"
        elif len(text) > max_chars:
            reason, detail = "above_max_chars", f"{len(text):,} chars > data.max_chars={max_chars:,}"
        if reason:
            if strict and reason not in POLICY_REASONS:
                raise DataError(f"{_locate(columns['source'][i], columns['row'][i], columns['line'][i] is not None)}: {reason}: {detail}")
            reasons[i], details[i], columns["preview"][i] = reason, detail, _preview(texts[i])
            texts[i] = None
            continue
        digest = document_hash(text)
        texts[i], doc_ids[i], hashes[i] = text, digest.hex(), int.from_bytes(digest, "little", signed=True)
    row_or_zero = [r if r is not None else 0 for r in columns["row"]]
    columns.update(
        text=texts, reason=reasons, detail=details, doc_id=doc_ids, doc_hash=hashes,
        order_key=[(f << 40) | r for f, r in zip(columns["file_index"], row_or_zero)],
        unicode_normalized=normalized_flags, whitespace_collapsed=collapsed_flags,
    )
    return pa.Table.from_pydict(columns, schema=CLEAN_SCHEMA)


CLEAN_SCHEMA = READ_SCHEMA.append(pa.field("doc_id", pa.string())).append(pa.field("doc_hash", pa.int64())) \
    .append(pa.field("order_key", pa.int64())).append(pa.field("unicode_normalized", pa.bool_())) \
    .append(pa.field("whitespace_collapsed", pa.bool_()))
