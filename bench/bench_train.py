"""Ray Train throughput on the embedded default (SmolLM2-135M-Instruct): disc vs ft, 1 vs 2 CPU workers.

Each configuration trains ``--steps`` optimizer steps (batch 1 document per worker) on BioASQ passages
with real FSDP2 workers; throughput is taken from the steps after the first (warm-up). Prints tokens/s
and documents/s, and the ratios disc/ft and 2 workers/1 worker, all measured in this one run.
``tokens`` counts every token a forward pass reads (student + teacher).

    python bench/bench_train.py [--steps 6] [--documents 24]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import ray

from disc_ray.records import load_jsonl

REPO = Path(__file__).resolve().parents[1]
BIOASQ = REPO / ".." / "shared" / "data" / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"


def run_one(objective: str, workers: int, steps: int, rows: list[dict], model_dir: str, storage: str) -> dict:
    from disc_ray.config import AdaptConfig, load_config
    from disc_ray.train import build_trainer

    cfg = load_config(AdaptConfig, None, [
        f"--objective.name={objective}", f"--workers.num_workers={workers}", f"--workers.cpus_per_worker={2 // workers}",
        f"--run.name={objective}-{workers}w", f"--run.storage_path={storage}", "--run.checkpoint_every_n_steps=1000",
    ])
    result = build_trainer(cfg, ray.data.from_items(rows), total_steps=steps, model_source=model_dir).fit()
    if result.error:
        raise result.error
    metrics = load_jsonl(Path(storage) / cfg.run.name / "metrics.jsonl")[1:]
    seconds = sum(m["step_time_s"] for m in metrics)
    return {"tokens_per_s": sum(m["tokens"] for m in metrics) / seconds,
            "documents_per_s": sum(m["documents"] for m in metrics) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--documents", type=int, default=24)
    args = parser.parse_args()

    from disc_ray.models import embedded_default_dir, load_tokenizer
    from disc_ray.splits import SplitConfig, example_to_row, prepare_document

    model_dir = str(embedded_default_dir())
    tokenizer = load_tokenizer(model_dir)
    texts = [row["meta"]["context"] for row in load_jsonl(BIOASQ)[: args.documents]]
    rows = {
        "disc": [example_to_row(e) for t in texts for e in prepare_document(t, tokenizer, SplitConfig(), 1024)],
        "ft": [example_to_row(e) for t in texts for e in prepare_document(t, tokenizer, SplitConfig(), 1024, with_splits=False)],
    }
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    results = {}
    with tempfile.TemporaryDirectory() as storage:
        for objective in ("disc", "ft"):
            for workers in (1, 2):
                results[objective, workers] = run_one(objective, workers, args.steps, rows[objective], model_dir, storage)
                r = results[objective, workers]
                print(f"{objective:4s} {workers} worker(s): {r['tokens_per_s']:7.0f} tokens/s  {r['documents_per_s']:.3f} documents/s")
    ray.shutdown()
    for workers in (1, 2):
        d, f = results["disc", workers], results["ft", workers]
        print(f"RATIO disc/ft documents/s with {workers} worker(s) = {d['documents_per_s'] / f['documents_per_s']:.2f}")
    for objective in ("disc", "ft"):
        one, two = results[objective, 1], results[objective, 2]
        print(f"RATIO {objective} documents/s 2 workers / 1 worker (same 2 cores) = {two['documents_per_s'] / one['documents_per_s']:.2f}")


if __name__ == "__main__":
    main()
