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


def prepare_transfer_documents(contexts: list, continuations: list, tokenizer, max_length: int = 2048,
                               max_transfer_tokens: int = 1000) -> list:
    """``cd_base`` rows: one example per (document, generated continuation), ``input_ids`` = special prefix + document +
    continuation, one split = the continuation (cut to its first ``max_transfer_tokens`` tokens). DiSC's packing then
    gives the teacher the document and the continuation and the student the continuation alone; the KL covers the
    continuation's tokens 2..L. A document longer than what ``max_length`` leaves loses tokens from its START (the
    teacher keeps the text nearest the continuation). Both texts go through :func:`disc_ray.tokenization.tokenize_documents`
    (not windowed). Returns, per pair, ``[DocumentExample]`` or the DocumentSkipped saying why none
    (``empty``, ``transfer_too_short``: fewer than 2 continuation tokens, ``no_context_room``)."""
    unlimited = 1 << 30
    tokenized = tokenize_documents(list(contexts) + list(continuations), tokenizer, unlimited)
    results: list = []
    for context, continuation in zip(tokenized[: len(contexts)], tokenized[len(contexts):]):
        skipped = next((t for t in (context, continuation) if isinstance(t, DocumentSkipped)), None)
        if skipped is not None:
            results.append(skipped)
            continue
        prefix = context[0].num_special_prefix
        special = context[0].input_ids[:prefix]
        context_ids = context[0].input_ids[prefix:]
        transfer_ids = continuation[0].input_ids[continuation[0].num_special_prefix:][:max_transfer_tokens]
        room = max_length - prefix - len(transfer_ids)
        if len(transfer_ids) < 2:
            results.append(DocumentSkipped("transfer_too_short", f"the continuation has {len(transfer_ids)} token(s); 2 are needed"))
        elif room < 1:
            results.append(DocumentSkipped("no_context_room", f"max_length {max_length} leaves no document token before a "
                                                              f"{len(transfer_ids)}-token continuation; lower objective.max_transfer_tokens"))
        else:
            ids = special + context_ids[-room:] + transfer_ids
            split = (len(ids) - len(transfer_ids), len(ids))
            results.append([DocumentExample(input_ids=ids, sentence_spans=[split], split_spans=[split], num_special_prefix=prefix,
                                            special_token_text=context[0].special_token_text or continuation[0].special_token_text)])
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
    ("generation_cached", pa.bool_()), ("generation_truncated", pa.bool_()),  # rephrase / cd_base (disc_ray/data/generation.py)
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
                   strict: bool, line_based: bool, threads: int, max_transfer_tokens: int = 1000) -> pa.Table:
    """One batch of :func:`prepare_block`: one tokenizer call for its documents, one output row per example or reject.
    A block with a ``continuation`` column (``cd_base``'s generation stage) becomes transfer rows
    (:func:`prepare_transfer_documents`)."""
    tokenizer = _cached_tokenizer(tokenizer_source, threads)
    cfg = SplitConfig(**split)
    c = block.to_pydict()
    n = len(c["reason"])
    for flag in ("generation_cached", "generation_truncated"):
        c.setdefault(flag, [None] * n)
    todo = [i for i, reason in enumerate(c["reason"]) if not reason]
    texts = [c["text"][i] for i in todo]
    if "continuation" in c:
        results = prepare_transfer_documents(texts, [c["continuation"][i] for i in todo], tokenizer, max_length, max_transfer_tokens)
    else:
        results = prepare_documents(texts, tokenizer, cfg, max_length, with_splits)
    prepared = dict(zip(todo, results))
    out: dict[str, list] = {name: [] for name in OUTPUT_SCHEMA.names}
    copied = ("doc_id", "source", "row", "line", "unicode_normalized", "whitespace_collapsed", "order_key", "generation_cached",
              "generation_truncated")

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
