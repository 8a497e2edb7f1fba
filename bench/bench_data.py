"""Benchmark of the Ray Data corpus pipeline against the raw tokenizer, on the same documents.

Prints throughputs and ratios, never asserts times:
  1. raw tokenizer: ``tokenizer(batch)`` in this process (no offsets, no segmentation, no splits), per
     CPU-second it used;
  2. in-process preparation: ``disc_ray.data.prepare_documents`` (tokenize with offsets + segment +
     split sampling, what a pipeline task does per block), per CPU-second;
  3. the full pipeline: ``build_training_dataset`` on Ray (read JSONL, clean, dedupe in two passes,
     prepare, write Parquet, count), per Ray CPU and per CPU-second its worker processes used.

The corpus: BioASQ passages (PubMed) with their sentences reshuffled into new, unique documents of
the same length distribution (seeded), written to several JSONL files.

    python bench/bench_data.py [--documents 20000] [--files 8] [--num-cpus 2] [--tokenizer smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIOASQ = REPO / ".." / "shared" / "data" / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"


def build_corpus(folder: Path, documents: int, files: int, seed: int = 0) -> list[str]:
    """Unique documents made of BioASQ sentences (reshuffled), written to ``files`` JSONL files."""
    from disc_ray.splits import segment_sentences

    passages = [json.loads(line)["meta"]["context"] for line in BIOASQ.read_text().splitlines() if line.strip()]
    sentences = [p[s:e] for p in passages for s, e in segment_sentences(p)]
    lengths = [len(segment_sentences(p)) for p in passages]
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(sentences) for _ in range(rng.choice(lengths))) for _ in range(documents)]
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(files):
        with (folder / f"part-{part:03d}.jsonl").open("w") as out:
            out.writelines(json.dumps({"text": text}) + "\n" for text in texts[part::files])
    return texts


def cpu_seconds_of_this_ray_session() -> tuple[float, float]:
    """(Ray worker processes, everything: this driver + the processes it started: GCS, raylet, workers), user+system
    CPU seconds so far. Other sessions' Ray processes on a shared machine are not counted."""
    import psutil

    me = psutil.Process()
    workers, everything = 0.0, sum(me.cpu_times()[:2])
    for process in me.children(recursive=True):
        try:
            seconds = sum(process.cpu_times()[:2])
            everything += seconds
            if " ".join(process.cmdline()).startswith("ray::"):
                workers += seconds
        except psutil.NoSuchProcess:
            pass
    return workers, everything


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_raw_tokenizer(tokenizer, texts: list[str], batch_size: int) -> dict:
    def run():
        return sum(len(ids) for start in range(0, len(texts), batch_size) for ids in tokenizer(texts[start:start + batch_size])["input_ids"])

    run()  # warm-up
    tokens, wall, cpu = timed(run)
    return {"documents": len(texts), "tokens": tokens, "wall_s": wall, "cpu_s": cpu}


def bench_prepare(tokenizer, texts: list[str], batch_size: int) -> dict:
    from disc_ray.data import prepare_documents
    from disc_ray.splits import SplitConfig

    cfg = SplitConfig()

    def run():
        tokens = 0
        for start in range(0, len(texts), batch_size):
            for result in prepare_documents(texts[start:start + batch_size], tokenizer, cfg):
                tokens += sum(len(e.input_ids) for e in result) if isinstance(result, list) else 0
        return tokens

    tokens, wall, cpu = timed(run)
    return {"documents": len(texts), "tokens": tokens, "wall_s": wall, "cpu_s": cpu}


def bench_pipeline(corpus: Path, warmup: Path, args) -> dict:
    from disc_ray.data import DataConfig, build_training_dataset
    from disc_ray.splits import SplitConfig

    def build(path: Path, out: str):
        cfg = DataConfig(path=str(path), tokenizer=args.tokenizer, output_dir=out, batch_rows=args.batch_rows, dedupe=not args.no_dedupe)
        return build_training_dataset(cfg, SplitConfig())[1]

    with tempfile.TemporaryDirectory() as scratch:
        build(warmup, f"{scratch}/warmup")  # starts the worker processes and loads the tokenizer in each
        workers_before, all_before = cpu_seconds_of_this_ray_session()
        report, wall, _ = timed(lambda: build(corpus, f"{scratch}/rows"))
        workers_after, all_after = cpu_seconds_of_this_ray_session()
    return {"documents": report.records_read, "kept": report.documents_kept, "tokens": report.tokens, "wall_s": wall,
            "workers_cpu_s": workers_after - workers_before, "session_cpu_s": all_after - all_before, "ray_cpus": args.num_cpus,
            "report": report.format(paths=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--batch-rows", type=int, default=512)
    parser.add_argument("--tokenizer", default="smollm2-135m-instruct")
    parser.add_argument("--no-dedupe", action="store_true", help="time the pipeline without exact-duplicate removal")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line too")
    args = parser.parse_args()

    import ray

    from disc_ray.models import load_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        texts = build_corpus(Path(scratch) / "corpus", args.documents, args.files)
        build_corpus(Path(scratch) / "warmup", 200, 2, seed=1)
        tokenizer = load_tokenizer(args.tokenizer)
        raw = bench_raw_tokenizer(tokenizer, texts, args.batch_rows)
        prepared = bench_prepare(tokenizer, texts, args.batch_rows)
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        pipeline = bench_pipeline(Path(scratch) / "corpus", Path(scratch) / "warmup", args)
        ray.shutdown()

    raw_per_core = raw["tokens"] / raw["cpu_s"]
    prepared_per_core = prepared["tokens"] / prepared["cpu_s"]
    pipeline_per_ray_cpu = pipeline["tokens"] / pipeline["wall_s"] / args.num_cpus
    pipeline_per_worker_cpu_s = pipeline["tokens"] / pipeline["workers_cpu_s"]
    pipeline_per_session_cpu_s = pipeline["tokens"] / pipeline["session_cpu_s"]
    load = os.getloadavg()
    print(f"corpus: {args.documents:,} documents in {args.files} JSONL files, {raw['tokens']:,} tokens (raw tokenizer); "
          f"load average {load[0]:.1f} on {os.cpu_count()} cores")
    print(f"raw tokenizer(batch):        {raw['documents'] / raw['wall_s']:9,.0f} docs/s {raw['tokens'] / raw['wall_s']:11,.0f} tokens/s "
          f"({raw['cpu_s'] / raw['wall_s']:.2f} cores busy) -> {raw_per_core:,.0f} tokens/s per core")
    print(f"prepare_documents (1 proc):  {prepared['documents'] / prepared['wall_s']:9,.0f} docs/s {prepared['tokens'] / prepared['wall_s']:11,.0f} tokens/s "
          f"-> {prepared_per_core:,.0f} tokens/s per core = {prepared_per_core / raw_per_core:.2f} x raw")
    print(f"pipeline on Ray ({args.num_cpus} CPUs):   {pipeline['documents'] / pipeline['wall_s']:9,.0f} docs/s {pipeline['tokens'] / pipeline['wall_s']:11,.0f} tokens/s "
          f"in {pipeline['wall_s']:.1f} s -> {pipeline_per_ray_cpu:,.0f} tokens/s per Ray CPU = {pipeline_per_ray_cpu / raw_per_core:.2f} x raw per core")
    print(f"  per CPU-second of its Ray workers ({pipeline['workers_cpu_s']:.1f} s): {pipeline_per_worker_cpu_s:,.0f} tokens/s "
          f"= {pipeline_per_worker_cpu_s / raw_per_core:.2f} x raw per core")
    print(f"  per CPU-second of driver + GCS + raylet + workers ({pipeline['session_cpu_s']:.1f} s): {pipeline_per_session_cpu_s:,.0f} tokens/s "
          f"= {pipeline_per_session_cpu_s / raw_per_core:.2f} x raw per core")
    print(pipeline["report"])
    if args.json:
        print(json.dumps({"raw": raw, "prepare": prepared, "pipeline": {k: v for k, v in pipeline.items() if k != "report"},
                          "ratio_per_ray_cpu": pipeline_per_ray_cpu / raw_per_core, "ratio_prepare": prepared_per_core / raw_per_core}))


if __name__ == "__main__":
    main()
