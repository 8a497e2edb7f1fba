"""Corpus pipeline settings (DataConfig), its report (DataReport), its error (DataError) and shared names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

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
class GenerationCounts:
    """What the generation stage (``rephrase`` / ``cd_base``, :mod:`disc_ray.data.generation`) did, counted the same
    way in process and in the corpus pipeline: documents ``generated`` now, taken from the ``cached`` generations,
    ``empty`` (dropped), ``truncated`` (reached max_new_tokens: kept, or dropped under ``on_truncated: skip``; a
    subset of generated + cached). ``generated_tokens`` / ``seconds``: None where not measured (the pipeline counts
    from the rows it wrote)."""

    generated: int = 0
    cached: int = 0
    empty: int = 0
    truncated: int = 0
    generated_tokens: int | None = None
    seconds: float | None = None

    def count(self, *, cached: bool, truncated: bool = False, empty: bool = False, tokens: int | None = None) -> None:
        """One document's generation."""
        self.cached += cached
        self.generated += not cached
        self.empty += empty
        self.truncated += truncated
        if tokens is not None and not cached:
            self.generated_tokens = (self.generated_tokens or 0) + tokens

    def add(self, generation) -> None:
        """One :class:`disc_ray.data.generation.Generation`."""
        self.count(cached=generation.cached, truncated=generation.truncated, empty=generation.empty,
                   tokens=generation.generated_tokens)

    def as_dict(self) -> dict:
        """The counts; the unmeasured fields left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def format(self) -> str:
        """``generation: 2 documents generated (256 tokens, 14.20 s/document), 0 from the cache; 0 empty (dropped),
        2 reached max_new_tokens``."""
        detail = [f"{self.generated_tokens:,} tokens"] if self.generated_tokens is not None and self.generated else []
        detail += [f"{self.seconds / self.generated:.2f} s/document"] if self.generated and self.seconds else []
        extra = f" ({', '.join(detail)})" if detail else ""
        return (f"generation: {self.generated:,} documents generated{extra}, "
                f"{self.cached:,} from the cache; {self.empty:,} empty (dropped), {self.truncated:,} reached max_new_tokens")


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
    generation: dict[str, int] = field(default_factory=dict)
    """``rephrase`` / ``cd_base`` only: :class:`GenerationCounts` as a dict."""
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
        if self.generation:
            lines.append("  " + GenerationCounts(**self.generation).format())
        if stats:
            lines.append("  tokens per example: " + ", ".join(f"{k} {v:,.0f}" if k != "mean" else f"{k} {v:,.1f}" for k, v in stats.items()))
        if self.dropped.get("missing_field", 0) == self.records_read > 0:
            lines.append("  hint: no record has the text field; set data.text_field (--text-field), e.g. meta.context")
        if paths:
            lines.append(f"  rows: {Path(self.output_dir) / KEPT_DIR}  rejects: {self.rejects_path}")
        lines[-1] += f"  ({self.seconds:.1f} s)"
        return "\n".join(lines)
