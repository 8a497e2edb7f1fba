"""Ray Data corpus pipeline: read -> clean -> segment + tokenize + sample splits -> Parquet rows -> dedupe.

The corpus is processed ONCE, streaming, by Ray Data CPU tasks (never by the training workers), and the
rows the objective trains on are written to Parquet; training then reads those rows back with
``ray.data.read_parquet`` and Ray Train hands each rank an equal share (``streaming_split(equal=True)``).
Processing once gives exact counts before training starts (the trainer plans its steps from them),
writes every rejected record to a rejects file, and spares re-tokenizing the corpus every epoch.

    disc-ray data inspect ../shared/data/bioasq_mcq/bioasq_mcq_hardest_full.jsonl --data.text_field meta.context
    dataset, report = build_training_dataset(DataConfig(path=..., text_field="meta.context"), SplitConfig())

Stages (all fused into one Ray Data task per read unit, so a block goes from file to Parquet without
extra object-store hops):

* **read**: JSON Lines (``.jsonl``/``.jsonl.gz``, split on ``\n`` only), ``.json`` files (an array of records
  or an object with a list of records), Parquet (file, folder, glob; string, large_string, string_view
  or dictionary-encoded text), plain text (one
  document per file in a folder: ``text``; one per line: ``text_lines``), a ``save_to_disk`` folder
  (``hf_disk``) or a hub dataset id (``hub``, needs a network). A record that cannot be read (bad JSON,
  invalid UTF-8, no text field) becomes a *reject* row naming its file and line/row; problems with the
  corpus as a whole (missing path, Parquet without the text column) raise :class:`DataError` on the
  driver before anything runs. A big file is read by several tasks, each taking every n-th line /
  row group, so line numbers stay exact.
* **clean**: Unicode normalization, whitespace collapse, empty / min / max length filters; each rule counted.
* **prepare**: :func:`disc_ray.tokenization.tokenize_documents` on batches of ``batch_rows`` documents (the
  same code :func:`disc_ray.splits.prepare_document` runs on a batch of one: sentence segmentation,
  special-token text kept as text, the token-window fallback), then the core's split strategies; the
  tests compare every row with :func:`disc_ray.splits.prepare_document`. Split points depend only on
  the seed and the document's text, so re-runs give identical rows.
* **dedupe** (after the write, :func:`drop_duplicates`): exact duplicates of the cleaned text (64-bit
  BLAKE2b). The first copy in (file, row) order is kept, whatever the block order or worker count; the
  others' rows move to the rejects. The corpus is read once.

Output rows (Arrow lists of int32): ``input_ids``, ``split_starts``, ``split_ends`` (split ``i`` is
``input_ids[split_starts[i]:split_ends[i]]``: the teacher reads ``input_ids[:split_ends[i]]``, the
student the span alone), ``num_special_prefix``, ``num_tokens``, plus ``doc_id`` (hash of the cleaned
text), ``example_index`` (window of a long document), ``source`` and ``row`` naming the origin.


Modules, one per stage: :mod:`~disc_ray.data.config` (DataConfig, DataReport, DataError),
:mod:`~disc_ray.data.sources` (corpus discovery), :mod:`~disc_ray.data.readers`, :mod:`~disc_ray.data.cleaning`,
:mod:`~disc_ray.data.prepare` (tokenization + segmentation through :mod:`disc_ray.tokenization`),
:mod:`~disc_ray.data.dedupe`, :mod:`~disc_ray.data.pipeline` (the driver) and :mod:`~disc_ray.data.inspect` (the CLI).
"""

from disc_ray.data.cleaning import CLEAN_SCHEMA, clean_block, clean_text, document_hash
from disc_ray.data.config import (
    DEFAULT_TOKENIZER,
    FORMATS,
    KEPT_DIR,
    NORMALIZATION_FORMS,
    POLICY_REASONS,
    REJECTED_DIR,
    REJECTS_FILE,
    REPORT_FILE,
    TRAIN_COLUMNS,
    DataConfig,
    DataError,
    DataReport,
)
from disc_ray.data.dedupe import drop_duplicates
from disc_ray.data.inspect import add_cli, format_samples, inspect_corpus, run_inspect
from disc_ray.data.pipeline import (
    build_training_dataset,
    load_processed_dataset,
    process_corpus,
    read_corpus,
    rows_to_examples,
    split_equal_shards,
)
from disc_ray.data.prepare import FILE_SCHEMA, OUTPUT_SCHEMA, prepare_block, prepare_documents
from disc_ray.data.readers import READ_SCHEMA, read_units
from disc_ray.data.sources import CorpusPlan, _plan_read_units, plan_corpus

__all__ = [
    "CLEAN_SCHEMA", "DEFAULT_TOKENIZER", "FILE_SCHEMA", "FORMATS", "KEPT_DIR", "NORMALIZATION_FORMS", "OUTPUT_SCHEMA",
    "POLICY_REASONS", "READ_SCHEMA", "REJECTED_DIR", "REJECTS_FILE", "REPORT_FILE", "TRAIN_COLUMNS", "CorpusPlan",
    "DataConfig", "DataError", "DataReport", "_plan_read_units", "add_cli", "build_training_dataset", "clean_block",
    "clean_text", "document_hash", "drop_duplicates", "format_samples", "inspect_corpus", "load_processed_dataset",
    "plan_corpus", "prepare_block", "process_corpus", "prepare_documents", "read_corpus", "read_units", "rows_to_examples", "run_inspect",
    "split_equal_shards",
]
