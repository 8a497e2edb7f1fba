"""Per-document training cost of the baselines relative to ``ft`` (plain torch, no Ray), measured in one run.

One optimizer step per document (the paper's protocol for the token-level methods): pack, forward, backward,
AdamW step, for ``ft``, ``talr`` (one extra no-grad chunked vocabulary pass), ``lora`` (adapters only: the base
gets no weight gradient and the optimizer holds only the adapters) and ``disc``, each on its own copy of the same
model and the same BioASQ passages. The methods take turns document by document in every round (so a change of
the machine's load hits them alike) and each method's time is the median over rounds of its mean per document.
Prints ratios to ``ft``, never asserts times.

``--generation``: instead, the generation stage's cost per document for ``rephrase`` (the rewrite) and ``cd_base``
(the continuation): the ``hf`` engine on this machine's CPU, sampling as the baselines do (T=1, top_p 0.95), a cold
cache, then the same documents again (all from the cache).

    python bench/bench_baselines.py [--documents 12] [--rounds 3] [--threads 2] [--json FILE]
    python bench/bench_baselines.py --generation [--documents 4] [--max-new-tokens 256]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import load_passages  # noqa: E402

METHODS = ("ft", "talr", "lora", "disc")


def build_runs(model, tokenizer, passages):
    """One (model, teacher, optimizer, objective config, examples) per method, from copies of ``model``."""
    from disc_ray.config import TrainConfig
    from disc_ray.lora import parameter_counts, wrap_student_for_objective
    from disc_ray.loop import build_optimizer, build_teacher
    from disc_ray.objectives import ObjectiveConfig
    from disc_ray.splits import SplitConfig, prepare_document

    runs = {}
    for method in METHODS:
        cfg = ObjectiveConfig(name=method)
        student = copy.deepcopy(model)
        teacher = build_teacher(student) if cfg.needs_teacher else None
        student = wrap_student_for_objective(student, cfg)
        student.train()
        examples = [prepare_document(t, tokenizer, SplitConfig(num_splits=5), with_splits=method == "disc")[0] for t in passages]
        optimizer = build_optimizer(student, TrainConfig(lr=1e-7))
        runs[method] = dict(student=student, teacher=teacher, cfg=cfg, examples=examples, optimizer=optimizer,
                            parameters=parameter_counts(student))
    return runs


def step_seconds(run, example) -> float:
    """Wall time of one optimizer step on one document: pack, forward, backward, AdamW step."""
    from disc_ray.objectives import compute_loss, pack_batch

    started = time.perf_counter()
    batch = pack_batch([example], run["cfg"])
    compute_loss(run["student"], run["teacher"], batch, run["cfg"]).loss.backward()
    run["optimizer"].step()
    run["optimizer"].zero_grad(set_to_none=True)
    return time.perf_counter() - started


def generation_cost(model_name: str, passages: list[str], max_new_tokens: int) -> dict:
    """Seconds and generated tokens per document for each generation task, cold cache then warm."""
    import tempfile

    from disc_ray.data.generation import GenerationCounts, GenerationSettings, generate_for_documents, load_generation_backend
    from disc_ray.models import resolve_model_source

    source = resolve_model_source(model_name)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="disc-ray-bench-gen-") as cache:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, cache_dir=cache)
        backend = load_generation_backend(source, settings)
        for task in ("rephrase", "continue"):
            for phase in ("cold", "warm"):
                counts = GenerationCounts()
                generate_for_documents(passages, backend, task, settings, "bench", progress=False, counts=counts)
                figures[f"{task}_{phase}"] = dict(counts.as_dict(), seconds_per_document=counts.seconds / len(passages))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    parser.add_argument("--generation", action="store_true", help="measure the generation stage (rephrase / cd_base) instead")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    from disc_ray.models import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    if args.generation:
        figures = generation_cost(args.model, load_passages(args.documents), args.max_new_tokens)
        print(f"model={args.model} documents={args.documents} max_new_tokens={args.max_new_tokens} threads={torch.get_num_threads()}; "
              "hf engine, T=1, top_p 0.95")
        for name, f in figures.items():
            print(f"{name:<16} {f['seconds_per_document']:7.2f} s/document  generated {f['generated']} cached {f['cached']} "
                  f"tokens {f['generated_tokens']} truncated {f['truncated']} empty {f['empty']}")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
        return
    model, tokenizer = load_model_and_tokenizer(args.model)
    passages = load_passages(args.documents)
    runs = build_runs(model, tokenizer, passages)
    for method, run in runs.items():  # warm-up
        step_seconds(run, run["examples"][0])
    per_round = {method: [] for method in METHODS}
    for _ in range(args.rounds):
        totals = dict.fromkeys(METHODS, 0.0)
        for index in range(len(passages)):
            for method in METHODS:
                totals[method] += step_seconds(runs[method], runs[method]["examples"][index])
        for method in METHODS:
            per_round[method].append(totals[method] / len(passages))
    figures = {"model": args.model, "documents": len(passages), "rounds": args.rounds, "threads": torch.get_num_threads(),
               "tokens_per_document": sum(len(e.input_ids) for e in runs["ft"]["examples"]) / len(passages),
               "seconds_per_document": {m: statistics.median(v) for m, v in per_round.items()},
               "rounds_seconds_per_document": per_round,
               "parameters": {m: runs[m]["parameters"] for m in METHODS}}
    ft = figures["seconds_per_document"]["ft"]
    figures["over_ft"] = {m: s / ft for m, s in figures["seconds_per_document"].items()}
    print(f"model={args.model} documents={len(passages)} tokens/doc={figures['tokens_per_document']:.0f} "
          f"rounds={args.rounds} threads={torch.get_num_threads()}; one optimizer step (fwd+bwd+AdamW) per document")
    for method in METHODS:
        counts = figures["parameters"][method]
        print(f"{method:<5} {1000 * figures['seconds_per_document'][method]:8.1f} ms/document  RATIO /ft = "
              f"{figures['over_ft'][method]:.2f}  (rounds: {', '.join(f'{1000 * v:.0f}' for v in per_round[method])} ms; "
              f"trainable {counts['trainable_parameters']:,} of {counts['total_parameters']:,})")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
