"""Readers (Ray tasks): read units -> READ_SCHEMA blocks; a record that cannot be read becomes a reject row
naming its file and line / row. JSON Lines and ``.json`` documents go through :mod:`disc_ray.records`."""

from __future__ import annotations

import json
import re
import zlib
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from disc_ray.data.config import _LINE_FORMATS, POLICY_REASONS, DataError
from disc_ray.data.sources import _is_json_document
from disc_ray.records import RecordFileError, iter_jsonl_lines, open_binary, read_json_records

_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates: JSON allows them as escapes, Arrow and tokenizers do not
READ_SCHEMA = pa.schema([
    ("text", pa.string()), ("source", pa.string()), ("row", pa.int64()), ("line", pa.int64()),
    ("file_index", pa.int32()), ("reason", pa.string()), ("detail", pa.string()), ("preview", pa.string()),
])
_BLOCK_CHARS = 8_000_000


def _preview(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _get_field(record: dict, dotted: str) -> Any:
    """``record[dotted]``, or the nested value at ``a.b.c``; raises KeyError naming what is missing."""
    if dotted in record:
        return record[dotted]
    value: Any = record
    for depth, part in enumerate(dotted.split(".")):
        if not isinstance(value, dict) or part not in value:
            where = ".".join(dotted.split(".")[:depth]) or "the record"
            keys = ", ".join(list(value)[:8]) if isinstance(value, dict) else type(value).__name__
            raise KeyError(f"no field {dotted!r} ({where} has: {keys})")
        value = value[part]
    return value


class _RecordBuffer:
    """Collects reader records and cuts them into Arrow blocks of ``batch_rows`` / ~8M characters."""

    def __init__(self, source: str, file_index: int, batch_rows: int, line_based: bool, strict: bool):
        self.source, self.file_index, self.batch_rows, self.line_based, self.strict = source, file_index, batch_rows, line_based, strict
        self.columns: dict[str, list] = {name: [] for name in READ_SCHEMA.names}
        self.chars = 0

    def add(self, row: int | None, text: str | None = None, reason: str = "", detail: str = "", raw: Any = ""):
        if reason and self.strict and reason not in POLICY_REASONS:
            raise DataError(f"{_locate(self.source, row, self.line_based)}: {reason}: {detail}")
        c = self.columns
        c["text"].append(text)
        c["source"].append(self.source)
        c["row"].append(row)
        c["line"].append(row + 1 if row is not None and self.line_based else None)
        c["file_index"].append(self.file_index)
        c["reason"].append(reason)
        c["detail"].append(detail)
        c["preview"].append(_preview(raw) if reason else "")
        self.chars += len(text) if text else 0

    def full(self) -> bool:
        return len(self.columns["row"]) >= self.batch_rows or self.chars >= _BLOCK_CHARS

    def flush(self) -> pa.Table | None:
        if not self.columns["row"]:
            return None
        table = pa.Table.from_pydict(self.columns, schema=READ_SCHEMA)
        self.columns = {name: [] for name in READ_SCHEMA.names}
        self.chars = 0
        return table


def _locate(source: str, row: int | None, line_based: bool) -> str:
    if row is None:
        return source
    return f"{source}:{row + 1}" if line_based else f"{source} row {row}"


def _read_lines(unit: dict, buffer: _RecordBuffer, fmt: str, text_field: str) -> Iterator[pa.Table]:
    stripe, stripes = unit["stripe"], unit["stripes"]
    seen_any = False
    for number, raw in iter_jsonl_lines(unit["path"]):  # splits on "\n" only (a raw U+2028 stays in its line)
        row = number - 1
        seen_any = True
        if row % stripes != stripe:
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            buffer.add(row, reason="invalid_utf8", detail=f"invalid UTF-8 byte 0x{raw[err.start]:02x} at byte {err.start}", raw=raw)
        else:
            if fmt == "text_lines":
                buffer.add(row, text=line)
            elif not line.strip():
                buffer.add(row, reason="blank_line", detail="blank line")
            else:
                _add_json_record(buffer, row, line, text_field)
        if buffer.full():
            yield buffer.flush()
    if not seen_any and stripe == 0:
        buffer.add(None, reason="empty_file", detail="file has no lines")


def _read_json_document(unit: dict, buffer: _RecordBuffer, text_field: str, records_key: str | None) -> Iterator[pa.Table]:
    """A ``.json`` file: its array of records (or an object's list of records), one buffer row per record.
    A file that turns out to hold JSON Lines (``Extra data`` after the first value) is read line by line."""
    try:
        records = read_json_records(unit["path"], records_key, record_field=text_field.split(".")[0])
    except RecordFileError as err:
        if "Extra data" in str(err):
            buffer.line_based = True
            yield from _read_lines(unit, buffer, "jsonl", text_field)
            return
        buffer.add(None, reason="malformed_json", detail=str(err).removeprefix(f"{unit['path']}").lstrip(": "), raw="")
        return
    if not records:
        buffer.add(None, reason="empty_file", detail="file holds no records")
    for row, record in enumerate(records):
        _add_json_record(buffer, row, record, text_field)
        if buffer.full():
            yield buffer.flush()


def _add_json_record(buffer: _RecordBuffer, row: int, line: str | Any, text_field: str) -> None:
    """One record: a JSON Lines line (str) or an already parsed record of a JSON document."""
    if isinstance(line, str):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            buffer.add(row, reason="malformed_json", detail=f"{err.msg} at column {err.colno}", raw=line)
            return
    else:
        record, line = line, json.dumps(line, ensure_ascii=False)[:400]
    if not isinstance(record, dict):
        what = "line" if buffer.line_based else "record"
        buffer.add(row, reason="not_object", detail=f"{what} holds a JSON {type(record).__name__}, not an object", raw=line)
        return
    try:
        value = _get_field(record, text_field)
    except KeyError as err:
        buffer.add(row, reason="missing_field", detail=err.args[0], raw=line)
        return
    if value is None:
        buffer.add(row, reason="missing_field", detail=f"field {text_field!r} is null", raw=line)
    elif not isinstance(value, str):
        buffer.add(row, reason="not_text", detail=f"field {text_field!r} is a {type(value).__name__}, not a string", raw=line)
    elif not value.isascii() and _SURROGATE.search(value):  # a \ud800 escape: valid JSON, not valid Unicode text
        buffer.add(row, reason="invalid_unicode", detail="text holds a lone surrogate code point (a \\ud800-\\udfff escape)", raw=line)
    else:
        buffer.add(row, text=value)


def _read_text_file(unit: dict, buffer: _RecordBuffer) -> Iterator[pa.Table]:
    with open_binary(unit["path"]) as handle:
        raw = handle.read()
    try:
        buffer.add(0, text=raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        buffer.add(0, reason="invalid_utf8", detail=f"invalid UTF-8 byte 0x{raw[err.start]:02x} at byte {err.start}", raw=raw[:200])
    return iter(())


def _text_array(batch: pa.RecordBatch, text_field: str) -> pa.Array:
    if text_field in batch.schema.names:
        return batch.column(text_field)
    parts = text_field.split(".")
    array = batch.column(parts[0])
    for part in parts[1:]:
        array = pc.struct_field(array, part)
    return array


def _add_table_rows(buffer: _RecordBuffer, batch: pa.RecordBatch, first_row: int, text_field: str) -> Iterator[pa.Table]:
    for offset, value in enumerate(_text_array(batch, text_field).to_pylist()):
        if value is None:
            buffer.add(first_row + offset, reason="missing_field", detail=f"{text_field!r} is null")
        else:
            buffer.add(first_row + offset, text=value)
        if buffer.full():
            yield buffer.flush()


def _read_parquet(unit: dict, buffer: _RecordBuffer, text_field: str) -> Iterator[pa.Table]:
    reader = pq.ParquetFile(unit["path"])
    column = text_field if text_field in reader.schema_arrow.names else text_field.split(".")[0]
    first_row = 0
    for group in range(reader.num_row_groups):
        rows = reader.metadata.row_group(group).num_rows
        if group % unit["stripes"] == unit["stripe"]:
            for batch in reader.iter_batches(batch_size=buffer.batch_rows, row_groups=[group], columns=[column]):
                yield from _add_table_rows(buffer, batch, first_row, text_field)
                first_row += batch.num_rows
        else:
            first_row += rows
    if reader.metadata.num_rows == 0 and unit["stripe"] == 0:
        buffer.add(None, reason="empty_file", detail="file has no rows")


def _read_arrow(unit: dict, buffer: _RecordBuffer, text_field: str) -> Iterator[pa.Table]:
    first_row, total = 0, 0
    with pa.memory_map(unit["path"]) as source:
        for index, batch in enumerate(pa.ipc.open_stream(source)):
            if index % unit["stripes"] == unit["stripe"]:
                yield from _add_table_rows(buffer, batch, first_row, text_field)
            first_row += batch.num_rows
            total += batch.num_rows
    if total == 0 and unit["stripe"] == 0:
        buffer.add(None, reason="empty_file", detail="file has no rows")


def read_units(units: dict, *, fmt: str, text_field: str, batch_rows: int, strict: bool,
               records_key: str | None = None) -> Iterator[pa.Table]:
    """Ray Data UDF: read units (``{"path", "file_index", "stripe", "stripes"}`` columns) -> READ_SCHEMA blocks."""
    for unit in units.to_pylist():
        document = _is_json_document(unit["path"], fmt)
        buffer = _RecordBuffer(unit["path"], unit["file_index"], batch_rows, fmt in _LINE_FORMATS and not document, strict)
        if document:
            blocks = _read_json_document(unit, buffer, text_field, records_key)
        elif fmt in _LINE_FORMATS:
            blocks = _read_lines(unit, buffer, fmt, text_field)
        elif fmt == "text":
            blocks = _read_text_file(unit, buffer)
        elif fmt == "parquet":
            blocks = _read_parquet(unit, buffer, text_field)
        else:
            blocks = _read_arrow(unit, buffer, text_field)
        try:
            yield from blocks
        except (OSError, EOFError, zlib.error, pa.ArrowException) as err:  # a truncated .gz, a damaged Parquet file ...
            raise DataError(f"{unit['path']}: cannot read the file ({type(err).__name__}: {err})") from None
        last = buffer.flush()
        if last is not None:
            yield last
