"""Exact-duplicate removal after the rows are written (first copy in (file, row) order kept)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from disc_ray.data.config import KEPT_DIR, REJECTED_DIR
from disc_ray.data.prepare import FILE_SCHEMA
from disc_ray.data.readers import _locate, _preview


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


def _parquet_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.parquet")) if directory.is_dir() else []
