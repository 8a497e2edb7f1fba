"""Ray Data corpus pipeline: read -> clean -> segment + tokenize + sample splits -> Parquet rows -> dedupe.

The corpus is processed ONCE, streaming, by Ray Data CPU tasks (never by the training workers), and the
rows the objective trains on are written to Parquet; training then reads those rows back with
``ray.data.read_parquet`` and Ray Train hands each rank an equal share (``streaming_split(equal=True)``).
Processing once gives exact counts before training starts (the trainer plans its steps from them),
writes every rejected record to a rejects file, and spares re-tokenizing the corpus every epoch.

    disc-ray data inspect ../shared/data/bioasq_mcq/bioasq_mcq_hardest_full.jsonl --text-field meta.context
    dataset, report = build_training_dataset(DataConfig(path=..., text_field="meta.context"), SplitConfig())

Stages (all fused into one Ray Data task per read unit, so a block goes from file to Parquet without
extra object-store hops):

* **read**: JSON Lines (``.jsonl``/``.jsonl.gz``), Parquet (file, folder, glob), plain text (one
  document per file in a folder: ``text``; one per line: ``text_lines``), a ``save_to_disk`` folder
  (``hf_disk``) or a hub dataset id (``hub``, needs a network). A record that cannot be read (bad JSON,
  invalid UTF-8, no text field) becomes a *reject* row naming its file and line/row; problems with the
  corpus as a whole (missing path, Parquet without the text column) raise :class:`DataError` on the
  driver before anything runs. A big file is read by several tasks, each taking every n-th line /
  row group, so line numbers stay exact.
* **clean**: Unicode normalization, whitespace collapse, empty / min / max length filters; each rule counted.
* **prepare**: the core's segmentation and split strategies (:mod:`disc_ray.splits`) on batches, with
  vectorized steps that give identical spans; the tests compare every row with
  :func:`disc_ray.splits.prepare_document`. For byte-level BPE tokenizers (GPT-2, SmolLM2, Qwen, Llama 3)
  token offsets come from each token's byte length (:class:`ByteLevelTokens`), so the tokenizer runs
  without building offsets; other tokenizers use its offsets. Split points depend only on the seed and
  the document's text, so re-runs give identical rows.
* **dedupe** (after the write, :func:`drop_duplicates`): exact duplicates of the cleaned text (64-bit
  BLAKE2b). The first copy in (file, row) order is kept, whatever the block order or worker count; the
  others' rows move to the rejects. The corpus is read once.

Output rows (Arrow lists of int32): ``input_ids``, ``split_starts``, ``split_ends`` (split ``i`` is
``input_ids[split_starts[i]:split_ends[i]]``: the teacher reads ``input_ids[:split_ends[i]]``, the
student the span alone), ``num_special_prefix``, ``num_tokens``, plus ``doc_id`` (hash of the cleaned
text), ``example_index`` (window of a long document), ``source`` and ``row`` naming the origin.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import hashlib
import heapq
import itertools
import json
import os
import re
import shutil
import tempfile
import time
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from disc_ray.records import RecordFileError, iter_jsonl_lines, open_binary, read_json_records
from disc_ray.splits import (
    DocumentExample,
    DocumentSkipped,
    SplitConfig,
    batch_to_examples,
    choose_document_splits,
)
from disc_ray.tokenization import tokenize_documents

if TYPE_CHECKING:  # Ray is imported where it is used, so DataConfig can be imported cheaply
    import ray.data

FORMATS = ("auto", "jsonl", "json", "parquet", "text", "text_lines", "hf_disk", "hub", "processed")
NORMALIZATION_FORMS = ("NFC", "NFKC", "NFD", "NFKD", "none")
DEFAULT_TOKENIZER = "smollm2-135m-instruct"  # disc_ray.models.EMBEDDED_DEFAULT (not imported: it pulls in torch)

# Reasons a record is dropped. Policy filters are configured choices, counted but never errors;
# everything else is bad input and raises under ``strict``.
POLICY_REASONS = frozenset({"duplicate", "below_min_chars", "above_max_chars", "blank_line"})
REPORT_FILE = "data_report.json"
REJECTS_FILE = "rejects.jsonl"
KEPT_DIR, REJECTED_DIR = "status=kept", "status=rejected"
TRAIN_COLUMNS = ["input_ids", "split_starts", "split_ends", "num_special_prefix", "num_tokens",
                 "doc_id", "example_index", "source", "row"]
_LINE_FORMATS = ("jsonl", "json", "text_lines")  # "json": a JSON document file is read by record, see _is_json_document


class DataError(ValueError):
    """Bad corpus or config. The message is one line naming the file and line/row (or the config key)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class DataConfig:
    """Where the corpus is and how it is read, cleaned and cut into training rows."""

    path: str | None = None
    """JSONL(.gz) file or folder, Parquet file/folder/glob, text folder or file, ``save_to_disk`` folder,
    hub dataset id (``format: hub``), or a folder written by a previous run (``processed``)."""
    format: str = "auto"
    """auto | jsonl | json | parquet | text (one document per file) | text_lines (one per line) | hf_disk | hub | processed.
    ``auto`` decides from the path: a folder by its files, ``*.txt`` file -> text_lines; ``*.json`` files are read as
    one JSON document each (an array of records, or an object with a list of records), ``*.jsonl`` line by line."""
    records_key: str | None = None
    """``.json`` files holding an object: the key of its list of records (None: the first of
    :data:`disc_ray.records.RECORDS_KEYS` present, or the object's only list)."""
    text_field: str = "text"
    """Field holding the document; dotted paths (``meta.context``) reach into nested JSON / Parquet structs."""
    hf_split: str = "train"
    """Split of a hub dataset or of a saved ``DatasetDict``."""
    normalize_unicode: str = "NFKC"
    """NFC | NFKC | NFD | NFKD | none"""
    collapse_whitespace: bool = True
    """Runs of spaces/tabs -> one space, CRLF -> LF, 3+ newlines -> 2, strip; paragraph breaks are kept."""
    dedupe: bool = True
    """Drop exact duplicates of the cleaned text (the first in file/row order is kept). Done after the rows
    are written: 16 bytes per document on the driver, and a rewrite of the files that hold a duplicate."""
    min_chars: int = 1
    max_chars: int = 5_000_000
    """Longer documents are dropped (``above_max_chars``) rather than cut into thousands of windows."""
    max_length: int = 2048
    """Tokens per training example; longer documents are cut into windows at sentence boundaries."""
    tokenizer: str = DEFAULT_TOKENIZER
    """Model name or path given to :func:`disc_ray.models.load_tokenizer` (the model being adapted)."""
    strict: bool = False
    """Raise on the first bad record (naming file and line) instead of counting it as a reject."""
    rejects_path: str | None = None
    """JSONL file listing every dropped record (path, row, line, reason, detail); default ``<output_dir>/rejects.jsonl``."""
    output_dir: str | None = None
    """Where processed rows are written (Parquet); default: a new temporary folder. Must be reachable
    from every node on a multi-node cluster (shared filesystem)."""
    concurrency: int | None = None
    """Most pipeline tasks at once (None: as many as the cluster's CPUs allow)."""
    num_cpus_per_worker: float = 1.0
    """CPUs reserved by each pipeline task; the tokenizer runs with that many threads."""
    batch_rows: int = 512
    """Records per block read, and documents per tokenizer call; blocks are also cut at ~8M characters."""
    synthetic_documents: int = 64
    """Size of the built-in synthetic corpus the main job uses when ``path`` is None."""

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"data.format must be one of {list(FORMATS)}, got {self.format!r}")
        if self.normalize_unicode not in NORMALIZATION_FORMS:
            raise ValueError(f"data.normalize_unicode must be one of {list(NORMALIZATION_FORMS)}, got {self.normalize_unicode!r}")
        if self.min_chars < 0 or self.max_chars < max(self.min_chars, 1):
            raise ValueError(f"data.min_chars/data.max_chars must satisfy 0 <= min_chars <= max_chars, got {self.min_chars}, {self.max_chars}")
        if self.max_length < 8:
            raise ValueError(f"data.max_length must be >= 8 tokens, got {self.max_length}")
        if not self.text_field or any(not part for part in self.text_field.split(".")):
            raise ValueError(f"data.text_field must be a field name or dotted path, got {self.text_field!r}")
        if not self.tokenizer:
            raise ValueError("data.tokenizer must name a model or tokenizer")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"data.concurrency must be >= 1 or None, got {self.concurrency}")
        if self.num_cpus_per_worker <= 0:
            raise ValueError(f"data.num_cpus_per_worker must be > 0, got {self.num_cpus_per_worker}")
        if self.batch_rows < 1:
            raise ValueError(f"data.batch_rows must be >= 1, got {self.batch_rows}")


@dataclass
class DataReport:
    """What the pipeline did: every record read is either kept or dropped for a counted reason."""

    path: str = ""
    corpus_format: str = ""
    files: int = 0
    records_read: int = 0
    """Lines / rows / files read, including the ones that could not be parsed (and empty files)."""
    documents_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    cleaned: dict[str, int] = field(default_factory=dict)
    """Documents changed by each cleaning rule (``unicode_normalized``, ``whitespace_collapsed``)."""
    examples: int = 0
    """Training rows (a long document gives one per window)."""
    tokens: int = 0
    splits: int = 0
    split_tokens: int = 0
    """Tokens the student reads (sum of split lengths)."""
    tokens_per_example: dict[str, float] = field(default_factory=dict)
    """min / mean / p50 / p95 / max of ``num_tokens``."""
    token_window_fallback: int = 0
    """Kept documents in which the segmenter found no sentence boundary, cut into token windows instead."""
    special_token_text: int = 0
    """Kept documents whose text holds a special token's string (e.g. ``<|im_end|>``), tokenized as text."""
    output_dir: str = ""
    rejects_path: str = ""
    seconds: float = 0.0

    @property
    def documents_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DataReport:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def shard_sizes(self, world_size: int) -> tuple[int, int]:
        """(rows per rank, rows left out) when ``examples`` are split equally over ``world_size`` ranks."""
        return self.examples // world_size, self.examples % world_size

    def format(self, paths: bool = True) -> str:
        """A few lines for people: counts, drops by reason, token statistics (and where the files are)."""
        stats = self.tokens_per_example
        lines = [
            f"{self.path} ({self.corpus_format}, {self.files} file{'s' if self.files != 1 else ''}): "
            f"read {self.records_read:,} records, kept {self.documents_kept:,} documents, dropped {self.documents_dropped:,}",
            "  dropped: " + (", ".join(f"{reason} {n:,}" for reason, n in sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"),
            "  cleaned: " + (", ".join(f"{rule} {n:,}" for rule, n in sorted(self.cleaned.items())) or "nothing changed"),
            f"  examples {self.examples:,}, tokens {self.tokens:,}, splits {self.splits:,} ({self.split_tokens:,} student tokens)",
        ]
        lines.append(f"  segmentation: {self.token_window_fallback:,} documents without a sentence boundary cut into token windows; "
                     f"{self.special_token_text:,} documents hold special-token text (tokenized as text)")
        if stats:
            lines.append("  tokens per example: " + ", ".join(f"{k} {v:,.0f}" if k != "mean" else f"{k} {v:,.1f}" for k, v in stats.items()))
        if self.dropped.get("missing_field", 0) == self.records_read > 0:
            lines.append("  hint: no record has the text field; set data.text_field (--text-field), e.g. meta.context")
        if paths:
            lines.append(f"  rows: {Path(self.output_dir) / KEPT_DIR}  rejects: {self.rejects_path}")
        lines[-1] += f"  ({self.seconds:.1f} s)"
        return "\n".join(lines)


# --------------------------------------------------------------------------- corpus discovery (driver)


@dataclass(frozen=True)
class CorpusPlan:
    """The files to read (sorted: their index orders duplicates) and the resolved format."""

    format: str
    files: tuple[str, ...]
    path: str


def _expand_files(path: str) -> list[Path]:
    if any(ch in path for ch in "*?["):
        files = sorted(Path(p) for p in globlib.glob(os.path.expanduser(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"data.path: no files match {path}")
        return files
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data.path: {root} does not exist")
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))


def _suffix_format(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".txt", ".txt.gz", ".md")):
        return "text"
    return None


def _detect_format(path: str, files: list[Path]) -> str:
    root = Path(path).expanduser()
    if root.is_dir() and (root / REPORT_FILE).is_file():
        return "processed"
    if root.is_dir() and any((root / name).is_file() for name in ("state.json", "dataset_dict.json")):
        return "hf_disk"
    formats = {_suffix_format(f) for f in files} - {None}
    if len(formats) != 1:
        found = ", ".join(sorted(formats)) or "no .jsonl/.parquet/.txt files"
        raise DataError(f"data.format: cannot tell the format of {path} ({found}); set data.format (--format)")
    (fmt,) = formats
    if fmt == "text" and root.is_file():
        return "text_lines"  # a single text file: one document per line
    return fmt


def _hf_disk_files(root: Path, split: str) -> list[Path]:
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text())["splits"]
        if split not in splits:
            raise DataError(f"data.hf_split: {root} has splits {splits}, not {split!r}")
        root = root / split
    state = root / "state.json"
    if not state.is_file():
        raise DataError(f"data.path: {root} is not a Hugging Face save_to_disk folder (no state.json)")
    return [root / entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]


def _looks_like_hub_id(path: str) -> bool:
    """``org/name`` that is not a local path (auto format then tries the hub)."""
    return (path.count("/") == 1 and not path.startswith((".", "/", "~")) and not any(ch in path for ch in "*?[")
            and not Path(path).expanduser().exists())


def _hub_files(dataset_id: str, split: str) -> list[Path]:
    try:
        import datasets

        loaded = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # no network, unknown id, gated dataset ...
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise DataError(f"data.path: {dataset_id!r} is not a local path and cannot be loaded as a hub dataset "
                        f"(split {split!r}): {type(err).__name__}: {first_line}") from None
    return [Path(entry["filename"]) for entry in loaded.cache_files]


def _text_column_type(schema: pa.Schema, text_field: str, source: str) -> None:
    """Check that ``text_field`` (dotted: struct fields) is a string column of ``schema``, else DataError."""
    if text_field in schema.names:
        parts, kind = [text_field], schema.field(text_field).type
    else:
        parts = text_field.split(".")
        if parts[0] not in schema.names:
            raise DataError(f"{source}: data.text_field {text_field!r} is not a column (columns: {', '.join(schema.names)})")
        kind = schema.field(parts[0]).type
        for depth, part in enumerate(parts[1:], start=1):
            if not pa.types.is_struct(kind) or kind.get_field_index(part) < 0:
                raise DataError(f"{source}: data.text_field {text_field!r}: column {'.'.join(parts[:depth])} has type {kind}, no field {part!r}")
            kind = kind.field(part).type
    if pa.types.is_dictionary(kind):  # pandas ``category`` columns, dictionary-encoded Parquet read as such
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise DataError(f"{source}: data.text_field {text_field!r} has type {kind}, expected a string column")


def _check_table_schemas(files: list[Path], fmt: str, text_field: str) -> None:
    for path in files:
        try:
            if fmt == "parquet":
                schema = pq.read_schema(path)
            else:
                with pa.memory_map(str(path)) as source:
                    schema = pa.ipc.open_stream(source).schema
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable {'Parquet' if fmt == 'parquet' else 'Arrow'} file: {err}") from None
        _text_column_type(schema, text_field, str(path))


def plan_corpus(cfg: DataConfig) -> CorpusPlan:
    """Resolve ``cfg.path`` to a sorted list of files and a format, or raise DataError naming what is wrong."""
    if not cfg.path:
        raise DataError("data.path: no corpus given")
    if cfg.format == "hub" or (cfg.format == "auto" and _looks_like_hub_id(cfg.path)):
        files = _hub_files(cfg.path, cfg.hf_split)
        fmt = "hf_disk"
    else:
        files = _expand_files(cfg.path)
        fmt = cfg.format if cfg.format != "auto" else _detect_format(cfg.path, files)
        if fmt == "hf_disk":
            files = _hf_disk_files(Path(cfg.path).expanduser(), cfg.hf_split)
        elif fmt == "processed":
            return CorpusPlan("processed", (), str(Path(cfg.path).expanduser()))
        elif len(files) > 1 or Path(cfg.path).expanduser().is_dir():
            family = {"jsonl": "jsonl", "json": "jsonl", "parquet": "parquet", "text": "text", "text_lines": "text"}[fmt]
            matching = [f for f in files if _suffix_format(f) == family]
            files = matching or (files if cfg.format != "auto" else [])  # explicit format: files without a known suffix too
    if not files:
        raise DataError(f"data.path: {cfg.path} holds no {fmt} files")
    if fmt in ("parquet", "hf_disk"):
        _check_table_schemas(files, fmt, cfg.text_field)
    return CorpusPlan(fmt, tuple(str(f) for f in files), str(cfg.path))


_STRIPE_BYTES = 1 << 20  # a file is read by several tasks only when each gets at least this much


def _plan_read_units(plan: CorpusPlan, parallelism: int) -> list[dict]:
    """One unit per file, or, when there are fewer files than CPUs, several per big file (each reads
    every n-th line / row group / record batch, so line numbers stay exact)."""
    units = []
    per_file = max(1, parallelism // max(len(plan.files), 1))
    for index, path in enumerate(plan.files):
        stripes = 1 if plan.format == "text" or _is_json_document(path, plan.format) else min(per_file, max(1, os.path.getsize(path) // _STRIPE_BYTES))
        units += [{"path": path, "file_index": index, "stripe": s, "stripes": stripes} for s in range(stripes)]
    return units


# --------------------------------------------------------------------------- readers (Ray tasks)

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


def _is_json_document(path: str, fmt: str) -> bool:
    """A ``.json`` file (or any file under format ``json``) holds one JSON document, not JSON Lines."""
    return fmt == "json" or (fmt == "jsonl" and path.lower().endswith((".json", ".json.gz")))


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


# --------------------------------------------------------------------------- cleaning (Ray tasks)

_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates: JSON allows them as escapes, Arrow and tokenizers do not
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


# --------------------------------------------------------------------------- dedupe


def drop_duplicates(out: Path, files: list[str], line_based: bool, tokenizer_source: str) -> int:
    """Exact-duplicate removal, after the rows are written: keep the first copy of each cleaned text in
    (file, row) order, move the other copies' rows to the rejects as ``duplicate``. Returns how many.

    Every document that passed cleaning carries its 64-bit text hash and its (file, row) order key, so
    this reads two int64 columns (16 bytes per document, on the driver) and rewrites only the files that
    hold a later copy. Which copy survives depends only on (file, row) order, never on block order or
    worker count; the corpus is read once, not once more to find duplicates first.
    """
    paths = _parquet_files(out / KEPT_DIR) + _parquet_files(out / REJECTED_DIR)
    hashes, keys, where = [], [], []
    for number, path in enumerate(paths):
        table = pq.read_table(path, columns=["doc_hash", "order_key", "example_index"])
        first = pc.and_(pc.is_valid(table.column("doc_hash")), pc.equal(table.column("example_index"), 0))
        table = table.filter(first)
        hashes.append(table.column("doc_hash").to_numpy())
        keys.append(table.column("order_key").to_numpy())
        where.append(np.full(len(table), number))
    if not paths:
        return 0
    hashes, keys, where = np.concatenate(hashes), np.concatenate(keys), np.concatenate(where)
    order = np.lexsort((keys, hashes))  # by hash, then (file, row): the first of each run is the copy kept
    group_start = np.ones(len(order), dtype=bool)
    group_start[1:] = hashes[order][1:] != hashes[order][:-1]
    first_key = keys[order][np.flatnonzero(group_start)[np.cumsum(group_start) - 1]]
    later = order[~group_start]
    if not len(later):
        return 0
    original = dict(zip(keys[later].tolist(), first_key[~group_start].tolist()))  # order key -> order key of the copy kept
    later_keys = pa.array(list(original), pa.int64())
    from disc_ray.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_source)  # kept rows carry no text: a duplicate's preview is its first tokens, decoded
    moved = []
    for number in np.unique(where[later]).tolist():
        path = paths[number]
        table = pq.read_table(path, schema=FILE_SCHEMA)
        is_later = pc.is_in(table.column("order_key"), later_keys).to_numpy(zero_copy_only=False)
        is_later &= table.column("doc_hash").is_valid().to_numpy(zero_copy_only=False)
        later_rows = table.filter(pa.array(is_later))
        for row in later_rows.filter(pc.equal(later_rows.column("example_index"), 0)).to_pylist():
            kept_at = original[row["order_key"]]
            if not row["reason"]:
                row["preview"] = _preview(tokenizer.decode(row["input_ids"][row["num_special_prefix"]:][:256]))
            moved.append({**row, "input_ids": [], "split_starts": [], "split_ends": [], "num_special_prefix": 0, "num_tokens": 0,
                          "reason": "duplicate", "detail": f"same text as {_locate(files[kept_at >> 40], kept_at & ((1 << 40) - 1), line_based)}"})
        rest = table.filter(pa.array(~is_later))
        if len(rest):
            pq.write_table(rest, path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)
        else:
            path.unlink()
    (out / REJECTED_DIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(moved, schema=FILE_SCHEMA), out / REJECTED_DIR / "duplicates.parquet")
    return len(moved)


# --------------------------------------------------------------------------- preparation (Ray tasks)


def prepare_documents(texts: list, tokenizer, cfg: SplitConfig, max_length: int = 2048, with_splits: bool = True) -> list:
    """Batched :func:`disc_ray.splits.prepare_document`: :func:`disc_ray.tokenization.tokenize_documents` (the one
    text -> tokens -> sentence spans implementation, one tokenizer call for the batch), then each document's
    split sampling. Returns, per text, either its list of DocumentExamples or the DocumentSkipped explaining
    why none. Raises DataError when ``max_length`` leaves no room after the tokenizer's special prefix.
    """
    try:
        tokenized = tokenize_documents(texts, tokenizer, max_length)
    except ValueError as err:  # a tokenizer adding more special tokens than max_length holds
        raise DataError(f"data.max_length: {err}") from None
    results: list = []
    for text, examples in zip(texts, tokenized):
        if isinstance(examples, DocumentSkipped):
            results.append(examples)
            continue
        try:
            results.append(choose_document_splits(text, examples, cfg, with_splits))
        except DocumentSkipped as skipped:
            results.append(skipped)
    return results


_TOKENIZERS: dict[str, Any] = {}


def _cached_tokenizer(source: str, threads: int):
    """One tokenizer per worker process (Ray reuses task workers, so it is loaded once per process)."""
    if source not in _TOKENIZERS:
        os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, threads)))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true" if threads > 1 else "false")
        from disc_ray.models import load_tokenizer

        _TOKENIZERS[source] = load_tokenizer(source)
    return _TOKENIZERS[source]


OUTPUT_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())), ("split_starts", pa.list_(pa.int32())), ("split_ends", pa.list_(pa.int32())),
    ("num_special_prefix", pa.int32()), ("num_tokens", pa.int32()), ("example_index", pa.int32()),
    ("doc_id", pa.string()), ("source", pa.string()), ("row", pa.int64()), ("line", pa.int64()),
    ("reason", pa.string()), ("detail", pa.string()), ("preview", pa.string()),
    ("unicode_normalized", pa.bool_()), ("whitespace_collapsed", pa.bool_()),
    ("token_windows", pa.bool_()), ("special_token_text", pa.bool_()),  # see DocumentExample.segmentation / .special_token_text
    ("doc_hash", pa.int64()), ("order_key", pa.int64()),  # for drop_duplicates: null hash = rejected before cleaning ended
    ("status", pa.string()),
])
FILE_SCHEMA = OUTPUT_SCHEMA.remove(OUTPUT_SCHEMA.get_field_index("status"))  # the files: status is their folder


def _int32_lists(lists: list[list[int]]) -> pa.Array:
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int32, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def prepare_block(block: pa.Table, *, batch_rows: int = 512, **options) -> pa.Table:
    """Ray Data UDF: cleaned block -> OUTPUT_SCHEMA rows (one per example, one per rejected record).

    Works through the block ``batch_rows`` documents at a time: Ray Data hands a fused stage the reader's
    blocks coalesced (up to 128 MiB, a whole file), and tokenizing + mapping 10,000 documents in one
    call costs ~20% more per token than batches of 512 (cache misses on the batch-wide arrays).
    ``options``: those of :func:`_prepare_batch`.
    """
    if len(block) <= batch_rows:
        return _prepare_batch(block, **options)
    return pa.concat_tables([_prepare_batch(block.slice(start, batch_rows), **options) for start in range(0, len(block), batch_rows)])


def _prepare_batch(block: pa.Table, *, tokenizer_source: str, split: dict, max_length: int, with_splits: bool,
                   strict: bool, line_based: bool, threads: int) -> pa.Table:
    """One batch of :func:`prepare_block`: one tokenizer call for its documents, one output row per example or reject."""
    tokenizer = _cached_tokenizer(tokenizer_source, threads)
    cfg = SplitConfig(**split)
    c = block.to_pydict()
    todo = [i for i, reason in enumerate(c["reason"]) if not reason]
    prepared = dict(zip(todo, prepare_documents([c["text"][i] for i in todo], tokenizer, cfg, max_length, with_splits)))
    out: dict[str, list] = {name: [] for name in OUTPUT_SCHEMA.names}
    copied = ("doc_id", "source", "row", "line", "unicode_normalized", "whitespace_collapsed", "order_key")

    def emit(i: int, example: DocumentExample | None, index: int, reason: str, detail: str, preview: str):
        out["input_ids"].append(example.input_ids if example else [])
        out["split_starts"].append([s for s, _ in example.split_spans] if example else [])
        out["split_ends"].append([e for _, e in example.split_spans] if example else [])
        out["num_special_prefix"].append(example.num_special_prefix if example else 0)
        out["num_tokens"].append(len(example.input_ids) if example else 0)
        out["token_windows"].append(example is not None and example.segmentation == "token_windows")
        out["special_token_text"].append(example is not None and example.special_token_text)
        out["example_index"].append(index)
        for name in copied:
            out[name].append(c[name][i])
        out["doc_hash"].append(c["doc_hash"][i] if i in prepared else None)
        out["reason"].append(reason)
        out["detail"].append(detail)
        out["preview"].append(preview)
        out["status"].append("rejected" if reason else "kept")

    for i in range(len(c["reason"])):
        result = prepared.get(i)
        if result is None:
            emit(i, None, 0, c["reason"][i], c["detail"][i], c["preview"][i])
        elif isinstance(result, DocumentSkipped):
            detail = str(result).removeprefix(f"{result.reason}: ")
            if strict and result.reason not in POLICY_REASONS:
                raise DataError(f"{_locate(c['source'][i], c['row'][i], c['line'][i] is not None)}: {result.reason}: {detail}")
            emit(i, None, 0, result.reason, detail, _preview(c["text"][i]))
        else:
            for index, example in enumerate(result):
                emit(i, example, index, "", "", "")
    arrays = [_int32_lists(out[name]) if name in ("input_ids", "split_starts", "split_ends") else pa.array(out[name], type=OUTPUT_SCHEMA.field(name).type)
              for name in OUTPUT_SCHEMA.names]
    return pa.Table.from_arrays(arrays, schema=OUTPUT_SCHEMA)


# --------------------------------------------------------------------------- pipeline (driver)


def _ensure_ray():
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False)  # a driver that wants a cluster calls ray.init(address=...) first
    return ray


def _parallelism(cfg: DataConfig) -> int:
    ray = _ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1) // cfg.num_cpus_per_worker) or 1
    return min(cpus, cfg.concurrency) if cfg.concurrency else cpus


def _map_args(cfg: DataConfig) -> dict:
    import ray.data

    args: dict[str, Any] = {"batch_format": "pyarrow", "num_cpus": cfg.num_cpus_per_worker, "zero_copy_batch": True}
    if cfg.concurrency:
        args["compute"] = ray.data.TaskPoolStrategy(size=cfg.concurrency)
    return args


def read_corpus(cfg: DataConfig, plan: CorpusPlan | None = None) -> ray.data.Dataset:
    """The corpus as a lazy Ray dataset of READ_SCHEMA rows: ``text`` (None for rejects), ``source``, ``row``,
    ``line``, ``reason`` ("" when readable), ``detail``. Raises DataError for a corpus that cannot be read at all."""
    import ray.data

    plan = plan or plan_corpus(cfg)
    if plan.format == "processed":
        raise DataError(f"data.path: {plan.path} holds processed rows, not a corpus; use build_training_dataset")
    units = _plan_read_units(plan, _parallelism(cfg))
    dataset = ray.data.from_items(units, override_num_blocks=len(units))
    # The stages fuse into one operator, so Ray Data's per-operator CPU reservation (half the CPUs) only holds
    # the other tasks back while the first runs alone (~1 s of a 2-CPU run). The context is this dataset's copy.
    dataset.context.op_resource_reservation_enabled = False
    return dataset.map_batches(
        read_units, batch_size=1, fn_kwargs={"fmt": plan.format, "text_field": cfg.text_field, "batch_rows": cfg.batch_rows,
                                             "strict": cfg.strict, "records_key": cfg.records_key}, **_map_args(cfg))


def _cleaned(cfg: DataConfig, plan: CorpusPlan) -> ray.data.Dataset:
    return read_corpus(cfg, plan).map_batches(clean_block, batch_size=None, fn_kwargs={
        "normalize_unicode": cfg.normalize_unicode, "collapse_whitespace": cfg.collapse_whitespace, "min_chars": cfg.min_chars,
        "max_chars": cfg.max_chars, "strict": cfg.strict, "line_based": plan.format in _LINE_FORMATS}, **_map_args(cfg))


_DATA_ERROR_LINE = re.compile(r"disc_ray\.data\.DataError: (.+)")


def _find_data_error(err: BaseException) -> DataError | None:
    """The DataError a Ray task raised: in the exception chain, or (Ray Data wraps UDF errors in
    UserCodeException and the original's chain does not survive pickling) in the worker's traceback text."""
    seen: set[int] = set()
    stack = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, DataError) and getattr(current, "message", None):
            return current
        stack += [getattr(current, "cause", None), current.__cause__, current.__context__]
    found = _DATA_ERROR_LINE.search(str(err))
    return DataError(found.group(1).strip()) if found else None


def _run_reporting_data_errors(function, *args, **kwargs):
    """Run a Ray Data execution; a DataError raised in a task comes back as a one-line DataError here."""
    try:
        return function(*args, **kwargs)
    except Exception as err:
        data_error = _find_data_error(err)
        if data_error is None:
            raise
        if type(err) is DataError:
            raise
        raise DataError(data_error.message) from None  # not RayTaskError(DataError), whose message is a traceback


def _prepare_output_dir(cfg: DataConfig) -> Path:
    if not cfg.output_dir:
        return Path(tempfile.mkdtemp(prefix="disc-ray-data-"))
    out = Path(cfg.output_dir).expanduser().resolve()
    if out.exists():
        ours = {REPORT_FILE, REJECTS_FILE, KEPT_DIR, REJECTED_DIR}
        entries = {p.name for p in out.iterdir()}
        if entries - ours:
            raise DataError(f"data.output_dir: {out} is not empty and was not written by disc-ray data ({', '.join(sorted(entries - ours)[:5])})")
        for name in entries:  # a previous run's rows: replace them
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _parquet_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.parquet")) if directory.is_dir() else []


def _summarize(out: Path, rejects_path: Path, report: DataReport, max_length: int) -> None:
    """Count everything from the written rows (small columns only, streamed) and write the rejects file."""
    histogram = np.zeros(max_length + 1, dtype=np.int64)
    cleaned = {"unicode_normalized": 0, "whitespace_collapsed": 0}
    for path in _parquet_files(out / KEPT_DIR):
        for batch in pq.ParquetFile(path).iter_batches(columns=["num_tokens", "example_index", "split_starts", "split_ends",
                                                                 "unicode_normalized", "whitespace_collapsed", "token_windows",
                                                                 "special_token_text"]):
            tokens = batch.column("num_tokens").to_numpy()
            histogram += np.bincount(tokens, minlength=max_length + 1)[: max_length + 1]
            first = batch.column("example_index").to_numpy() == 0
            report.documents_kept += int(first.sum())
            for rule in cleaned:
                cleaned[rule] += int((batch.column(rule).to_numpy(zero_copy_only=False) & first).sum())
            report.token_window_fallback += int((batch.column("token_windows").to_numpy(zero_copy_only=False) & first).sum())
            report.special_token_text += int((batch.column("special_token_text").to_numpy(zero_copy_only=False) & first).sum())
            starts, ends = pc.list_flatten(batch.column("split_starts")), pc.list_flatten(batch.column("split_ends"))
            report.splits += len(starts)
            report.split_tokens += int(pc.sum(pc.subtract(ends, starts)).as_py() or 0)
    dropped: dict[str, int] = {}
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    with rejects_path.open("w") as rejects:
        for path in _parquet_files(out / REJECTED_DIR):
            for batch in pq.ParquetFile(path).iter_batches(columns=["source", "row", "line", "reason", "detail", "preview",
                                                                     "unicode_normalized", "whitespace_collapsed"]):
                for record in batch.to_pylist():
                    dropped[record["reason"]] = dropped.get(record["reason"], 0) + 1
                    for rule in cleaned:
                        cleaned[rule] += bool(record[rule])
                    rejects.write(json.dumps({"path": record["source"], "row": record["row"], "line": record["line"], "reason": record["reason"],
                                              "detail": record["detail"], "preview": record["preview"]}, ensure_ascii=False) + "\n")
    report.dropped = dict(sorted(dropped.items()))
    report.cleaned = {rule: n for rule, n in cleaned.items() if n}
    report.records_read = report.documents_kept + sum(dropped.values())
    report.examples = int(histogram.sum())
    report.tokens = int((histogram * np.arange(len(histogram))).sum())
    if report.examples:
        cumulative = np.cumsum(histogram)
        quantile = lambda q: float(np.searchsorted(cumulative, q * report.examples))  # noqa: E731
        nonzero = np.flatnonzero(histogram)
        report.tokens_per_example = {"min": float(nonzero[0]), "mean": report.tokens / report.examples, "p50": quantile(0.5),
                                     "p95": quantile(0.95), "max": float(nonzero[-1])}


def _read_kept_rows(out: Path) -> ray.data.Dataset:
    import ray.data

    if not _parquet_files(out / KEPT_DIR):
        return ray.data.from_arrow(OUTPUT_SCHEMA.empty_table().select(TRAIN_COLUMNS))
    return ray.data.read_parquet(str(out / KEPT_DIR), columns=TRAIN_COLUMNS)


def _pipeline_fingerprint(data_cfg: DataConfig, split_cfg: SplitConfig, with_splits: bool, tokenizer_source: str) -> dict:
    """What decides the rows' content: a processed folder is reused only when this matches."""
    from disc_ray.segmentation import VERSION

    return {"tokenizer": tokenizer_source, "segmentation": VERSION, "max_length": data_cfg.max_length, "with_splits": with_splits,
            "split": dataclasses.asdict(split_cfg) if with_splits else None}


def load_processed_dataset(path: str, expect: dict | None = None) -> tuple[ray.data.Dataset, DataReport]:
    """Rows written by a previous run (``disc-ray data inspect --out DIR``); ``expect``: a fingerprint to match."""
    out = Path(path).expanduser()
    stored = json.loads((out / REPORT_FILE).read_text())
    if expect is not None and stored.get("fingerprint") != expect:
        differences = [k for k in expect if stored.get("fingerprint", {}).get(k) != expect[k]]
        raise DataError(f"data.path: processed rows in {out} were made with a different {', '.join(differences)}; "
                        "process the corpus again or match those settings")
    _ensure_ray()
    return _read_kept_rows(out), DataReport.from_dict(stored["report"])


def build_training_dataset(data_cfg, split_cfg: SplitConfig, with_splits: bool = True, *, tokenizer: str | None = None
                           ) -> tuple[ray.data.Dataset, DataReport]:
    """Run the whole pipeline once (streaming) and return (training rows, report).

    The rows (TRAIN_COLUMNS) are read back lazily from ``<output_dir>/status=kept``; give the dataset to
    ``TorchTrainer(datasets={"train": ...})`` and Ray Train's default DataConfig splits it equally
    (``streaming_split(n, equal=True)``), or use :func:`split_equal_shards`. ``tokenizer`` overrides
    ``data_cfg.tokenizer`` (the trainer passes the resolved model directory). ``data_cfg`` may be any
    object with DataConfig's fields (missing ones take DataConfig's defaults).
    """
    data_cfg = _as_data_config(data_cfg, tokenizer)
    started = time.perf_counter()
    plan = plan_corpus(data_cfg)
    tokenizer_source = _resolve_tokenizer(data_cfg.tokenizer)
    fingerprint = _pipeline_fingerprint(data_cfg, split_cfg, with_splits, tokenizer_source)
    if plan.format == "processed":
        return load_processed_dataset(plan.path, expect=fingerprint)
    out = _prepare_output_dir(data_cfg)
    rejects_path = Path(data_cfg.rejects_path).expanduser().resolve() if data_cfg.rejects_path else out / REJECTS_FILE
    line_based = plan.format in _LINE_FORMATS
    rows = _cleaned(data_cfg, plan).map_batches(prepare_block, batch_size=None, fn_kwargs={
        "tokenizer_source": tokenizer_source, "split": dataclasses.asdict(split_cfg), "max_length": data_cfg.max_length,
        "with_splits": with_splits, "strict": data_cfg.strict, "line_based": line_based,
        "threads": max(1, int(data_cfg.num_cpus_per_worker)), "batch_rows": data_cfg.batch_rows}, **_map_args(data_cfg))
    _run_reporting_data_errors(rows.write_parquet, str(out), partition_cols=["status"])
    if data_cfg.dedupe:
        drop_duplicates(out, list(plan.files), line_based, tokenizer_source)
    report = DataReport(path=str(data_cfg.path), corpus_format=plan.format, files=len(plan.files), output_dir=str(out), rejects_path=str(rejects_path))
    _summarize(out, rejects_path, report, data_cfg.max_length)
    report.seconds = round(time.perf_counter() - started, 2)
    (out / REPORT_FILE).write_text(json.dumps({"report": report.to_dict(), "fingerprint": fingerprint,
                                               "data": dataclasses.asdict(data_cfg)}, indent=2))
    return _read_kept_rows(out), report


def _as_data_config(cfg, tokenizer: str | None) -> DataConfig:
    if isinstance(cfg, DataConfig) and tokenizer is None:
        return cfg
    names = {f.name for f in dataclasses.fields(DataConfig)}
    values = {name: getattr(cfg, name) for name in names if hasattr(cfg, name)}
    if tokenizer is not None:
        values["tokenizer"] = tokenizer
    return DataConfig(**values)


def _resolve_tokenizer(name_or_path: str) -> str:
    """Resolve once on the driver (a GGUF file is converted once), so workers load a plain directory."""
    from disc_ray.models import ModelLoadError, resolve_model_source

    try:
        return resolve_model_source(name_or_path)
    except ModelLoadError as err:
        raise DataError(f"data.tokenizer: {err}") from None


# --------------------------------------------------------------------------- feeding Ray Train


def split_equal_shards(dataset: ray.data.Dataset, world_size: int) -> list:
    """``world_size`` iterators with the same number of rows each (up to ``world_size - 1`` rows left out),
    so no rank runs out of batches before the others (which would hang FSDP collectives). Ray Train's
    default DataConfig does the same for ``TorchTrainer(datasets={"train": ...})``."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return dataset.streaming_split(world_size, equal=True)


def rows_to_examples(batch) -> list[DocumentExample]:
    """A batch from ``get_dataset_shard("train").iter_batches(...)`` (numpy dict, pyarrow or pandas) -> DocumentExamples."""
    if isinstance(batch, pa.Table):
        batch = {name: batch.column(name).to_pylist() for name in ("input_ids", "split_starts", "split_ends", "num_special_prefix")}
    elif hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        batch = {name: list(batch[name]) for name in ("input_ids", "split_starts", "split_ends", "num_special_prefix")}
    return batch_to_examples(batch)


# --------------------------------------------------------------------------- inspect + CLI


def _sample_rows(out: Path, count: int) -> list[dict]:
    """The first ``count`` kept examples in (source, row, example_index) order: deterministic."""
    files = _parquet_files(out / KEPT_DIR)

    def keys():
        for file_number, path in enumerate(files):
            table = pq.read_table(path, columns=["source", "row", "example_index"])
            columns = [table.column(name).to_pylist() for name in ("source", "row", "example_index")]
            for position, (source, row, index) in enumerate(zip(*columns)):
                yield source, -1 if row is None else row, index, file_number, position

    chosen = heapq.nsmallest(count, keys())
    return [pq.read_table(files[file_number]).slice(position, 1).to_pylist()[0] for *_, file_number, position in chosen]


def format_samples(rows: list[dict], tokenizer, max_splits: int = 3, context_chars: int = 60) -> str:
    """Show what the teacher and the student read for a few splits of a few examples."""
    lines = []
    for number, row in enumerate(rows, start=1):
        ids = row["input_ids"]
        where = f"{row['source']}:{row['row'] + 1}" if row.get("line") else f"{row['source']} row {row['row']}"
        lines.append(f"sample {number}: {where} doc {row['doc_id']} window {row['example_index']}: "
                     f"{len(ids)} tokens, {len(row['split_starts'])} splits")
        for start, end in list(zip(row["split_starts"], row["split_ends"]))[:max_splits]:
            context = tokenizer.decode(ids[row["num_special_prefix"]:start])
            context = ("..." + context[-context_chars:]) if len(context) > context_chars else context
            student = tokenizer.decode(ids[start:end])
            lines.append(f"  split [{start}, {end}): teacher context {start} tokens {' '.join(context.split())!r}")
            lines.append(f"      student reads {end - start} tokens {' '.join(student.split())!r}")
    return "\n".join(lines)


def inspect_corpus(data_cfg: DataConfig, split_cfg: SplitConfig, with_splits: bool = True, samples: int = 3,
                   show_paths: bool = True) -> tuple[DataReport, str]:
    """Process the corpus; return the report and a text with the report, the first rejects and ``samples`` sample splits."""
    from disc_ray.models import load_tokenizer

    _, report = build_training_dataset(data_cfg, split_cfg, with_splits)
    text = report.format(paths=show_paths)
    rejects = _first_rejects(Path(report.rejects_path), samples)
    if rejects:
        text += "\nfirst rejects:\n" + "\n".join(rejects)
    rows = _sample_rows(Path(report.output_dir), samples) if samples and report.examples else []
    if rows:
        text += "\n" + format_samples(rows, load_tokenizer(_resolve_tokenizer(data_cfg.tokenizer)))
    return report, text


def _first_rejects(path: Path, count: int) -> list[str]:
    lines = []
    if count and path.is_file():
        with path.open() as rejects:
            for line in itertools.islice(rejects, count):
                record = json.loads(line)
                where = f"{record['path']}:{record['line']}" if record["line"] else f"{record['path']} row {record['row']}"
                lines.append(f"  {where}: {record['reason']}: {record['detail']}")
    return lines


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("data", help="corpus pipeline: inspect a corpus, write processed rows")
    commands = parser.add_subparsers(dest="data_command", required=True)
    inspect = commands.add_parser("inspect", help="read, clean, tokenize and split a corpus; print counts and samples")
    inspect.add_argument("corpus", help="JSONL(.gz) / Parquet / text file or folder, glob, save_to_disk folder, or hub id")
    defaults = DataConfig()
    inspect.add_argument("--format", default="auto", choices=FORMATS)
    inspect.add_argument("--text-field", default=defaults.text_field, help="field with the text; dotted paths reach into nested JSON")
    inspect.add_argument("--records-key", default=None, help=".json files holding an object: the key of its list of records")
    inspect.add_argument("--tokenizer", default=defaults.tokenizer, help="model name or path whose tokenizer to use")
    inspect.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per example (window)")
    inspect.add_argument("--min-chars", type=int, default=defaults.min_chars)
    inspect.add_argument("--max-chars", type=int, default=defaults.max_chars)
    inspect.add_argument("--normalize-unicode", default=defaults.normalize_unicode, choices=NORMALIZATION_FORMS)
    inspect.add_argument("--no-dedupe", action="store_true", help="keep exact duplicates")
    inspect.add_argument("--strategy", default=SplitConfig.strategy, help="split strategy (see disc_ray.splits.STRATEGIES)")
    inspect.add_argument("--num-splits", type=int, default=SplitConfig.num_splits)
    inspect.add_argument("--seed", type=int, default=SplitConfig.seed)
    inspect.add_argument("--no-splits", action="store_true", help="rows for ft / ft_kl (no split sampling)")
    inspect.add_argument("--strict", action="store_true", help="stop at the first bad record instead of counting it")
    inspect.add_argument("--rejects", default=None, help="where to write the rejects JSONL (default: OUT/rejects.jsonl)")
    inspect.add_argument("--out", default=None, help="write processed rows here (Parquet, reusable as data.path)")
    inspect.add_argument("--samples", type=int, default=3, help="sample examples to print")
    inspect.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray instance (default: all)")
    inspect.add_argument("--ray-address", default=None, help="cluster to run on (default: $RAY_ADDRESS or a local instance)")
    inspect.set_defaults(run=run_inspect)


def run_inspect(args, rest) -> int:
    import sys

    import ray

    keep = args.out is not None
    try:
        data_cfg = DataConfig(path=args.corpus, format=args.format, text_field=args.text_field, records_key=args.records_key, tokenizer=args.tokenizer,
                              max_length=args.max_length, min_chars=args.min_chars, max_chars=args.max_chars,
                              normalize_unicode=args.normalize_unicode, dedupe=not args.no_dedupe, strict=args.strict,
                              rejects_path=args.rejects, output_dir=args.out)
        split_cfg = SplitConfig(strategy=args.strategy, num_splits=args.num_splits, seed=args.seed)
    except ValueError as err:
        print(f"disc-ray data inspect: error: {err}", file=sys.stderr)
        return 2
    try:
        plan_corpus(data_cfg)  # a missing path or a bad schema fails here, before Ray starts
    except DataError as err:
        print(f"disc-ray data inspect: error: {err.message}", file=sys.stderr)
        return 2
    if not ray.is_initialized():
        address = args.ray_address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR",
                 **({} if address else {"num_cpus": args.num_cpus}))
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        report, text = inspect_corpus(data_cfg, split_cfg, with_splits=not args.no_splits, samples=args.samples, show_paths=keep)
    except DataError as err:
        print(f"disc-ray data inspect: error: {err.message}", file=sys.stderr)
        return 2
    print(text)
    if keep:
        print(f"processed rows: {Path(report.output_dir) / KEPT_DIR} (reuse with data.path={report.output_dir})")
    else:
        shutil.rmtree(report.output_dir, ignore_errors=True)  # the rejects file stays if --rejects put it elsewhere
    return 0
