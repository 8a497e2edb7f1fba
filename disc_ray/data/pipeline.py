"""The pipeline driver: runs read -> clean -> prepare -> write as one fused Ray Data stage, then dedupe and
counts; reads processed rows back for Ray Train."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from disc_ray.data.cleaning import clean_block
from disc_ray.data.config import (_LINE_FORMATS, KEPT_DIR, REJECTED_DIR, REJECTS_FILE, REPORT_FILE, TRAIN_COLUMNS, DataConfig,
                                    DataError, DataReport, GenerationCounts)
from disc_ray.data.dedupe import _parquet_files, drop_duplicates
from disc_ray.data.prepare import OUTPUT_SCHEMA, prepare_block
from disc_ray.data.readers import read_units
from disc_ray.data.sources import CorpusPlan, _plan_read_units, plan_corpus
from disc_ray.splits import DocumentExample, SplitConfig, batch_to_examples

if TYPE_CHECKING:  # Ray is imported where it is used
    import ray.data

    from disc_ray.data.generation import GenerationPlan


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
    return dataset.map_batches(read_units, batch_size=1, fn_kwargs=_read_args(cfg, plan), **_map_args(cfg))


def _read_args(cfg: DataConfig, plan: CorpusPlan) -> dict:
    return {"fmt": plan.format, "text_field": cfg.text_field, "batch_rows": cfg.batch_rows, "strict": cfg.strict,
            "records_key": cfg.records_key}


def _clean_args(cfg: DataConfig, plan: CorpusPlan) -> dict:
    return {"normalize_unicode": cfg.normalize_unicode, "collapse_whitespace": cfg.collapse_whitespace,
            "min_chars": cfg.min_chars, "max_chars": cfg.max_chars, "strict": cfg.strict,
            "line_based": plan.format in _LINE_FORMATS}


def _prepare_args(cfg: DataConfig, plan: CorpusPlan, split_cfg: SplitConfig, with_splits: bool, tokenizer_source: str) -> dict:
    return {"tokenizer_source": tokenizer_source, "split": dataclasses.asdict(split_cfg), "max_length": cfg.max_length,
            "with_splits": with_splits, "strict": cfg.strict, "line_based": plan.format in _LINE_FORMATS,
            "threads": max(1, int(cfg.num_cpus_per_worker)), "batch_rows": cfg.batch_rows}


def _write_rows_on_ray(cfg: DataConfig, plan: CorpusPlan, prepare_args: dict, out: Path,
                       generation: GenerationPlan | None = None) -> None:
    """read -> clean -> [generate] -> prepare as Ray Data tasks, streamed to ``out/status=*/*.parquet``."""
    rows = read_corpus(cfg, plan).map_batches(clean_block, batch_size=None, fn_kwargs=_clean_args(cfg, plan), **_map_args(cfg))
    if generation is not None:
        rows = _with_generation(rows, generation, cfg)
    rows = rows.map_batches(prepare_block, batch_size=None, fn_kwargs=prepare_args, **_map_args(cfg))
    _run_reporting_data_errors(rows.write_parquet, str(out), partition_cols=["status"])


def _write_rows_in_process(cfg: DataConfig, plan: CorpusPlan, prepare_args: dict, out: Path,
                           generation: GenerationPlan | None = None) -> None:
    """The same batch functions with the same arguments, applied here to each block in turn (one read unit per
    file, as on a one-CPU cluster); the rows are held in memory until written, so only for small corpora."""
    generate = None
    if generation is not None:
        from disc_ray.data.generation import GenerateBlock

        generate = GenerateBlock(plan=generation, cleaning=_generation_cleaning(cfg))
    tables = []
    for unit in _plan_read_units(plan, 1):
        for block in read_units(pa.Table.from_pylist([unit]), **_read_args(cfg, plan)):
            block = clean_block(block, **_clean_args(cfg, plan))
            tables.append(prepare_block(generate(block) if generate else block, **prepare_args))
    rows = pa.concat_tables(tables) if tables else OUTPUT_SCHEMA.empty_table()
    if rows.num_rows:
        pq.write_to_dataset(rows, str(out), partition_cols=["status"])


_DATA_ERROR_LINE = re.compile(r"disc_ray\.data(?:\.\w+)?\.DataError: (.+)")


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




def _summarize(out: Path, rejects_path: Path, report: DataReport, max_length: int) -> None:
    """Count everything from the written rows (small columns only, streamed) and write the rejects file."""
    histogram = np.zeros(max_length + 1, dtype=np.int64)
    cleaned = {"unicode_normalized": 0, "whitespace_collapsed": 0}
    generation = GenerationCounts()

    def count_generation(cached, truncated, empty=False) -> None:  # per document; None: not generated
        if cached is not None:
            generation.count(cached=cached, truncated=bool(truncated), empty=empty)

    for path in _parquet_files(out / KEPT_DIR):
        for batch in pq.ParquetFile(path).iter_batches(columns=["num_tokens", "example_index", "split_starts", "split_ends",
                                                                 "unicode_normalized", "whitespace_collapsed", "token_windows",
                                                                 "special_token_text", "generation_cached", "generation_truncated"]):
            tokens = batch.column("num_tokens").to_numpy()
            histogram += np.bincount(tokens, minlength=max_length + 1)[: max_length + 1]
            first = batch.column("example_index").to_numpy() == 0
            for is_first, cached, truncated in zip(first, batch.column("generation_cached").to_pylist(),
                                                   batch.column("generation_truncated").to_pylist()):
                if is_first:
                    count_generation(cached, truncated)
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
                                                                     "unicode_normalized", "whitespace_collapsed",
                                                                     "generation_cached", "generation_truncated"]):
                for record in batch.to_pylist():
                    dropped[record["reason"]] = dropped.get(record["reason"], 0) + 1
                    count_generation(record["generation_cached"], record["generation_truncated"],
                                     empty=record["reason"] == "generation_empty")
                    for rule in cleaned:
                        cleaned[rule] += bool(record[rule])
                    rejects.write(json.dumps({"path": record["source"], "row": record["row"], "line": record["line"], "reason": record["reason"],
                                              "detail": record["detail"], "preview": record["preview"]}, ensure_ascii=False) + "\n")
    report.dropped = dict(sorted(dropped.items()))
    report.generation = generation.as_dict() if generation.generated + generation.cached else {}
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


def _pipeline_fingerprint(data_cfg: DataConfig, split_cfg: SplitConfig, with_splits: bool, tokenizer_source: str,
                          generation: GenerationPlan | None = None) -> dict:
    """What decides the rows' content: a processed folder is reused only when this matches."""
    from disc_ray.segmentation import VERSION

    fingerprint = {"tokenizer": tokenizer_source, "segmentation": VERSION, "max_length": data_cfg.max_length, "with_splits": with_splits,
                   "split": dataclasses.asdict(split_cfg) if with_splits else None}
    if generation is not None:  # absent otherwise, so rows processed before the generation stage existed still match
        fingerprint["generation"] = generation.fingerprint()
    return fingerprint


def _processed_report(out: Path, expect: dict | None) -> DataReport:
    """The report stored with processed rows (its ``output_dir``: where the rows are now); ``expect``: a
    fingerprint to match (DataError otherwise)."""
    stored = json.loads((out / REPORT_FILE).read_text())
    if expect is not None and stored.get("fingerprint") != expect:
        differences = [k for k in expect if stored.get("fingerprint", {}).get(k) != expect[k]]
        raise DataError(f"data.path: processed rows in {out} were made with a different {', '.join(differences)}; "
                        "process the corpus again or match those settings")
    return dataclasses.replace(DataReport.from_dict(stored["report"]), output_dir=str(out))


def load_processed_dataset(path: str, expect: dict | None = None) -> tuple[ray.data.Dataset, DataReport]:
    """Rows written by a previous run (``disc-ray data inspect --data.output_dir DIR``); ``expect``: a fingerprint to match."""
    out = Path(path).expanduser()
    report = _processed_report(out, expect)
    _ensure_ray()
    return _read_kept_rows(out), report


def process_corpus(data_cfg, split_cfg: SplitConfig, with_splits: bool = True, *, tokenizer: str | None = None,
                   in_process: bool = False, generation: GenerationPlan | None = None) -> DataReport:
    """Run the whole pipeline once (read -> clean -> prepare -> write, then dedupe and counts) and return its
    report; the rows are in ``<report.output_dir>/status=kept``. ``in_process``: apply the pipeline's batch
    functions in this process instead of as Ray Data tasks (no Ray cluster; same rows and counts; the rows are
    held in memory, so for small corpora: ``disc-ray data inspect`` decides). A ``data.path`` of processed rows
    returns their stored report (raises DataError when they were made with other settings). ``tokenizer``,
    ``data_cfg``, ``generation``: as in :func:`build_training_dataset`."""
    data_cfg = _as_data_config(data_cfg, tokenizer)
    started = time.perf_counter()
    plan = plan_corpus(data_cfg)
    tokenizer_source = _resolve_tokenizer(data_cfg.tokenizer)
    if generation is not None and not generation.model_id:
        from disc_ray.data.generation import model_identity

        generation = dataclasses.replace(generation, model_id=model_identity(generation.model_source))
    fingerprint = _pipeline_fingerprint(data_cfg, split_cfg, with_splits, tokenizer_source, generation)
    if plan.format == "processed":
        return _processed_report(Path(plan.path), fingerprint)
    out = _prepare_output_dir(data_cfg)
    rejects_path = Path(data_cfg.rejects_path).expanduser().resolve() if data_cfg.rejects_path else out / REJECTS_FILE
    prepare_args = _prepare_args(data_cfg, plan, split_cfg, with_splits, tokenizer_source)
    if generation is not None:
        prepare_args["max_transfer_tokens"] = generation.max_transfer_tokens
    (_write_rows_in_process if in_process else _write_rows_on_ray)(data_cfg, plan, prepare_args, out, generation)
    if data_cfg.dedupe:
        drop_duplicates(out, list(plan.files), plan.format in _LINE_FORMATS, tokenizer_source)
    report = DataReport(path=str(data_cfg.path), corpus_format=plan.format, files=len(plan.files), output_dir=str(out), rejects_path=str(rejects_path))
    _summarize(out, rejects_path, report, data_cfg.max_length)
    report.seconds = round(time.perf_counter() - started, 2)
    (out / REPORT_FILE).write_text(json.dumps({"report": report.to_dict(), "fingerprint": fingerprint,
                                               "data": dataclasses.asdict(data_cfg)}, indent=2))
    return report


def build_training_dataset(data_cfg, split_cfg: SplitConfig, with_splits: bool = True, *, tokenizer: str | None = None,
                           generation: GenerationPlan | None = None) -> tuple[ray.data.Dataset, DataReport]:
    """Run the whole pipeline once on Ray (streaming, :func:`process_corpus`) and return (training rows, report).

    The rows (TRAIN_COLUMNS) are read back lazily from ``<output_dir>/status=kept``; give the dataset to
    ``TorchTrainer(datasets={"train": ...})`` and Ray Train's default DataConfig splits it equally
    (``streaming_split(n, equal=True)``), or use :func:`split_equal_shards`. ``tokenizer`` overrides
    ``data_cfg.tokenizer`` (the trainer passes the resolved model directory). ``data_cfg`` may be any
    object with DataConfig's fields (missing ones take DataConfig's defaults). ``generation`` (``rephrase`` /
    ``cd_base``) adds the generation stage between cleaning and tokenization (:mod:`disc_ray.data.generation`):
    a ``map_batches`` over ``generation.settings.concurrency`` actors, each holding one engine.
    """
    report = process_corpus(data_cfg, split_cfg, with_splits, tokenizer=tokenizer, generation=generation)
    _ensure_ray()
    return _read_kept_rows(Path(report.output_dir)), report


def _with_generation(cleaned: ray.data.Dataset, plan: GenerationPlan, cfg: DataConfig) -> ray.data.Dataset:
    """The generation stage: actors (one engine each) map cleaned blocks of ``batch_rows`` documents; the generated
    text is cleaned with the corpus's own settings."""
    import ray.data

    from disc_ray.data.generation import GenerateBlock

    settings = plan.settings
    return cleaned.map_batches(GenerateBlock, fn_constructor_kwargs={"plan": plan, "cleaning": _generation_cleaning(cfg)}, batch_size=cfg.batch_rows,
                               batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=settings.concurrency),
                               num_cpus=settings.num_cpus,
                               **({"num_gpus": settings.num_gpus} if settings.num_gpus else {}))


def _generation_cleaning(cfg: DataConfig) -> dict:
    return {"normalize_unicode": cfg.normalize_unicode, "collapse_whitespace": cfg.collapse_whitespace}


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
