"""Corpus discovery on the driver: ``data.path`` -> a sorted list of files, a format and read units; corpus-level
problems (missing path, a Parquet file without a string text column) raise DataError before Ray starts."""

from __future__ import annotations

import glob as globlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from disc_ray.data.config import REPORT_FILE, DataConfig, DataError


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


def _is_json_document(path: str, fmt: str) -> bool:
    """A ``.json`` file (or any file under format ``json``) holds one JSON document, not JSON Lines."""
    return fmt == "json" or (fmt == "jsonl" and path.lower().endswith((".json", ".json.gz")))


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
