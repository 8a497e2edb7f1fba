"""``disc-ray data inspect``: process a corpus, print counts, the first rejects and sample splits.

Small corpora (files of at most :data:`IN_PROCESS_MAX_BYTES` in all) are processed in this process, without
starting Ray: the pipeline's own batch functions applied block by block (:func:`disc_ray.data.process_corpus`),
so the counts, rejects and rows are those a Ray run gives, without a cluster's start-up (tens of seconds to
minutes on a busy machine). Larger corpora, ``--ray-address`` / ``$RAY_ADDRESS`` and ``--ray`` use Ray Data;
``--no-ray`` forces the in-process path (the rows are held in memory until written).
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from disc_ray.data.config import KEPT_DIR, DataConfig, DataError, DataReport
from disc_ray.data.dedupe import _parquet_files
from disc_ray.data.pipeline import _resolve_tokenizer, process_corpus
from disc_ray.data.sources import CorpusPlan, plan_corpus
from disc_ray.records import read_jsonl
from disc_ray.splits import SplitConfig

IN_PROCESS_MAX_BYTES = 4 * 2**20
"""Corpora up to this many bytes on disk (all files together; compressed size for ``.gz``) are inspected in
process: on 2 CPU cores that is faster than starting Ray's workers up to roughly this size."""


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
                   show_paths: bool = True, in_process: bool = False) -> tuple[DataReport, str]:
    """Process the corpus (on Ray, or ``in_process``); return the report and a text with the report, the first
    rejects and ``samples`` sample splits. Raises DataError as :func:`disc_ray.data.process_corpus` does."""
    from disc_ray.models import load_tokenizer

    report = process_corpus(data_cfg, split_cfg, with_splits, in_process=in_process)
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
        for _, record in read_jsonl(path, "rejects file", DataError, allow_empty=True, limit=count):
            where = f"{record['path']}:{record['line']}" if record["line"] else f"{record['path']} row {record['row']}"
            lines.append(f"  {where}: {record['reason']}: {record['detail']}")
    return lines


def runs_in_process(plan: CorpusPlan, use_ray: bool | None, ray_address: str | None) -> bool:
    """``use_ray`` (``--ray`` True / ``--no-ray`` False) decides when given; else a cluster address means Ray,
    processed rows need no processing (in process), and a corpus of at most :data:`IN_PROCESS_MAX_BYTES` runs in process."""
    if use_ray is not None:
        return not use_ray
    if ray_address:
        return False
    if plan.format == "processed":
        return True
    return sum(os.path.getsize(path) for path in plan.files) <= IN_PROCESS_MAX_BYTES


@dataclasses.dataclass(frozen=True)
class InspectConfig:
    """What ``disc-ray data inspect`` takes: the corpus pipeline's and the split sampler's keys, as the main job
    names them (``--data.text_field meta.context``, ``--split.strategy token_random``)."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)


def add_cli(subparsers) -> None:
    from disc_ray.config import format_config_help

    parser = subparsers.add_parser("data", help="corpus pipeline: inspect a corpus, write processed rows")
    commands = parser.add_subparsers(dest="data_command", required=True)
    inspect = commands.add_parser(
        "inspect", help="read, clean, tokenize and split a corpus; print counts and samples",
        description="Read, clean, tokenize and split a corpus; print counts, the first rejects and sample splits. "
                    "Config keys as in the main job: --data.text_field meta.context --split.strategy token_random; "
                    "--data.output_dir DIR keeps the processed rows (reusable as data.path).",
        epilog=format_config_help(InspectConfig), formatter_class=argparse.RawDescriptionHelpFormatter)
    inspect.add_argument("corpus", help="JSONL(.gz) / .json / Parquet / text file or folder, glob, save_to_disk folder, or hub id "
                                        "(sets data.path)")
    inspect.add_argument("--config", help="YAML file with data: / split: sections (a main-job config works too: "
                                          "its other sections are ignored)")
    inspect.add_argument("--samples", type=int, default=3, help="sample examples to print")
    inspect.add_argument("--no-splits", action="store_true", help="rows for ft / ft_kl (no split sampling)")
    where = inspect.add_mutually_exclusive_group()
    where.add_argument("--ray", dest="use_ray", action="store_const", const=True, default=None,
                       help="process on Ray Data even a small corpus (default: Ray above "
                            f"{IN_PROCESS_MAX_BYTES // 2**20} MiB of files or with a cluster address, else in process)")
    where.add_argument("--no-ray", dest="use_ray", action="store_const", const=False,
                       help="process in this process, without Ray, whatever the size (rows held in memory)")
    inspect.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray instance (default: all)")
    inspect.add_argument("--ray-address", default=None, help="cluster to run on (default: $RAY_ADDRESS or a local instance)")
    inspect.set_defaults(run=run_inspect, accepts_overrides=True)


def load_inspect_config(corpus: str, config_path: str | None, overrides: list[str]) -> InspectConfig:
    """``InspectConfig`` through the one config loader; only the ``data`` / ``split`` sections of a YAML file are read."""
    from disc_ray.config import load_config

    return load_config(InspectConfig, config_path, overrides, sections=("data", "split"), preset={"data.path": corpus})


def run_inspect(args, rest) -> int:
    import sys

    from disc_ray.config import ConfigError

    try:
        cfg = load_inspect_config(args.corpus, args.config, rest)
    except ConfigError as err:
        print(f"disc-ray data inspect: error: {err}", file=sys.stderr)
        return 2
    data_cfg, split_cfg = cfg.data, cfg.split
    keep = data_cfg.output_dir is not None
    try:
        plan = plan_corpus(data_cfg)  # a missing path or a bad schema fails here, before Ray starts
    except DataError as err:
        print(f"disc-ray data inspect: error: {err.message}", file=sys.stderr)
        return 2
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    in_process = runs_in_process(plan, args.use_ray, address)
    if not in_process:
        _start_ray(address, args.num_cpus)
    try:
        report, text = inspect_corpus(data_cfg, split_cfg, with_splits=not args.no_splits, samples=args.samples, show_paths=keep,
                                      in_process=in_process)
    except DataError as err:
        print(f"disc-ray data inspect: error: {err.message}", file=sys.stderr)
        return 2
    print(text)
    if keep:
        print(f"processed rows: {Path(report.output_dir) / KEPT_DIR} (reuse with data.path={report.output_dir})")
    elif plan.format != "processed":  # never the user's processed rows, only the temporary folder made here
        shutil.rmtree(report.output_dir, ignore_errors=True)  # the rejects file stays if data.rejects_path put it elsewhere
    return 0


def _start_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR",
                 **({} if address else {"num_cpus": num_cpus}))
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
