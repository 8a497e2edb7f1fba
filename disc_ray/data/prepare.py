"""Preparation (Ray tasks): cleaned blocks -> training rows, through the one tokenization path
(:mod:`disc_ray.tokenization`) and the core's split strategies (:mod:`disc_ray.splits`)."""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import pyarrow as pa

from disc_ray.data.config import POLICY_REASONS, DataError
from disc_ray.data.readers import _locate, _preview
from disc_ray.splits import DocumentExample, DocumentSkipped, SplitConfig, choose_document_splits
from disc_ray.tokenization import tokenize_documents


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
