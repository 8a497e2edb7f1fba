"""The package's one reader of JSON Lines and JSON record files (pure Python, no Ray, no torch).

JSON Lines are split on ``\\n`` only, as the format says: a raw U+2028, U+2029 or U+0085 inside a JSON
string is valid JSON and stays part of its line (``str.splitlines()`` would cut the record there and
shift every later line number). A ``.json`` file holds either one array of records or an object with
a list of records under a key (``records_key``, e.g. ``data`` / ``rows``).

    for number, raw in iter_jsonl_lines("corpus.jsonl.gz"):   # (1-based line, bytes without the newline)
        ...
    rows = read_jsonl("eval.jsonl")                           # [(line, dict)], RecordFileError on bad JSON
    rows = read_json_records("corpus.json", records_key=None) # [dict-or-other], RecordFileError when not records
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator

RECORDS_KEYS = ("data", "records", "rows", "items", "examples", "documents", "train")
"""Keys tried, in order, for a ``.json`` object holding one list of records when no key is configured."""


class RecordFileError(ValueError):
    """A JSON / JSON Lines file that cannot be read; the message is one line naming the file (and line)."""


def open_binary(path: str | Path):
    """The file opened for binary reading; ``.gz`` files are decompressed on the fly."""
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def iter_jsonl_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """``(line_number, raw_bytes)`` for every physical line (1-based), without its ``\\n`` / ``\\r\\n`` and
    without a UTF-8 byte-order mark on line 1. Splits on ``\\n`` only. Raises OSError from the file."""
    with open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):  # binary iteration splits on b"\n" only
            raw = raw.rstrip(b"\r\n")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield number, raw


def read_jsonl(path: str | Path, what: str = "JSON Lines file", error=RecordFileError,
               allow_empty: bool = False, limit: int | None = None) -> list[tuple[int, dict]]:
    """``(line_number, record)`` for every non-blank line of a JSON Lines file (objects only); with ``limit``,
    for the first ``limit`` records only (the rest of the file is not read).

    Raises ``error`` (default RecordFileError) with one line ``path:line: ...`` for a missing file,
    invalid UTF-8, bad JSON or a line that is not an object, and (unless ``allow_empty``) for a file
    with no records.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    rows = []
    for number, raw in iter_jsonl_lines(path):
        if limit is not None and len(rows) >= limit:
            break
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise error(f"{path}:{number}: malformed row, invalid UTF-8 byte 0x{raw[err.start]:02x} at byte {err.start}") from None
        except json.JSONDecodeError as err:
            raise error(f"{path}:{number}: malformed row, not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise error(f"{path}:{number}: malformed row, expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    if not rows and not allow_empty:
        raise error(f"{what} is empty: {path}")
    return rows


def load_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON Lines file the package wrote itself (caches, logs); empty file -> []."""
    return [row for _, row in read_jsonl(path, allow_empty=True)]


def read_json_records(path: str | Path, records_key: str | None = None, record_field: str | None = None) -> list[Any]:
    """The records of a ``.json`` file: the top-level array, or the list under ``records_key`` of a top-level
    object (None: the first of RECORDS_KEYS present, or the object's only list-valued key). An object that
    has ``record_field`` (the text field) or no list at all is one record.

    Returns the records as parsed (the caller decides what a non-object record means). Raises
    RecordFileError (one line) for invalid UTF-8 / JSON, or a document that holds no list of records.
    """
    with open_binary(path) as handle:
        data = handle.read()
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise RecordFileError(f"{path}: invalid UTF-8 byte 0x{data[err.start]:02x} at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise RecordFileError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno}); "
                              "a file with one JSON object per line needs the .jsonl suffix or format jsonl") from None
    if isinstance(value, list):
        return value
    if not isinstance(value, dict):
        raise RecordFileError(f"{path}: holds a JSON {type(value).__name__}, not an array of records or an object with one")
    if records_key is not None:
        if not isinstance(value.get(records_key), list):
            raise RecordFileError(f"{path}: has no list of records under {records_key!r} (keys: {', '.join(list(value)[:8])})")
        return value[records_key]
    if record_field is not None and record_field in value:
        return [value]
    lists = [key for key, item in value.items() if isinstance(item, list)]
    key = next((k for k in RECORDS_KEYS if k in lists), lists[0] if len(lists) == 1 else None)
    if key is None:
        if not lists:
            return [value]  # one record in a .json file
        raise RecordFileError(f"{path}: object has several lists ({', '.join(lists[:8])}); set data.records_key (--records-key)")
    return value[key]
