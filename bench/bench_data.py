"""Benchmark of the Ray Data corpus pipeline against the raw tokenizer, on the same documents.

Prints throughputs and ratios, never asserts times:
  1. raw tokenizer: ``tokenizer(batch)`` in this process (no offsets, no segmentation, no splits), per
     CPU-second it used;
  2. in-process preparation: ``disc_ray.data.prepare_documents`` (tokenize + token offsets + segment +
     map tokens to sentences + split sampling, what a pipeline task does per block), per CPU-second;
  3. the full pipeline: ``build_training_dataset`` on Ray (read JSONL, clean, prepare, write Parquet, then
     drop duplicates and count), per Ray CPU (wall clock) and per CPU-second its worker processes used.

The corpus: BioASQ passages (PubMed) with their sentences reshuffled into new, unique documents of
the same length distribution (seeded), written to several JSONL files.

    python bench/bench_data.py [--documents 20000] [--files 8] [--num-cpus 2] [--rounds 3] [--no-dedupe]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIOASQ = REPO / ".." / "shared" / "data" / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"


def build_corpus(folder: Path, documents: int, files: int, seed: int = 0) -> list[str]:
    """Unique documents made of BioASQ sentences (reshuffled), written to ``files`` JSONL files."""
    from disc_ray.records import load_jsonl
    from disc_ray.splits import segment_sentences

    passages = [row["meta"]["context"] for row in load_jsonl(BIOASQ)]
    sentences = [p[s:e] for p in passages for s, e in segment_sentences(p)]
    lengths = [len(segment_sentences(p)) for p in passages]
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(sentences) for _ in range(rng.choice(lengths))) for _ in range(documents)]
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(files):
        with (folder / f"part-{part:03d}.jsonl").open("w") as out:
            out.writelines(json.dumps({"text": text}) + "\n" for text in texts[part::files])
    return texts


def ray_session_processes() -> dict[int, tuple[str, float]]:
    """pid -> (command line, user+system CPU seconds so far) of this driver and every process it started
    (GCS, raylet, Ray workers and actors). Other sessions' Ray processes on a shared machine are not counted."""
    import psutil

    me = psutil.Process()
    processes = {me.pid: ("driver", sum(me.cpu_times()[:2]))}
    for process in me.children(recursive=True):
        try:
            processes[process.pid] = (" ".join(process.cmdline())[:60], sum(process.cpu_times()[:2]))
        except psutil.NoSuchProcess:
            pass
    return processes


def cpu_between(before: dict, after: dict) -> dict:
    """CPU seconds used between two ``ray_session_processes`` snapshots: by Ray workers (``ray::`` processes:
    task workers and actors), by everything, and the worker processes started in between (each pays its imports
    and tokenizer load)."""
    used = {pid: cpu - before.get(pid, ("", 0.0))[1] for pid, (_, cpu) in after.items()}
    workers = [pid for pid, (name, _) in after.items() if name.startswith("ray::")]
    return {"workers_cpu_s": sum(used[pid] for pid in workers), "session_cpu_s": sum(used.values()),
            "new_workers": sum(pid not in before for pid in workers),
            "top": sorted(((round(used[pid], 2), after[pid][0]) for pid in used), reverse=True)[:4]}


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
        before = ray_session_processes()
        report, wall, _ = timed(lambda: build(corpus, f"{scratch}/rows"))
        cpu = cpu_between(before, ray_session_processes())
    return {"documents": report.records_read, "kept": report.documents_kept, "tokens": report.tokens, "wall_s": wall,
            "ray_cpus": args.num_cpus, **cpu, "report": report.format(paths=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--batch-rows", type=int, default=512)
    parser.add_argument("--tokenizer", default="smollm2-135m-instruct")
    parser.add_argument("--no-dedupe", action="store_true", help="time the pipeline without exact-duplicate removal")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure raw / prepare / pipeline this many times, interleaved, and report the medians (a shared VM drifts)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line too")
    args = parser.parse_args()

    import ray

    from disc_ray.models import load_tokenizer

    rounds = []
    with tempfile.TemporaryDirectory() as scratch:
        texts = build_corpus(Path(scratch) / "corpus", args.documents, args.files)
        build_corpus(Path(scratch) / "warmup", 200, 2, seed=1)
        tokenizer = load_tokenizer(args.tokenizer)
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        for number in range(args.rounds):
            raw = bench_raw_tokenizer(tokenizer, texts, args.batch_rows)
            prepared = bench_prepare(tokenizer, texts, args.batch_rows)
            pipeline = bench_pipeline(Path(scratch) / "corpus", Path(scratch) / "warmup", args)
            rounds.append(report_round(number, raw, prepared, pipeline, args))
        ray.shutdown()

    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0] if key.startswith("ratio")}
    print(f"corpus: {args.documents:,} documents in {args.files} JSONL files, {rounds[0]['tokens']:,} tokens; {args.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"MEDIAN x raw tokenizer per core: prepare_documents {median['ratio_prepare']:.2f}, pipeline per Ray CPU "
          f"{median['ratio_per_ray_cpu']:.2f}, per worker CPU-second {median['ratio_per_worker_cpu_s']:.2f}, per session CPU-second "
          f"{median['ratio_per_session_cpu_s']:.2f}")
    print(pipeline["report"])
    if args.json:
        print(json.dumps({"rounds": rounds, "median": median}))


def report_round(number: int, raw: dict, prepared: dict, pipeline: dict, args) -> dict:
    """Print one round's throughputs; return its ratios to the raw tokenizer's tokens/s per core."""
    raw_per_core = raw["tokens"] / raw["cpu_s"]
    prepared_per_core = prepared["tokens"] / prepared["cpu_s"]
    pipeline_per_ray_cpu = pipeline["tokens"] / pipeline["wall_s"] / args.num_cpus
    pipeline_per_worker_cpu_s = pipeline["tokens"] / pipeline["workers_cpu_s"]
    pipeline_per_session_cpu_s = pipeline["tokens"] / pipeline["session_cpu_s"]
    print(f"round {number + 1}")
    print(f"  raw tokenizer(batch):        {raw['documents'] / raw['wall_s']:9,.0f} docs/s {raw['tokens'] / raw['wall_s']:11,.0f} tokens/s "
          f"({raw['cpu_s'] / raw['wall_s']:.2f} cores busy) -> {raw_per_core:,.0f} tokens/s per core")
    print(f"  prepare_documents (1 proc):  {prepared['documents'] / prepared['wall_s']:9,.0f} docs/s {prepared['tokens'] / prepared['wall_s']:11,.0f} tokens/s "
          f"-> {prepared_per_core:,.0f} tokens/s per core = {prepared_per_core / raw_per_core:.2f} x raw")
    print(f"  pipeline on Ray ({args.num_cpus} CPUs):   {pipeline['documents'] / pipeline['wall_s']:9,.0f} docs/s {pipeline['tokens'] / pipeline['wall_s']:11,.0f} tokens/s "
          f"in {pipeline['wall_s']:.1f} s -> {pipeline_per_ray_cpu:,.0f} tokens/s per Ray CPU = {pipeline_per_ray_cpu / raw_per_core:.2f} x raw per core")
    print(f"    per CPU-second of its Ray workers ({pipeline['workers_cpu_s']:.1f} s): {pipeline_per_worker_cpu_s:,.0f} tokens/s "
          f"= {pipeline_per_worker_cpu_s / raw_per_core:.2f} x raw per core")
    print(f"    per CPU-second of driver + GCS + raylet + workers ({pipeline['session_cpu_s']:.1f} s): {pipeline_per_session_cpu_s:,.0f} tokens/s "
          f"= {pipeline_per_session_cpu_s / raw_per_core:.2f} x raw per core")
    print(f"    worker processes started during the run: {pipeline['new_workers']} (each imports torch + transformers and loads "
          f"the tokenizer, ~3 CPU-s); most CPU: {pipeline['top']}")
    return {"tokens": raw["tokens"], "raw": raw, "prepare": prepared, "pipeline": {k: v for k, v in pipeline.items() if k != "report"},
            "ratio_prepare": prepared_per_core / raw_per_core, "ratio_per_ray_cpu": pipeline_per_ray_cpu / raw_per_core,
            "ratio_per_worker_cpu_s": pipeline_per_worker_cpu_s / raw_per_core, "ratio_per_session_cpu_s": pipeline_per_session_cpu_s / raw_per_core}


if __name__ == "__main__":
    main()
